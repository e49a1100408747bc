"""Linking devices to their owner (docs/linking.md): the rendezvous that relays the two sealed
messages of the QR linking channel, the link recorded with the primary's signed approval and the
new device's signed consent, the owner's device list that senders fan out to, and revocation from
the owner's side."""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response, status
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from e2ee import crypto
from e2ee.crypto.errors import CryptoError
from e2ee.protocol import keys, linking
from e2ee_provisioning.api.deps import (
    CADep, DeviceAuth, EnrollRateLimit, MetricsDep, RequesterAuth, SessionDep, accept_signed_write,
    device_is_revoked, raw_body,
)
from e2ee_provisioning.api.openapi import refusals
from e2ee_provisioning.api.routes.devices import revoke_and_notify
from e2ee_provisioning.models import (
    Certificate, Device, DeviceIdentity, Link, LinkApproval, OwnerDevicePublic, RendezvousMessage, RevokeRequest, RevokeResult, utcnow,
)

log = logging.getLogger(__name__)

router = APIRouter(tags=["linking"])

RENDEZVOUS_TTL = 600  # seconds a sealed linking message waits for the other side
Channel = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
Slot = Literal["offer", "answer"]


@router.put("/rendezvous/{channel}/{slot}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[EnrollRateLimit],
            responses=refusals({409: "this rendezvous slot is already written",
                                413: "the payload is over the slot's size"}))
def put_rendezvous(channel: Channel, slot: Slot, session: SessionDep,
                   body: Annotated[bytes, Depends(raw_body)]) -> None:
    """Leaves one sealed message for the other side (ciphertext only; written once)."""
    if not 16 < len(body) <= linking.MAX_MESSAGE:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE if body else status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "a linking message is 17..%d bytes" % linking.MAX_MESSAGE)
    now = utcnow()
    session.execute(delete(RendezvousMessage).where(RendezvousMessage.expires_at <= now))
    session.add(RendezvousMessage(channel=channel, slot=slot, data=body,
                                  expires_at=now + timedelta(seconds=RENDEZVOUS_TTL)))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, "this rendezvous slot is already written")


@router.get("/rendezvous/{channel}/{slot}", dependencies=[EnrollRateLimit],
            response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}, **refusals({404: "nothing here yet"})})
def get_rendezvous(channel: Channel, slot: Slot, session: SessionDep) -> Response:
    data = session.scalar(select(RendezvousMessage.data).where(
        RendezvousMessage.channel == channel, RendezvousMessage.slot == slot,
        RendezvousMessage.expires_at > utcnow()))
    if data is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "nothing here yet")
    return Response(data, media_type="application/octet-stream", headers={"Cache-Control": "no-store"})


@router.get("/identities/{device_id}", response_model=DeviceIdentity,
            responses=refusals({404: "no such device in this fleet, or it has no valid certificate",
                                410: "the device is revoked"}))
def get_identity(device_id: str, requester: RequesterAuth, session: SessionDep) -> DeviceIdentity:
    """A device's identity keys and newest certificate, for a primary checking a QR fingerprint
    (operators, and devices of the same fleet)."""
    return identity(session=session, requester=requester.device, device_id=device_id)


def identity(*, session: Session, requester: Device | None, device_id: str) -> DeviceIdentity:
    """get_identity for `requester` (a device, or None for an operator): HTTP and the service
    channel's bundle answer (api/channel.py) come through here. HTTPException 404 or 410."""
    device = session.scalar(select(Device).where(Device.device_id == device_id))
    if device is None or (requester is not None and requester.fleet != device.fleet):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such device in this fleet")
    if device_is_revoked(session, device):
        raise HTTPException(status.HTTP_410_GONE, "device is revoked")
    cert = session.scalar(select(Certificate.data).where(Certificate.device_pk == device.id, Certificate.revoked_at.is_(None))
                          .order_by(Certificate.id.desc()).limit(1))
    if cert is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "device has no valid certificate")
    return DeviceIdentity(device_id=device.device_id, fleet=device.fleet, ik_pub=device.ik_pub,
                          is_pub=device.is_pub, certificate=cert)


def _belongs(session: Session, device: Device, owner: str) -> bool:
    return device.owner == owner


@router.post("/links", status_code=status.HTTP_201_CREATED,
             responses=refusals({403: "the approver is not a device of the owner, the device is in another fleet, "
                                      "or its consent does not verify",
                                 404: "no such device",
                                 409: "the device is already linked or belongs to another owner, or the request "
                                      "timestamp is not newer than the approver's last write",
                                 410: "the device is revoked"}))
def post_link(body: LinkApproval, auth: DeviceAuth, session: SessionDep, metrics: MetricsDep) -> dict[str, str]:
    """The owner's primary (a device of that owner) records a link, with its signature and the
    new device's consent (docs/linking.md §3)."""
    primary = auth.device
    if not _belongs(session, primary, body.owner):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only a device of owner %s approves its links" % body.owner)
    device = session.scalar(select(Device).where(Device.device_id == body.device_id))
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such device")
    if device.id == primary.id:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "a device cannot link itself")
    if device_is_revoked(session, device):
        raise HTTPException(status.HTTP_410_GONE, "device is revoked")
    if device.fleet != primary.fleet:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the device is in another fleet")
    if keys.fingerprint(device.ik_pub, device.is_pub) != body.fingerprint:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "fingerprint does not match the device's enrolled identity")
    try:
        crypto.ed25519_verify(primary.is_pub, linking.approval_message(body.owner, body.device_id, body.fingerprint),
                              body.approval)
    except CryptoError:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "approval signature does not verify")
    # the new device's own consent to this owner and this primary (issue 12, finding 5)
    try:
        crypto.ed25519_verify(device.is_pub, linking.consent_message(body.owner, primary.device_id,
                                                                     body.fingerprint), body.consent)
    except CryptoError:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the new device's consent does not verify")
    if session.scalar(select(Link.id).where(Link.device_pk == device.id)) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, "device is already linked")
    if device.owner and device.owner != body.owner:
        raise HTTPException(status.HTTP_409_CONFLICT, "device belongs to another owner")
    if not accept_signed_write(session, auth):
        raise HTTPException(status.HTTP_409_CONFLICT, "request timestamp is not newer than the last write")
    device.owner = body.owner
    session.add(Link(owner=body.owner, device_pk=device.id, primary_pk=primary.id, approval=body.approval,
                     created_at=utcnow()))
    session.commit()
    metrics.inc("e2ee_links_total", fleet=device.fleet)
    log.info("linked %s to owner %s (approved by %s)", device.device_id, body.owner, primary.device_id)
    return {"owner": body.owner, "device_id": device.device_id}


@router.get("/owners/{owner}/devices", response_model=list[OwnerDevicePublic])
def owner_devices(owner: str, requester: RequesterAuth, session: SessionDep,
                  fleet: str | None = None) -> list[OwnerDevicePublic]:
    """Every unrevoked device of the owner (what a sender fans a message to the owner out to).
    Owner names are per fleet (issue 12, finding 10): a device sees its own fleet's owner only
    (`fleet` is ignored), an operator every fleet's or the one `fleet` names."""
    if requester.device is not None:
        fleet = requester.device.fleet
    query = select(Device, Link).outerjoin(Link, Link.device_pk == Device.id).where(Device.owner == owner)
    if fleet is not None:
        query = query.where(Device.fleet == fleet)
    rows = session.execute(query.order_by(Device.id)).all()
    primaries = {d.id: d.device_id for d, _ in rows}
    out = []
    for device, link in rows:
        if device_is_revoked(session, device):
            continue
        primary = None
        if link is not None:
            primary = primaries.get(link.primary_pk) or session.scalar(
                select(Device.device_id).where(Device.id == link.primary_pk))
        out.append(OwnerDevicePublic(device_id=device.device_id, fleet=device.fleet, ik_pub=device.ik_pub,
                                     is_pub=device.is_pub, fingerprint=device.fingerprint, primary=primary,
                                     approval=link.approval if link else None))
    return out


@router.post("/owners/{owner}/devices/{device_id}/revoke", response_model=RevokeResult,
             responses=refusals({403: "only a device of the owner revokes its devices",
                                 404: "the owner has no such device",
                                 409: "the device is already revoked",
                                 502: "revoked, but the broker did not disable the device's client",
                                 503: "the revocation list is contended; retry"}))
def owner_revoke(owner: str, device_id: str, body: RevokeRequest, request: Request, auth: DeviceAuth,
                 session: SessionDep, ca: CADep, metrics: MetricsDep) -> RevokeResult:
    """The owner revokes one of its devices from another of its devices (a lost phone, a stolen board)."""
    if not _belongs(session, auth.device, owner):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only a device of owner %s revokes its devices" % owner)
    device = session.scalar(select(Device).where(Device.device_id == device_id, Device.owner == owner,
                                                 Device.fleet == auth.device.fleet))  # owners are per fleet
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "owner %s has no device %s" % (owner, device_id))
    if device.id == auth.device.id:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "a device does not revoke itself here")
    return revoke_and_notify(request, session, ca, metrics, device, body.reason or "revoked by owner")


