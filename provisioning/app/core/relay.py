"""The relay's broker side (docs/broker.md, "Relay"): the service's admin client watches every
inbox and stores each envelope addressed to a registered relay client in `relay_messages`, where
it stays until the client acknowledges it."""
from __future__ import annotations

import logging
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from e2ee.transport import topics
from e2ee_provisioning.models import Device, RelayClient, RelayMessage, utcnow

__all__ = ["RelayBridge"]

log = logging.getLogger(__name__)


class RelayBridge:
    """`on_inbox` goes to the broker admin (e2ee_host.broker.DynSec(on_inbox=...)) before it connects."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def on_inbox(self, fleet: str, device_id: str, payload: bytes) -> None:
        try:
            sender, envelope = topics.unframe(payload)
        except ValueError:
            return
        with self._sessions() as session:
            device_pk = session.scalar(select(Device.id).join(RelayClient, RelayClient.device_pk == Device.id)
                                       .where(Device.device_id == device_id, Device.fleet == fleet))
            if device_pk is None:
                return  # a device on MQTT: not the relay's business
            session.add(RelayMessage(device_pk=device_pk, sender=sender[:64], envelope=bytes(envelope),
                                     received_at=utcnow()))
            session.commit()
