"""Gauges read at scrape time (core/metrics.py): per-fleet counts from the database, and the broker
admin's state. Counts only; the one label is the fleet (Metrics.fleet caps its values).

Every fleet that appears in any database gauge gets every database gauge (0 where it has none),
so an alert on one of them never sees a series vanish and come back."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from e2ee_provisioning.core.metrics import Metrics
from e2ee_provisioning.models import (
    Backup, Device, EnrollmentClaim, OneTimePrekey, RelayMessage, Revocation, SignedPrekey,
)

__all__ = ["BrokerGauges", "DatabaseGauges"]


def _not_revoked() -> Any:
    return ~select(Revocation.id).where(Revocation.device_pk == Device.id).exists()


class DatabaseGauges(Collector):
    """`state` is the app's state (sessionmaker once the service started, settings); nothing is
    collected before startup."""

    def __init__(self, state: Any, metrics: Metrics) -> None:
        self._state = state
        self._metrics = metrics

    def _queries(self) -> dict[str, tuple[str, Select[Any]]]:
        settings = self._state.settings
        stock = (select(OneTimePrekey.device_pk, func.count().label("n"))
                 .group_by(OneTimePrekey.device_pk).subquery())
        return {
            "e2ee_devices": ("Registered devices (revoked ones included)",
                             select(Device.fleet, func.count()).group_by(Device.fleet)),
            "e2ee_devices_revoked": ("Revoked devices", select(Device.fleet, func.count())
                                     .join(Revocation, Revocation.device_pk == Device.id).group_by(Device.fleet)),
            "e2ee_devices_prekey_inventory_low": (
                "Unrevoked devices with a signed prekey and fewer one-time prekeys than the replenish threshold",
                select(Device.fleet, func.count()).join(SignedPrekey, SignedPrekey.device_pk == Device.id)
                .outerjoin(stock, stock.c.device_pk == Device.id)
                .where(func.coalesce(stock.c.n, 0) < settings.replenish_threshold, _not_revoked())
                .group_by(Device.fleet)),
            "e2ee_one_time_prekeys_stored": (
                "One-time prekeys stored", select(Device.fleet, func.count())
                .join(OneTimePrekey, OneTimePrekey.device_pk == Device.id).group_by(Device.fleet)),
            "e2ee_enrollment_claims": ("Enrollment claims (any state)", select(EnrollmentClaim.fleet, func.count())
                                       .group_by(EnrollmentClaim.fleet)),
            "e2ee_relay_backlog_envelopes": (
                "Envelopes the relay holds for its HTTP clients, not yet acknowledged", select(Device.fleet, func.count())
                .join(RelayMessage, RelayMessage.device_pk == Device.id).group_by(Device.fleet)),
            "e2ee_backups_stored": ("Encrypted backups stored", select(Device.fleet, func.count())
                                    .join(Backup, Backup.device_pk == Device.id).group_by(Device.fleet)),
            "e2ee_backups_locked": (
                "Backups locked after too many wrong passphrases", select(Device.fleet, func.count())
                .join(Backup, Backup.device_pk == Device.id)
                .where(Backup.failures >= settings.backup_fetch_attempts).group_by(Device.fleet)),
        }

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sessions: Callable[[], Session] | None = getattr(self._state, "sessionmaker", None)
        if sessions is None:
            return
        queries = self._queries()
        values: dict[str, dict[str, float]] = {name: defaultdict(float) for name in queries}
        oldest: dict[str, float] = {}
        with sessions() as session:
            for name, (_, query) in queries.items():
                for fleet, n in session.execute(query):
                    values[name][self._metrics.fleet(fleet)] += n
            now = time.time()
            for fleet, first in session.execute(select(Device.fleet, func.min(RelayMessage.received_at))
                                                .join(RelayMessage, RelayMessage.device_pk == Device.id)
                                                .group_by(Device.fleet)):
                label = self._metrics.fleet(fleet)
                oldest[label] = max(oldest.get(label, 0.0), max(0.0, now - first.timestamp()))
        fleets = sorted({fleet for per_fleet in values.values() for fleet in per_fleet})
        for name, (help_text, _) in queries.items():
            family = GaugeMetricFamily(name, help_text, labels=["fleet"])
            for fleet in fleets:
                family.add_metric([fleet], values[name].get(fleet, 0.0))
            yield family
        family = GaugeMetricFamily("e2ee_relay_backlog_oldest_seconds",
                                   "Age of the oldest unacknowledged relay envelope (0: none)", labels=["fleet"])
        for fleet in fleets:
            family.add_metric([fleet], oldest.get(fleet, 0.0))
        yield family


class BrokerGauges(Collector):
    """e2ee_broker_admin_up and the admin's in-memory queues, for a broker admin that reports them
    (e2ee_host.broker.DynSec: `connected`, `queued()`); nothing without a broker."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        broker = getattr(self._state, "broker", None)
        connected = getattr(broker, "connected", None)
        if connected is None:
            return
        yield GaugeMetricFamily("e2ee_broker_admin_up", "1 while the service's broker admin is connected "
                                "and subscribed, else 0", value=1.0 if connected else 0.0)
        queued = broker.queued()
        family = GaugeMetricFamily("e2ee_broker_admin_queued", "Messages the broker admin received and has not "
                                   "handed to its worker yet (inbox: relay, requests: service channel)",
                                   labels=["queue"])
        for queue in ("inbox", "requests"):
            family.add_metric([queue], float(queued.get(queue, 0)))
        yield family
