"""The HTTP relay for clients that do not speak MQTT (docs/broker.md, "Relay"): they post
envelopes, which the service publishes into the recipient's inbox on the broker, and they fetch
what arrived in their own inbox, which the service keeps in the database until they acknowledge
it (a service restart loses nothing). The service relays ciphertext only."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from sqlalchemy import delete, select

from e2ee_provisioning.api.deps import DeviceAuth, RowId, SessionDep, device_is_revoked
from e2ee_provisioning.core.broker import BrokerError
from e2ee_provisioning.models import Device, RelayClient, RelayMessage, RelayMessagePublic, RelaySend, utcnow

router = APIRouter(prefix="/relay", tags=["relay"])

MAX_FETCH = 100


def _broker(request: Request):  # type: ignore[no-untyped-def]
    broker = request.app.state.broker
    if broker is None or not hasattr(broker, "publish_inbox"):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this service relays no messages (no broker)")
    return broker


@router.post("/register", status_code=status.HTTP_204_NO_CONTENT)
def register(request: Request, auth: DeviceAuth, session: SessionDep) -> None:
    """From now on the service keeps what arrives in this device's inbox for it to fetch."""
    _broker(request)
    if session.scalar(select(RelayClient.id).where(RelayClient.device_pk == auth.device.id)) is None:
        session.add(RelayClient(device_pk=auth.device.id, registered_at=utcnow()))
        session.commit()


@router.post("/messages", status_code=status.HTTP_202_ACCEPTED)
def send(body: RelaySend, request: Request, auth: DeviceAuth, session: SessionDep) -> dict[str, str]:
    broker = _broker(request)
    fleet = body.fleet or auth.device.fleet
    if fleet != auth.device.fleet:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a device writes only to inboxes of its own fleet")
    to = session.scalar(select(Device).where(Device.device_id == body.to, Device.fleet == fleet))
    if to is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such device in this fleet")
    if device_is_revoked(session, to):
        raise HTTPException(status.HTTP_410_GONE, "device is revoked")
    try:
        broker.publish_inbox(fleet, body.to, auth.device.device_id, body.envelope)
    except (BrokerError, RuntimeError, ValueError):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the broker did not take the message; retry")
    return {"to": body.to}


@router.get("/messages", response_model=list[RelayMessagePublic])
def fetch(auth: DeviceAuth, session: SessionDep, after: RowId = 0) -> list[RelayMessagePublic]:
    rows = session.scalars(select(RelayMessage).where(RelayMessage.device_pk == auth.device.id,
                                                      RelayMessage.id > after)
                           .order_by(RelayMessage.id).limit(MAX_FETCH))
    return [RelayMessagePublic(id=m.id, sender=m.sender, envelope=m.envelope, received_at=m.received_at) for m in rows]


@router.delete("/messages", status_code=status.HTTP_204_NO_CONTENT)
def acknowledge(auth: DeviceAuth, session: SessionDep, up_to: RowId) -> None:
    """The client has what it fetched up to this id: the service forgets it."""
    session.execute(delete(RelayMessage).where(RelayMessage.device_pk == auth.device.id, RelayMessage.id <= up_to))
    session.commit()
