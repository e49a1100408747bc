"""The relay's broker side (docs/broker.md, "Relay"): the service's admin client watches every
inbox and stores each envelope addressed to a registered relay client in `relay_messages`, where
it stays until the client acknowledges it.

`RelayBridge.on_inbox` runs on the broker admin's inbox worker thread (e2ee_host.broker.DynSec),
never on its network thread: it may wait for the database (a request holding SQLite's write lock
while it drives the broker) without holding up the broker's answers. The admin acknowledges the
MQTT message only after on_inbox returned, and offers it again when on_inbox raised, so a database
error or a service that dies loses nothing. A message stored but not yet acknowledged when the
service died comes again (at least once): its digest (sender and envelope) is unique per recipient,
so the copy is not stored twice. Replicas each get a share of the inboxes (a shared subscription,
docs/provisioning.md "Replicas"): the database is the only state they share here."""
from __future__ import annotations

import hashlib
import logging
import re

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from e2ee.protocol.envelope import MAX_ENVELOPE
from e2ee.transport import topics
from e2ee_provisioning.core.metrics import Metrics
from e2ee_provisioning.models import DEVICE_ID_MAX, Device, RelayClient, RelayMessage, utcnow

__all__ = ["MAX_BACKLOG", "RelayBridge", "relay_digest"]

log = logging.getLogger(__name__)

# Envelopes kept for one relay client until it acknowledges them: 10000 x MAX_ENVELOPE is at most
# about 50 MB per client. Beyond it new ones are dropped (counted in the log), so a device of the
# fleet flooding an inbox cannot fill the database; the broker's own queues are bounded alike.
MAX_BACKLOG = 10_000
_DEVICE_ID = re.compile(r"^[A-Za-z0-9._-]{1,%d}$" % DEVICE_ID_MAX)


def relay_digest(sender: str, envelope: bytes) -> bytes:
    """SHA-256 of the sender's id, a NUL (no device id has one) and the envelope: equal for the
    copies of one message the broker delivers again, unique per recipient in relay_messages."""
    return hashlib.sha256(sender.encode() + b"\0" + envelope).digest()


class RelayBridge:
    """`on_inbox` goes to the broker admin (e2ee_host.broker.DynSec(on_inbox=...)) before it connects."""

    def __init__(self, sessions: sessionmaker[Session], metrics: Metrics | None = None) -> None:
        self._sessions = sessions
        self._metrics = metrics or Metrics()
        self._dropped = 0  # envelopes dropped on full backlogs since the start

    def on_inbox(self, fleet: str, device_id: str, payload: bytes) -> None:
        """Stores the envelope when `device_id` is a relay client. What cannot be an envelope from a
        device (not a frame, a sender that is not a device id, an empty or oversized envelope) is
        dropped: the relay serves only what the protocol could have sent. Raises what the database
        raises (the admin then offers the message again)."""
        try:
            sender, envelope = topics.unframe(payload)
        except ValueError:
            self._metrics.inc("e2ee_relay_envelopes_dropped_total", reason="not_an_envelope")
            return
        if not _DEVICE_ID.match(sender) or not 0 < len(envelope) <= MAX_ENVELOPE:
            self._metrics.inc("e2ee_relay_envelopes_dropped_total", reason="not_an_envelope")
            return
        with self._sessions() as session:
            device_pk = session.scalar(select(Device.id).join(RelayClient, RelayClient.device_pk == Device.id)
                                       .where(Device.device_id == device_id, Device.fleet == fleet))
            if device_pk is None:
                return  # a device on MQTT: not the relay's business
            backlog = session.scalar(select(func.count()).select_from(RelayMessage)
                                     .where(RelayMessage.device_pk == device_pk))
            if backlog is not None and backlog >= MAX_BACKLOG:
                self._dropped += 1
                self._metrics.inc("e2ee_relay_envelopes_dropped_total", reason="backlog_full")
                if self._dropped % 1000 == 1:  # a flood does not flood the log too
                    log.warning("relay backlog of %s is full (%d envelopes): envelope dropped (%d so far)",
                                device_id, backlog, self._dropped)
                return
            digest = relay_digest(sender, bytes(envelope))
            if session.scalar(select(RelayMessage.id).where(RelayMessage.device_pk == device_pk,
                                                            RelayMessage.digest == digest)) is not None:
                self._metrics.inc("e2ee_relay_envelopes_dropped_total", reason="duplicate")
                return  # delivered again after a replica died before its acknowledgement
            session.add(RelayMessage(device_pk=device_pk, sender=sender, envelope=bytes(envelope),
                                     received_at=utcnow(), digest=digest))
            try:
                session.commit()
            except IntegrityError:  # the same copy stored meanwhile by another replica
                session.rollback()
                self._metrics.inc("e2ee_relay_envelopes_dropped_total", reason="duplicate")
                return
        self._metrics.inc("e2ee_relay_envelopes_stored_total", fleet=fleet)
