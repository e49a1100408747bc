"""The host SDK's high-level client: an install's end-to-end encrypted messaging in a few calls
(docs/host-client.md, "The SDK"; delivery is docs/protocol.md §8 through e2ee_host.messenger).

    from e2ee_host import Client

    with Client.open("~/gw1") as client:                 # the install `e2ee client init` made
        out = client.send("valve-7", b"open at 07:00")   # in the outbox before this returns
        out.wait(30)                                     # "delivered" once valve-7's receipt came
        for msg in client.receive(timeout=10):           # stops after 10 s without a message
            handle(msg.sender, msg.data)
            msg.ack()                                    # only now is it gone from the install

**Received messages are kept until acknowledged.** A message is decrypted, written to the
install's durable inbox (`inbox/`, encrypted at rest) and only then receipted to its sender. It
stays there until the application calls `ack()`: a message received but not acknowledged when
the client closes (or the process dies) is handed out again after the next open. Envelopes the
broker delivered but the client did not get to are spooled at close (`spool/`) and handled at the
next open. So closing never loses a received message. At most `max_unacked` messages wait
unacknowledged; beyond that the client stops reading its inbox and receipting, and the senders'
windows (16 messages per peer, §8) hold the rest in their outboxes.

**Sent messages are tracked.** `send()` returns an `Outgoing` handle: its message id and its
status, "queued" (in the outbox), "sent" (the broker has it), "delivered" (the recipient's
encrypted receipt named it) or "failed" with a reason (no receipt within 7 days, the peer revoked
or gone). Unreceipted messages are resent after reconnects and session resets, also across runs.

**Thread safety.** A Client may be shared between threads: every public method, and each step of
a receive() iteration, holds the client's re-entrant lock, so operations run one at a time. The
lock is not held while receive() hands a message to the application, so a slow handler does not
block send() from another thread. `on_status` runs in the thread that pumps, with the lock held:
it must not block. paho's network thread only fills the link's queues.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from e2ee.protocol import certificate, sender_key
from e2ee.protocol.delivery import DELIVERED, FAILED
from e2ee.protocol.store import NotFound, RecordStore
from e2ee_host.client import ApiError
from e2ee_host.install import HostInstall, InstallError, NotGroupMember
from e2ee_host.messenger import MESSAGE_ERRORS, Messenger
from e2ee_host.transport import HostLink, TransportError

__all__ = ["MAX_UNACKED", "Client", "ClientClosed", "ClientError", "Message", "Outgoing", "StatusCallback"]

log = logging.getLogger(__name__)

# Received messages kept unacknowledged in the install's inbox: beyond it the client stops
# reading (the senders' outboxes hold the rest: no loss, no unbounded disk use).
MAX_UNACKED = 10_000
REFRESH_EVERY = 60.0  # seconds between revocation list fetches from the service (docs/host-client.md)
_REPLENISH = 20  # one-time prekeys published when the service reports its inventory low
_POLL = 0.02  # seconds between looks at the link's queues while waiting (without the lock)
_INBOX = "inbox"
_INBOX_FORMAT = 1  # u8 format || be32 received (Unix s) || u8 n || sender || u8 m || group || payload

StatusCallback = Callable[[str, int, str, "str | None"], None]


class ClientError(InstallError):
    """What the Client refuses: a send to itself, an operation after close()."""


class ClientClosed(ClientError):
    """The client was closed."""


class Message:
    """One received message: `sender` (device id), `data`, `group` (None for a pairwise message),
    `id` (its place in the install's inbox, increasing) and `received_at` (Unix seconds).
    ack() removes it from the install for good; release() hands it out again in this run."""

    __slots__ = ("_client", "data", "group", "id", "received_at", "sender")

    def __init__(self, client: Client, id: int, sender: str, group: str | None, data: bytes,
                 received_at: int) -> None:
        self._client = client
        self.id, self.sender, self.group, self.data, self.received_at = id, sender, group, data, received_at

    def __repr__(self) -> str:  # never the content
        where = "" if self.group is None else " in %s" % self.group
        return "<Message %d from %s%s, %d bytes>" % (self.id, self.sender, where, len(self.data))

    @property
    def acked(self) -> bool:
        return self._client._is_acked(self.id)

    def ack(self) -> None:
        """The application has handled it: deleted from the install's inbox (idempotent)."""
        self._client.ack(self)

    def release(self) -> None:
        """Not handled now: receive() hands it out again in this run (after the ones waiting)."""
        self._client.release(self)


class Outgoing:
    """The fate of one sent message: `peer`, `id` (the message id, per peer), `status` and
    `reason` (set when it failed, or "resent")."""

    __slots__ = ("_client", "id", "peer", "reason", "status")

    def __init__(self, client: Client, peer: str, id: int, status: str, reason: str | None) -> None:
        self._client = client
        self.peer, self.id, self.status, self.reason = peer, id, status, reason

    def __repr__(self) -> str:
        return "<Outgoing %d to %s: %s>" % (self.id, self.peer, self.status)

    @property
    def delivered(self) -> bool:
        return self.status == DELIVERED

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def wait(self, timeout: float) -> str:
        """Pumps the client until the message is delivered or failed, at most `timeout` seconds.
        Returns the status then ("delivered", "failed", or "sent"/"queued" on timeout)."""
        self._client._wait(lambda: self.status in (DELIVERED, FAILED), timeout)
        return self.status


class Client:
    """An install's messaging: open() it, send(), receive() and ack(), groups, close()."""

    def __init__(self, inst: HostInstall, link: HostLink, on_status: StatusCallback | None = None,
                 max_unacked: int = MAX_UNACKED) -> None:
        """Prefer Client.open(). inst: the HostInstall; link: its HostLink, connected."""
        self.install = inst
        self.max_unacked = max_unacked
        self._lock = threading.RLock()
        self._on_status = on_status
        self._outgoing: dict[tuple[str, int], Outgoing] = {}
        self._inbox = RecordStore(str(inst.directory / _INBOX), _INBOX, inst.storage_key)
        self._waiting = [int(n) for n in self._inbox.names() if n.isdigit()]  # not acknowledged, oldest first
        self._next_id = (self._waiting[-1] if self._waiting else 0) + 1
        self._handed: set[int] = set()  # handed out by receive() in this run, not acknowledged
        self._joined: set[str] = set()
        self._prekeys = len(inst.client.keystore.one_time_prekey_publics())
        self._refreshed = time.monotonic()
        self._closed = False
        self.failed = 0  # received messages that could not be used (typed errors), dropped
        self.messenger = Messenger(inst, link, on_message=self._on_pairwise, on_status=self._status,
                                   on_group=self._on_group)
        for seq, sender, wire in inst.spooled():  # delivered to an earlier run, not handled yet
            group = inst.spooled_group(sender)
            if group is None:
                self.messenger.handle(sender, wire)
            else:
                self._on_group(group, wire)
            inst.unspool(seq)
        for group in inst.known_groups():
            self._join(group)
        self.messenger.flush()  # receipts for the spooled ones, and what the outbox holds

    @classmethod
    def open(cls, directory: str | os.PathLike[str], broker: str | None = None, tls_ca: str | None = None, *,
             timeout: float = 30.0, on_status: StatusCallback | None = None,
             max_unacked: int = MAX_UNACKED) -> Client:
        """Opens the install in `directory` (made by `e2ee client init` or Client.enroll) and
        connects to its broker with its own credentials and persistent session: what was sent
        while it was offline arrives now.

        broker: "HOST:PORT" instead of the address the service gave; tls_ca: connect over TLS
        trusting this CA file; timeout: seconds to wait for the broker (connect, each publish);
        on_status(peer, id, status, reason): every status change of a sent message, also of
        those queued in earlier runs. The revocation list is refreshed from the service (a
        warning when it cannot be reached: the stored one is used).

        Raises InstallError (no install, NoBrokerCredentials) or TransportError (the broker is
        unreachable or refuses the credentials)."""
        inst = HostInstall.open(Path(directory).expanduser())
        _refresh(inst)
        link = inst.link(broker, timeout=timeout, tls_ca=tls_ca).connect()
        try:
            return cls(inst, link, on_status=on_status, max_unacked=max_unacked)
        except BaseException:
            link.close()
            inst.spool_rest(link)
            raise

    @classmethod
    def enroll(cls, directory: str | os.PathLike[str], url: str, device_id: str, fleet: str, claim: str,
               broker: str | None = None, tls_ca: str | None = None, *, timeout: float = 30.0,
               on_status: StatusCallback | None = None) -> Client:
        """A new install in `directory` (keys made here, enrolled with the operator's claim at the
        service `url`, as `e2ee client init` does), opened. Raises ApiError when the service
        refuses the claim, InstallError when the directory holds an install already or the
        service gave no broker credentials."""
        inst = HostInstall.init(Path(directory).expanduser(), url, device_id, fleet, claim)
        inst.broker_credentials()
        link = inst.link(broker, timeout=timeout, tls_ca=tls_ca).connect()
        try:
            inst.open_mailbox(link)  # the broker keeps its inbox from now on
        except BaseException:
            link.close()
            inst.spool_rest(link)
            raise
        try:
            return cls(inst, link, on_status=on_status)
        except BaseException:
            link.close()
            inst.spool_rest(link)
            raise

    def __repr__(self) -> str:
        return "<Client %s%s>" % (self.device_id, " closed" if self._closed else "")

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def device_id(self) -> str:
        return self.install.device_id

    def _check(self) -> None:
        if self._closed:
            raise ClientClosed("the client of %s is closed" % self.device_id)

    # --- sending ---

    def send(self, peer: str, data: bytes) -> Outgoing:
        """Queues `data` (at most 4083 bytes) for `peer` in the install's outbox (on disk before
        this returns) and publishes what the window allows; a session is started from the
        service's bundle when there is none. Returns the message's Outgoing handle.

        Raises OutboxFull (10,080 messages to `peer` wait for a receipt), DeliveryError (too
        large), ClientError (`peer` is this install). A peer that is revoked or unknown is not
        an exception: the handle says failed, with the reason."""
        with self._lock:
            self._check()
            if peer == self.device_id:
                raise ClientError("%s cannot send to itself" % peer)
            seq = self.messenger.send(peer, bytes(data))
            status, reason = self.messenger.status(peer, seq)
            out = Outgoing(self, peer, seq, status, reason)
            if status not in (DELIVERED, FAILED):
                self._outgoing[(peer, seq)] = out
            return out

    def pending(self, peer: str) -> int:
        """Messages to `peer` waiting for its receipt (sent or not yet)."""
        with self._lock:
            self._check()
            return self.messenger.pending(peer)

    def _status(self, peer: str, seq: int, status: str, reason: str | None) -> None:
        out = self._outgoing.get((peer, seq))
        if out is not None:
            out.status, out.reason = status, reason
            if status in (DELIVERED, FAILED):
                del self._outgoing[(peer, seq)]
        if self._on_status is not None:
            self._on_status(peer, seq, status, reason)

    # --- receiving ---

    def _store(self, sender: str, group: str | None, data: bytes) -> None:
        """Writes a received message to the inbox: before its receipt goes, so it is never lost."""
        s, g = sender.encode(), (group or "").encode()
        record = (struct.pack(">BIB", _INBOX_FORMAT, int(time.time()) & 0xFFFFFFFF, len(s)) + s
                  + bytes((len(g),)) + g + data)
        self._inbox.put("%010d" % self._next_id, record)
        self._waiting.append(self._next_id)
        self._next_id += 1

    def _on_pairwise(self, sender: str, data: bytes) -> None:
        try:
            group = self.install.accept_distribution(sender, data)
        except sender_key.SenderKeyError as e:  # damaged, or from a non-member: dropped (docs/groups.md)
            self.failed += 1
            log.warning("%s: sender key distribution from %s refused: %s", self.device_id, sender, type(e).__name__)
            return
        if group is not None:  # a member's sender key: installed, not shown; its topic joined
            self.install.save()
            self._join(group)
            return
        self._store(sender, None, data)

    def _on_group(self, group: str, wire: bytes) -> None:
        try:
            opened = self.install.decrypt_group(group, wire)
        except sender_key.Duplicate:
            self.messenger.duplicates += 1
            return
        except MESSAGE_ERRORS as e:
            self.failed += 1
            log.warning("%s: dropped a message of group %s: %s", self.device_id, group, type(e).__name__)
            return
        if opened is not None:  # None: this install's own message, back from the broker
            self._store(opened[0], group, opened[1])

    def _load(self, id: int) -> Message:
        data = bytes(self._inbox.get("%010d" % id))
        if data[0] != _INBOX_FORMAT:
            raise InstallError("inbox record %d has unknown format %d" % (id, data[0]))
        when, n = struct.unpack_from(">IB", data, 1)
        sender = data[6:6 + n].decode()
        m = data[6 + n]
        group = data[7 + n:7 + n + m].decode() or None
        return Message(self, id, sender, group, data[7 + n + m:], when)

    def pump(self, wait: float = 0.0) -> int:
        """Publishes what is due (receipts, resends, queued messages) and takes in what has
        arrived, waiting up to `wait` seconds for something to arrive (it returns after the first
        batch). receive() and Outgoing.wait() call it; an application that only sends calls it
        (or wait()) to collect receipts. The lock is held only while envelopes are handled, not
        while waiting for them. Returns the number of envelopes handled."""
        deadline = time.monotonic() + wait
        handled = 0
        while True:
            with self._lock:
                self._check()
                if time.monotonic() - self._refreshed >= REFRESH_EVERY:  # revocations during a long run
                    self._refreshed = time.monotonic()
                    _refresh(self.install)
                room = self.max_unacked - len(self._waiting)
                if room > 0:
                    handled += self.messenger.pump(0.0, limit=room)
                else:  # the application is behind: the rest waits with the broker and the senders
                    self.messenger.flush()
            left = deadline - time.monotonic()
            if left <= 0 or handled:
                return handled
            time.sleep(min(_POLL, left))

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.pump(min(0.2, left))
        return done()

    def wait(self, timeout: float) -> None:
        """Pumps for `timeout` seconds (receipts, resends, messages into the inbox)."""
        self._wait(lambda: False, timeout)

    def get(self, timeout: float | None = None) -> Message | None:
        """The oldest message not acknowledged and not handed out in this run, waiting up to
        `timeout` seconds for one (None: as long as it takes); None when none came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                self._check()
                for id in self._waiting:
                    if id not in self._handed:
                        self._handed.add(id)
                        return self._load(id)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self.pump(0.2 if left is None else min(0.2, left))

    def receive(self, timeout: float | None = None) -> Iterator[Message]:
        """Messages, oldest first: first those received in earlier runs and not acknowledged,
        then what arrives. Ends after `timeout` seconds without a new message (None: never).
        Each is handed out once per run: ack() it when handled (else it comes back at the next
        open), or release() it to get it again in this run."""
        while True:
            message = self.get(timeout)
            if message is None:
                return
            yield message

    def serve(self, handler: Callable[[Message], None], timeout: float | None = None) -> int:
        """Calls handler(message) for each message as receive() hands them out and acknowledges
        it when the handler returns; a handler that raises leaves its message unacknowledged (it
        comes back at the next open) and the exception propagates. Returns the number handled."""
        handled = 0
        for message in self.receive(timeout):
            handler(message)
            message.ack()
            handled += 1
        return handled

    def ack(self, message: Message) -> None:
        """Deletes the message from the install's inbox (idempotent); thread-safe."""
        with self._lock:
            self._check()
            if message.id in self._waiting:
                try:
                    self._inbox.delete("%010d" % message.id)
                except NotFound:
                    pass
                self._waiting.remove(message.id)
            self._handed.discard(message.id)

    def release(self, message: Message) -> None:
        """Hands `message` out again in this run (not acknowledged)."""
        with self._lock:
            self._handed.discard(message.id)

    def _is_acked(self, id: int) -> bool:
        with self._lock:
            return id not in self._waiting

    def unacknowledged(self) -> int:
        """Messages in the install's inbox waiting for ack()."""
        with self._lock:
            return len(self._waiting)

    # --- groups (docs/groups.md) ---

    def _join(self, group: str) -> bool:
        if group in self._joined:
            return True
        try:
            if not self.messenger.link.join_group(group):
                log.warning("%s: the broker refused the topic of group %s", self.device_id, group)
                return False
        except TransportError as e:
            log.warning("%s: group %s not joined now: %s", self.device_id, group, e)
            return False
        self.install.remember_group(group)
        self._joined.add(group)
        return True

    def join_group(self, group: str, members: list[str] | None = None) -> None:
        """Subscribes the install's persistent session to `group`'s topic (its messages wait at
        the broker while the client is closed). `members`: the other members, the only ones
        whose sender keys are accepted (remembered). Raises NotGroupMember when the broker
        refuses the topic (the operator has not added this install: `e2ee groups add`)."""
        with self._lock:
            self._check()
            if members is not None:
                self.install.set_group_members(group, list(members))
                self.install.save()
            if not self._join(group):
                raise NotGroupMember("the broker refused the topic of group %s to %s: the operator has not added "
                                     "it (e2ee groups add --fleet %s --group %s %s)" % (
                                         group, self.device_id, self.install.settings["fleet"], group,
                                         self.device_id))

    def send_group(self, group: str, data: bytes, members: list[str] | None = None) -> None:
        """One Sender Key message to `group` (docs/groups.md): first this install's sender key to
        each member that lacks it, through its pairwise outbox (a new key after a member left
        `members`). `members` (the other members) is needed the first time, then remembered.
        Raises ClientError without members, NotGroupMember when the broker refuses the topic,
        TransportError when the broker does not take the message, ApiError / PeerRefused when a
        member's session cannot be started."""
        with self._lock:
            self._check()
            inst = self.install
            if members is None:
                members = inst.group_members(group)
                if not members:
                    raise ClientError("the first send to group %s needs its members" % group)
            inst.ensure_certificate()
            pending = inst.set_group_members(group, list(members))
            inst.save()
            for member in pending:  # every session first: a refused member stops the send here
                if inst.needs_session(member):
                    inst.start_session(member)
            self.join_group(group)
            for member in pending:  # kept and resent until the member's receipt
                self.messenger.send(member, inst.distribution_message(group))
                inst.distributed(group, member)
                inst.save()
            wire = inst.groups.encrypt(group, bytes(data))  # the advanced chain is stored before it leaves
            self.messenger.link.send_group(group, wire)

    # --- closing ---

    def close(self) -> None:
        """Publishes what is due, disconnects, spools what the broker delivered that was not
        handled yet, and saves the install. Unacknowledged messages stay in the inbox for the
        next open. Publishes new one-time prekeys when new sessions used some and the service
        asks for them. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.messenger.close()
            if len(self.install.client.keystore.one_time_prekey_publics()) < self._prekeys:
                try:
                    if self.install.client.inventory().get("replenish"):
                        self.install.client.upload_prekeys(signed_prekey=False, one_time=_REPLENISH)
                        self.install.save()
                except ApiError as e:
                    log.warning("%s: one-time prekeys not replenished: %s", self.device_id, e)


def _refresh(inst: HostInstall) -> None:
    """The service's newest revocation list; the stored one when the service cannot be reached
    or its list does not verify (logged)."""
    try:
        inst.refresh_revocation_list()
    except (ApiError, certificate.CertificateError) as e:
        log.warning("%s: no new revocation list (%s); peers are checked against version %d", inst.device_id,
                    type(e).__name__, inst.trust.version)
