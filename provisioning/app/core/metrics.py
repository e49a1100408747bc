"""Content-free counters for /metrics: totals only, no label ever carries a device id, key,
fingerprint or token."""
from __future__ import annotations

import threading
from collections import Counter

__all__ = ["COUNTERS", "Metrics"]

# name -> help text; every counter the service increments is listed here (and nothing else).
COUNTERS = {
    "e2ee_bundle_fetches_total": "Prekey bundles handed out",
    "e2ee_bundle_fetches_without_one_time_prekey_total": "Bundles handed out with the signed prekey only",
    "e2ee_bundle_fetches_rate_limited_total": "Bundle fetches refused by the rate limit",
    "e2ee_prekey_uploads_total": "Accepted prekey uploads",
    "e2ee_prekey_uploads_rejected_total": "Prekey uploads refused (bad signature, malformed, too many)",
    "e2ee_enrollment_challenges_total": "Enrollment challenges issued",
    "e2ee_enrollments_total": "Successful enrollments (certificates issued)",
    "e2ee_enrollments_rejected_total": "Enrollments refused (claim, proof, evidence, revoked, conflict)",
    "e2ee_enrollments_rate_limited_total": "Enrollment requests refused by the rate limit",
    "e2ee_registration_lock_failures_total": "Wrong registration-lock PINs",
    "e2ee_revocations_total": "Devices revoked",
    "e2ee_revocation_lists_signed_total": "Revocation lists signed",
    "e2ee_revocation_list_publish_failures_total":
        "Revocation lists the broker did not take after a re-registration",
    "e2ee_enrollment_claims_created_total": "Enrollment claim tokens created",
    "e2ee_enrollment_claims_revoked_total": "Enrollment claims revoked by an operator",
    "e2ee_auth_failures_total": "Requests refused for missing or wrong credentials",
    "e2ee_channel_requests_total": "Requests served on the MQTT service channel and enrollment-by-claim topics",
    "e2ee_channel_requests_refused_total": "Service channel requests answered with an error status",
    "e2ee_claim_credentials_retired_total": "Claim broker credentials deleted (spent, revoked or expired claims)",
}


class Metrics:
    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def inc(self, name: str, amount: int = 1) -> None:
        if name not in COUNTERS:
            raise KeyError(name)
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {name: self._counts[name] for name in COUNTERS}
