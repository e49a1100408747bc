"""Prometheus text exposition of counts only: counters since start and gauges read from the
database. No label carries an identifier (device id, fingerprint, key, token)."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from e2ee_provisioning.api.deps import MetricsDep, SessionDep, SettingsDep
from e2ee_provisioning.core.metrics import COUNTERS
from e2ee_provisioning.models import Device, EnrollmentClaim, OneTimePrekey, Revocation, SignedPrekey

router = APIRouter(tags=["metrics"])


def _gauges(session: Session, threshold: int) -> dict[str, tuple[str, int]]:
    stock = (select(OneTimePrekey.device_pk, func.count().label("n"))
             .group_by(OneTimePrekey.device_pk).subquery())
    low = session.scalar(
        select(func.count()).select_from(Device)
        .join(SignedPrekey, SignedPrekey.device_pk == Device.id)
        .outerjoin(stock, stock.c.device_pk == Device.id)
        .where(func.coalesce(stock.c.n, 0) < threshold))
    return {
        "e2ee_devices": ("Registered devices", session.scalar(select(func.count(Device.id))) or 0),
        "e2ee_devices_revoked": ("Revoked devices", session.scalar(select(func.count(Revocation.id))) or 0),
        "e2ee_devices_prekey_inventory_low": (
            "Devices with a signed prekey and fewer one-time prekeys than the replenish threshold", low or 0),
        "e2ee_one_time_prekeys_stored": (
            "One-time prekeys stored, all devices", session.scalar(select(func.count(OneTimePrekey.id))) or 0),
        "e2ee_enrollment_claims": ("Enrollment claims", session.scalar(select(func.count(EnrollmentClaim.id))) or 0),
    }


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(session: SessionDep, counters: MetricsDep, settings: SettingsDep) -> str:
    lines = []
    for name, value in counters.snapshot().items():
        lines += ["# HELP %s %s" % (name, COUNTERS[name]), "# TYPE %s counter" % name, "%s %d" % (name, value)]
    for name, (help_text, value) in _gauges(session, settings.replenish_threshold).items():
        lines += ["# HELP %s %s" % (name, help_text), "# TYPE %s gauge" % name, "%s %d" % (name, value)]
    return "\n".join(lines) + "\n"
