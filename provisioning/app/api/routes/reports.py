"""POST /reports: counts a client reports about its own end-to-end traffic (docs/provisioning.md,
"Client reports"): messages delivered (a receipt came back), undelivered (its sender was told it
was not), received, and envelopes it could not decrypt or encrypt. The service sees ciphertext
only, so these are the counts only the clients can give. Counts, never ids, keys or content; they
land in e2ee_client_events_total{fleet, event} and nowhere else (nothing is stored).

Signed by the device (single use, like every signed request) and bounded twice: each count at
most MAX_COUNT per report, and REPORT_CAPACITY reports then one per 1/REPORTS_PER_SECOND seconds
per device (429 beyond), so one device cannot move its fleet's figures by more than a known rate.
The MQTT service channel serves the same operation (api/channel.py)."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from e2ee_provisioning.api.deps import AuthenticatedDevice, DeviceAuth, MetricsDep
from e2ee_provisioning.api.openapi import refusals
from e2ee_provisioning.core.metrics import Metrics
from e2ee_provisioning.core.ratelimit import TokenBuckets

__all__ = ["ClientReport", "MAX_COUNT", "REPORT_CAPACITY", "REPORTS_PER_SECOND", "record_report"]

router = APIRouter(tags=["reports"])

# Events of one kind in one report: a board that reports every few minutes counts far fewer.
MAX_COUNT = 10_000
# Reports per device: a burst of 4, then one every 15 s (a client reports every few minutes).
REPORT_CAPACITY = 4.0
REPORTS_PER_SECOND = 1 / 15


class ClientReport(BaseModel):
    """Events since the client's previous report (each 0..MAX_COUNT; unknown fields are a 422)."""
    model_config = ConfigDict(extra="forbid")

    delivered: int = Field(0, ge=0, le=MAX_COUNT, description="messages whose end-to-end receipt came back")
    undelivered: int = Field(0, ge=0, le=MAX_COUNT, description="messages the sender was told were not delivered")
    received: int = Field(0, ge=0, le=MAX_COUNT, description="messages received and decrypted")
    decrypt_failures: int = Field(0, ge=0, le=MAX_COUNT, description="envelopes that did not decrypt")
    encrypt_failures: int = Field(0, ge=0, le=MAX_COUNT, description="messages that could not be encrypted")


def record_report(report: ClientReport, auth: AuthenticatedDevice, buckets: TokenBuckets, metrics: Metrics) -> None:
    """Adds the report to the device's fleet's counters; 429 when the device reports too often."""
    if not buckets.allow("report:%d" % auth.device.id):
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "report rate limit",
                            headers={"Retry-After": str(int(1 / REPORTS_PER_SECOND))})
    fleet = auth.device.fleet
    metrics.inc("e2ee_client_reports_total", fleet=fleet)
    for event, count in report.model_dump().items():
        if count:
            metrics.inc("e2ee_client_events_total", count, fleet=fleet, event=event)


@router.post("/reports", status_code=status.HTTP_204_NO_CONTENT,
             responses=refusals({429: "the device's report rate limit; Retry-After says when to retry"}))
def post_report(report: ClientReport, request: Request, auth: DeviceAuth, metrics: MetricsDep) -> None:
    record_report(report, auth, request.app.state.report_buckets, metrics)
