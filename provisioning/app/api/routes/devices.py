"""Devices for operators (docs/provisioning.md, "Devices"): the device list per fleet and owner,
one device, revocation, and clearing a registration lock. Devices join by enrollment
(routes/enrollment.py) only."""
from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Request, status
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from e2ee_provisioning.api.deps import (
    CADep, MetricsDep, Offset, OperatorAuth, PageLimit, SessionDep, device_is_revoked,
)
from e2ee_provisioning.api.openapi import refusals
from e2ee_provisioning.core.authority import current_revocation_list, publish_revocation_list
from e2ee_provisioning.core.broker import BrokerAdmin, BrokerError
from e2ee_provisioning.core.metrics import Metrics
from e2ee_provisioning.models import (
    Certificate, Device, DevicePublic, OneTimePrekey, Revocation, RevokeRequest, RevokeResult, SignedPrekey, utcnow,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/devices", tags=["devices"], dependencies=[OperatorAuth])

# Attempts at a revocation whose revocation-list version another revocation took meanwhile.
_REVOKE_RETRIES = 5


def to_public(session: Session, device: Device) -> DevicePublic:
    cert = session.scalar(select(Certificate).where(Certificate.device_pk == device.id)
                          .order_by(Certificate.id.desc()).limit(1))
    return DevicePublic(device_id=device.device_id, fleet=device.fleet, owner=device.owner,
                        roles=[r for r in device.roles.split(",") if r], ik_pub=device.ik_pub,
                        is_pub=device.is_pub, fingerprint=device.fingerprint, board_uid=device.board_uid,
                        created_at=device.created_at, enrolled_at=device.enrolled_at,
                        revoked=device_is_revoked(session, device), registration_lock=bool(device.lock_hash),
                        certificate_serial=cert.serial.hex() if cert else None,
                        certificate_not_after=cert.not_after if cert else None)


def _device(session: Session, device_id: str) -> Device:
    device = session.scalar(select(Device).where(Device.device_id == device_id))
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such device")
    return device


@router.get("", response_model=list[DevicePublic])
def list_devices(session: SessionDep, fleet: str | None = None, owner: str | None = None,
                 offset: Offset = 0, limit: PageLimit = 100) -> list[DevicePublic]:
    query = select(Device).order_by(Device.id).offset(offset).limit(limit)
    if fleet is not None:
        query = query.where(Device.fleet == fleet)
    if owner is not None:
        query = query.where(Device.owner == owner)
    return [to_public(session, d) for d in session.scalars(query)]


@router.get("/{device_id}", response_model=DevicePublic,
            responses=refusals({404: "no such device"}))
def get_device(device_id: str, session: SessionDep) -> DevicePublic:
    return to_public(session, _device(session, device_id))


def revoke(session: Session, device: Device, reason: str, ca: object) -> tuple[list[bytes], int]:
    """Records the revocation, revokes the device's certificates, drops its prekeys and signs the
    next revocation list, in one transaction (retried when a concurrent revocation took the
    list version). Returns the serials revoked and the new list version."""
    for attempt in range(_REVOKE_RETRIES):
        now = utcnow()
        serials = list(session.scalars(select(Certificate.serial).where(
            Certificate.device_pk == device.id, Certificate.revoked_at.is_(None))))
        session.add(Revocation(device_pk=device.id, reason=reason, revoked_at=now))
        session.execute(update(Certificate).where(Certificate.device_pk == device.id, Certificate.revoked_at.is_(None))
                        .values(revoked_at=now, revoke_reason=reason or "revoked"))
        session.execute(delete(OneTimePrekey).where(OneTimePrekey.device_pk == device.id))
        session.execute(delete(SignedPrekey).where(SignedPrekey.device_pk == device.id))
        record = publish_revocation_list(session, ca)  # type: ignore[arg-type]
        try:
            session.commit()
            return serials, record.version
        except IntegrityError:
            session.rollback()
            if device_is_revoked(session, device):
                raise HTTPException(status.HTTP_409_CONFLICT, "device is already revoked")
    raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "revocation list is contended; retry")


def revoke_and_notify(request: Request, session: Session, ca: object, metrics: Metrics, device: Device,
                      reason: str) -> RevokeResult:
    """Revokes (409 when already revoked), then disables the device's broker client."""
    if device_is_revoked(session, device):
        raise HTTPException(status.HTTP_409_CONFLICT, "device is already revoked")
    serials, version = revoke(session, device, reason, ca)
    metrics.inc("e2ee_revocations_total", fleet=device.fleet)
    metrics.inc("e2ee_revocation_lists_signed_total")
    log.info("revoked %s (%d certificates); revocation list version %d", device.device_id, len(serials), version)
    broker: BrokerAdmin | None = request.app.state.broker
    if broker is not None:
        try:
            broker.revoke_device(device.device_id)
            broker.publish_revocation_list(device.fleet, current_revocation_list(session).data)
        except BrokerError:
            # recorded and listed already; the operator retries the broker side
            raise HTTPException(status.HTTP_502_BAD_GATEWAY, "revoked, but the broker did not disable the "
                                "device's client; retry the revocation of the broker client")
    return RevokeResult(device_id=device.device_id, revoked_serials=[s.hex() for s in serials],
                        revocation_list_version=version)


@router.post("/{device_id}/revoke", response_model=RevokeResult,
             responses=refusals({404: "no such device",
                                 409: "the device is already revoked",
                                 502: "revoked, but the broker did not disable the device's client",
                                 503: "the revocation list is contended; retry"}))
def post_revoke(device_id: str, body: RevokeRequest, request: Request, session: SessionDep, ca: CADep,
                metrics: MetricsDep) -> RevokeResult:
    """Revokes a device: no more bundles or signed requests, its certificates on the next signed
    revocation list, its broker client disabled. A revoked identity cannot enroll again."""
    return revoke_and_notify(request, session, ca, metrics, _device(session, device_id), body.reason)


@router.delete("/{device_id}/registration-lock", status_code=status.HTTP_204_NO_CONTENT,
               responses=refusals({404: "no such device"}))
def clear_registration_lock(device_id: str, session: SessionDep) -> None:
    """An operator clears a device's registration lock (the PIN and its failed attempts)."""
    device = _device(session, device_id)
    device.lock_hash, device.lock_failures = "", 0
    session.commit()
    log.info("registration lock of %s cleared by an operator", device_id)
