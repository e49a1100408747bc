"""Devices: for now an operator registers a device's public identity keys directly.
Enrollment with attestation (claim + proof of possession + hardware evidence, issuing a device
certificate) replaces this for the field; see docs/provisioning.md, "Not built yet"."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from e2ee.protocol import keys
from e2ee_provisioning.api.deps import MetricsDep, OperatorAuth, SessionDep, device_is_revoked
from e2ee_provisioning.models import Device, DeviceCreate, DevicePublic, utcnow

router = APIRouter(prefix="/devices", tags=["devices"], dependencies=[OperatorAuth])


def to_public(session: Session, device: Device) -> DevicePublic:
    return DevicePublic(device_id=device.device_id, fleet=device.fleet, ik_pub=device.ik_pub,
                        is_pub=device.is_pub, fingerprint=device.fingerprint, created_at=device.created_at,
                        revoked=device_is_revoked(session, device))


def create_device(*, session: Session, device_in: DeviceCreate) -> Device:
    fingerprint = keys.fingerprint(device_in.ik_pub, device_in.is_pub).hex()
    device = Device(device_id=device_in.device_id, fleet=device_in.fleet, ik_pub=device_in.ik_pub,
                    is_pub=device_in.is_pub, fingerprint=fingerprint, created_at=utcnow(), last_signed_at=0)
    session.add(device)
    session.commit()
    return device


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DevicePublic)
def post_device(device_in: DeviceCreate, session: SessionDep, metrics: MetricsDep) -> DevicePublic:
    try:
        device = create_device(session=session, device_in=device_in)
    except IntegrityError:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, "device id or identity key already registered")
    metrics.inc("e2ee_devices_registered_total")
    return to_public(session, device)


@router.get("", response_model=list[DevicePublic])
def list_devices(session: SessionDep, fleet: str | None = None,
                 offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)) -> list[DevicePublic]:
    query = select(Device).order_by(Device.id).offset(offset).limit(limit)
    if fleet is not None:
        query = query.where(Device.fleet == fleet)
    return [to_public(session, d) for d in session.scalars(query)]


@router.get("/{device_id}", response_model=DevicePublic)
def get_device(device_id: str, session: SessionDep) -> DevicePublic:
    device = session.scalar(select(Device).where(Device.device_id == device_id))
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such device")
    return to_public(session, device)
