"""Content-free metrics for /metrics (docs/provisioning.md, "Health and metrics"), with
prometheus_client.

Counts, durations and gauges only. No label ever carries a device id, key, fingerprint, token,
path or payload: the labels are `fleet` (the fleet of the device or claim row an event concerns,
or of an operator's claim request; never one an unauthenticated request names), `route` (the
app's route templates) and small fixed vocabularies (LABEL_VALUES), so the number of series is
bounded by the number of fleets; past MAX_FLEET_LABELS fleets the rest share the value "_other".

Each application has its own CollectorRegistry (several apps live in one test process); the
database gauges are read at scrape time (core/gauges.py).
"""
from __future__ import annotations

import itertools
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.registry import Collector

__all__ = ["BROKER_COMMANDS", "COUNTERS", "HISTOGRAMS", "LABEL_VALUES", "MAX_FLEET_LABELS", "OTHER_FLEET", "Metrics"]

# The _created series (one per labelled counter) double the exposition for nothing we alert on.
disable_created_metrics()

# Distinct `fleet` label values one process keeps apart: a fleet is made by an operator, so a
# deployment has tens; 200 bounds the series even if a script makes thousands.
MAX_FLEET_LABELS = 200
OTHER_FLEET = "_other"

# The dynamic-security commands and publishes the broker admin times (e2ee_host.broker.DynSec);
# anything else is counted as "other".
BROKER_COMMANDS = frozenset({
    "addClientRole", "addRoleACL", "createClient", "createRole", "deleteClient", "deleteRole",
    "disableClient", "enableClient", "getClient", "removeClientRole", "setClientPassword",
    "publish_answer", "publish_inbox", "publish_revocation_list",
})

# Every label other than `fleet`, with the only values it takes.
LABEL_VALUES: dict[str, frozenset[str]] = {
    "outcome": frozenset({"ok", "error"}),
    "result": frozenset({"ok", "wrong_passphrase", "locked"}),
    "reason": frozenset({"backlog_full", "not_an_envelope", "duplicate"}),
    "kind": frozenset({"device", "claim"}),
    "status": frozenset({"1xx", "2xx", "3xx", "4xx", "5xx"}),
    # what clients report (POST /reports, models.ClientReport): counts of their own events
    "event": frozenset({"delivered", "undelivered", "received", "decrypt_failures", "encrypt_failures"}),
    "method": frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other"}),
    "command": BROKER_COMMANDS | {"other"},
}

# name -> (help text, label names); every counter the service increments is listed here.
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "e2ee_bundle_fetches_total": ("Prekey bundles handed out", ("fleet",)),
    "e2ee_bundle_fetches_without_one_time_prekey_total": (
        "Bundles handed out with the signed prekey only (the device's one-time prekeys ran out)", ("fleet",)),
    "e2ee_bundle_fetches_rate_limited_total": ("Bundle fetches refused by the rate limit", ()),
    "e2ee_prekey_uploads_total": ("Accepted prekey uploads", ("fleet",)),
    "e2ee_prekey_uploads_rejected_total": ("Prekey uploads refused (bad signature, malformed, too many)", ()),
    "e2ee_enrollment_challenges_total": ("Enrollment challenges issued", ()),
    "e2ee_enrollments_total": ("Successful enrollments (certificates issued)", ("fleet",)),
    "e2ee_enrollments_rejected_total": ("Enrollments refused (claim, proof, evidence, revoked, conflict)", ()),
    "e2ee_enrollments_rate_limited_total": ("Enrollment requests refused by the rate limit", ()),
    "e2ee_registration_lock_failures_total": ("Wrong registration-lock PINs", ("fleet",)),
    "e2ee_registration_lockouts_total": (
        "Registration locks that reached their attempt limit (only an operator clears them)", ("fleet",)),
    "e2ee_revocations_total": ("Devices revoked (by an operator or an owner)", ("fleet",)),
    "e2ee_revocation_lists_signed_total": ("Revocation lists signed", ()),
    "e2ee_revocation_list_publish_failures_total": (
        "Revocation lists the broker did not take after a re-registration", ()),
    "e2ee_enrollment_claims_created_total": ("Enrollment claim tokens created", ("fleet",)),
    "e2ee_enrollment_claims_revoked_total": ("Enrollment claims revoked by an operator", ("fleet",)),
    "e2ee_auth_failures_total": ("Requests refused for missing or wrong credentials", ()),
    "e2ee_links_total": ("Devices linked to their owner (approvals accepted)", ("fleet",)),
    "e2ee_backup_uploads_total": ("Encrypted backup blobs stored", ("fleet",)),
    "e2ee_backup_fetches_total": ("Backup fetches by result (ok, wrong_passphrase, locked)", ("fleet", "result")),
    "e2ee_backup_lockouts_total": ("Backups locked by their last allowed wrong passphrase", ("fleet",)),
    "e2ee_relay_envelopes_stored_total": ("Envelopes the relay stored for its HTTP clients", ("fleet",)),
    "e2ee_relay_envelopes_dropped_total": (
        "Inbox messages the relay did not store (backlog_full, not_an_envelope, duplicate)", ("reason",)),
    "e2ee_relay_envelopes_sent_total": ("Envelopes relay clients published through POST /relay/messages", ("fleet",)),
    "e2ee_relay_envelopes_acknowledged_total": ("Stored envelopes their relay client acknowledged", ("fleet",)),
    "e2ee_channel_requests_total": (
        "Requests served on the MQTT service channel (kind device) and enrollment-by-claim topics (kind claim), "
        "by status class of the answer", ("kind", "status")),
    "e2ee_claim_credentials_retired_total": ("Claim broker credentials deleted (spent, revoked or expired claims)", ()),
    "e2ee_client_reports_total": ("Signed count reports accepted from clients (POST /reports)", ("fleet",)),
    "e2ee_client_events_total": (
        "Events clients reported, summed: delivered, undelivered, received, decrypt_failures, encrypt_failures",
        ("fleet", "event")),
}

# Request durations: route template (the app's own, so bounded), method, status class.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HISTOGRAMS: dict[str, tuple[str, tuple[str, ...], tuple[float, ...]]] = {
    "e2ee_http_request_duration_seconds": (
        "HTTP request duration, by route template, method and status class", ("route", "method", "status"),
        _LATENCY_BUCKETS),
    "e2ee_broker_command_duration_seconds": (
        "Broker admin commands and acknowledged publishes: time to the broker's answer (outcome ok: it "
        "answered, a refusal included; error: no answer or not sent)",
        ("command", "outcome"), _LATENCY_BUCKETS),
}


class Metrics:
    """The service's metrics: `inc(name, fleet=..., **labels)` for COUNTERS, `observe(...)` for
    HISTOGRAMS, `registry` for the exposition. Unknown names or label values raise (KeyError,
    ValueError): a typo cannot make a new series."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._fleets: set[str] = set()
        self._children: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        self._lock = threading.Lock()
        self._counters = {name: Counter(name, help_text, labels, registry=self.registry)
                          for name, (help_text, labels) in COUNTERS.items()}
        self._histograms = {name: Histogram(name, help_text, labels, buckets=buckets, registry=self.registry)
                            for name, (help_text, labels, buckets) in HISTOGRAMS.items()}
        self._zero(None)

    def fleet(self, fleet: str) -> str:
        """The label value for `fleet`: itself, or OTHER_FLEET once MAX_FLEET_LABELS others are in use.
        A fleet seen for the first time gets all its counter series at 0."""
        if fleet in self._fleets:
            return fleet
        with self._lock:
            if fleet in self._fleets:
                return fleet
            if len(self._fleets) >= MAX_FLEET_LABELS:
                if OTHER_FLEET in self._fleets:
                    return OTHER_FLEET
                fleet = OTHER_FLEET  # kept in the set too: zeroed once
            self._fleets.add(fleet)
        self._zero(fleet)
        return fleet

    def _zero(self, fleet: str | None) -> None:
        """Creates the series of every counter at 0, for `fleet` (those with a fleet label) or for
        the fixed vocabularies alone (fleet None): rate() and increase() see a counter's first
        increment only when the series existed before it."""
        for name, (_, labels) in COUNTERS.items():
            if ("fleet" in labels) != (fleet is not None) or not labels:
                continue
            others = [label for label in labels if label != "fleet"]
            for values in itertools.product(*(sorted(LABEL_VALUES[label]) for label in others)):
                given = dict(zip(others, values))
                if fleet is not None:
                    given["fleet"] = fleet
                self._counters[name].labels(**given)

    def _labels(self, names: tuple[str, ...], given: dict[str, str]) -> dict[str, str]:
        if set(given) != set(names):
            raise ValueError("labels %s, expected %s" % (sorted(given), list(names)))
        out = {}
        for name, value in given.items():
            if name == "fleet":
                out[name] = self.fleet(value)
            elif name == "route":  # the app's own route templates (core/requestmetrics.py): bounded
                out[name] = value
            elif value in LABEL_VALUES[name]:
                out[name] = value
            else:
                raise ValueError("label %s takes no value %r" % (name, value))
        return out

    def _child(self, name: str, labels: dict[str, str]) -> Any:
        """The series of `name` with `labels`, checked once and then cached (the labels' values
        are bounded, and a fleet past the cap is not cached under its own name)."""
        key = (name, tuple(labels.items()))
        child = self._children.get(key)
        if child is None:
            metric = self._counters.get(name) or self._histograms[name]
            names = COUNTERS[name][1] if name in self._counters else HISTOGRAMS[name][1]
            values = self._labels(names, labels)
            child = metric.labels(**values) if values else metric
            if values == labels:
                self._children[key] = child
        return child

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        self._child(name, labels).inc(amount)

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        self._child(name, labels).observe(seconds)

    def observe_broker(self, command: str, seconds: float, ok: bool) -> None:
        """The broker admin's observer (e2ee_host.broker.DynSec(observe=...))."""
        self.observe("e2ee_broker_command_duration_seconds", seconds,
                     command=command if command in BROKER_COMMANDS else "other", outcome="ok" if ok else "error")

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

