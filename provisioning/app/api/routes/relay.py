"""The HTTP relay for clients that do not speak MQTT (docs/broker.md, "Relay"): they post
envelopes, which the service publishes into the recipient's inbox on the broker, and they fetch
what arrived in their own inbox, which the service keeps in the database until they acknowledge
it by id (a service restart loses nothing). The service relays ciphertext only."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import Field
from sqlalchemy import delete, select

from e2ee_provisioning.api.deps import (
    MAX_SQL_INTEGER, DeviceAuth, MetricsDep, RelayId, SessionDep, device_is_revoked,
)
from e2ee_provisioning.api.openapi import refusals
from e2ee_provisioning.core.broker import BrokerError
from e2ee_provisioning.models import Device, RelayClient, RelayMessage, RelayMessagePublic, RelaySend, utcnow

router = APIRouter(prefix="/relay", tags=["relay"])

# Envelopes per fetch, and ids per acknowledgement: a client acknowledges what one fetch gave it.
MAX_FETCH = 100

AckIds = Annotated[list[Annotated[int, Field(ge=0, le=MAX_SQL_INTEGER)]], Query(
    alias="id", max_length=MAX_FETCH,
    description="ids of fetched envelopes, repeated (`?id=7&id=8`), 1..%d per request" % MAX_FETCH)]
RetiredUpTo = Annotated[int | None, Query(
    deprecated=True, description="retired: a range could remove envelopes that arrived after the "
    "fetch; sending it is a 422 that says to acknowledge by `id`")]


def _broker(request: Request):  # type: ignore[no-untyped-def]
    broker = request.app.state.broker
    if broker is None or not hasattr(broker, "publish_inbox"):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this service relays no messages (no broker)")
    return broker


@router.post("/register", status_code=status.HTTP_204_NO_CONTENT,
             responses=refusals({503: "this service relays no messages (no broker)"}))
def register(request: Request, auth: DeviceAuth, session: SessionDep) -> None:
    """From now on the service keeps what arrives in this device's inbox for it to fetch."""
    _broker(request)
    if session.scalar(select(RelayClient.id).where(RelayClient.device_pk == auth.device.id)) is None:
        session.add(RelayClient(device_pk=auth.device.id, registered_at=utcnow()))
        session.commit()


@router.post("/messages", status_code=status.HTTP_202_ACCEPTED,
             responses=refusals({403: "a device writes only to inboxes of its own fleet",
                                 404: "no such device in this fleet",
                                 410: "the device is revoked",
                                 503: "no broker, or the broker did not take the message; retry"}))
def send(body: RelaySend, request: Request, auth: DeviceAuth, session: SessionDep,
         metrics: MetricsDep) -> dict[str, str]:
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
    metrics.inc("e2ee_relay_envelopes_sent_total", fleet=fleet)
    return {"to": body.to}


@router.get("/messages", response_model=list[RelayMessagePublic])
def fetch(auth: DeviceAuth, session: SessionDep, after: RelayId = 0) -> list[RelayMessagePublic]:
    """What waits in this device's inbox with an id above `after`, oldest first, at most
    MAX_FETCH. Ids are never reused (alembic 0007) and grow in the order the relay stored the
    envelopes, so a client pages on with `after=` the last id it got."""
    rows = session.scalars(select(RelayMessage).where(RelayMessage.device_pk == auth.device.id,
                                                      RelayMessage.id > after)
                           .order_by(RelayMessage.id).limit(MAX_FETCH))
    return [RelayMessagePublic(id=m.id, sender=m.sender, envelope=m.envelope, received_at=m.received_at) for m in rows]


@router.delete("/messages", status_code=status.HTTP_204_NO_CONTENT)
def acknowledge(auth: DeviceAuth, session: SessionDep, metrics: MetricsDep, ids: AckIds = [],
                up_to: RetiredUpTo = None) -> None:
    """The client has the envelopes with these ids: the service forgets them. Only the named ids
    of this device go, never a range that could hold an envelope stored after the fetch; ids that
    are gone already (a retried acknowledgement) or not this device's are ignored."""
    if up_to is not None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "up_to is no longer accepted: acknowledge the fetched envelopes by id (?id=N&id=M)")
    if not ids:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "name the fetched envelopes to acknowledge (?id=N)")
    gone = session.execute(delete(RelayMessage).where(RelayMessage.device_pk == auth.device.id,
                                                      RelayMessage.id.in_(ids)))
    session.commit()
    metrics.inc("e2ee_relay_envelopes_acknowledged_total", max(0, gone.rowcount), fleet=auth.device.fleet)  # type: ignore[attr-defined]
