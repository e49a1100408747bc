"""End-to-end delivery for a host install over its broker link (docs/protocol.md §8): what the
`e2ee client` commands send and receive through, and what an application embeds.

    with Messenger.open(HostInstall.open(dir), on_message=print) as m:
        seq = m.send("valve-3", b"open valve 7")      # kept in the outbox until valve-3's receipt
        m.pump(5.0)                                     # receipts, resends, resets, messages in
        m.status("valve-3", seq)                        # ("delivered", None) | ("sent", ...) | ...

Every message sent is reported: sent (the broker has it), delivered (the recipient's encrypted
receipt named it) or failed with a reason (no receipt within 7 days, the peer revoked or gone);
a full outbox refuses at send() (OutboxFull). Received messages reach on_message once per
message id, also when the sender resends them after a reconnect or a session reset. Closing
spools whatever the broker handed over but nobody handled, so nothing received is lost; so
does a handler that raises (an envelope whose handling failed goes to the spool first).

e2ee_host.sdk.Client is the application's interface on top of it (a durable inbox with explicit
acknowledgements, delivery handles, groups); not thread-safe by itself: one thread at a time.
"""
from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import Any

from e2ee.protocol import delivery as _delivery
from e2ee.protocol import envelope, keys, ratchet, sender_key, session
from e2ee_host.transport import TransportError

__all__ = ["MESSAGE_ERRORS", "Messenger"]

log = logging.getLogger(__name__)

# What a message this install cannot use raises (audit finding 6): it is acknowledged, counted and
# dropped (its type logged, never its content). Store errors and OSError are the install's own
# trouble and stop the caller.
MESSAGE_ERRORS: tuple[type[Exception], ...] = (
    session.MESSAGE_ERRORS + (_delivery.DeliveryError, ratchet.StateDecodeError, envelope.EnvelopeError,
                              keys.KeyFormatError, sender_key.SenderKeyError, UnicodeDecodeError))
_STATUSES_KEPT = 100_000  # (peer, seq) statuses remembered in memory for status()
# What report() counts, and the most of each one report carries (the service's MAX_COUNT; the
# rest waits for the next report).
REPORTED = ("delivered", "undelivered", "received", "decrypt_failures")
REPORT_MAX = 10_000


class Messenger:
    def __init__(self, inst: Any, link: Any, on_message: Callable[[str, bytes], None] | None = None,
                 on_status: Callable[[str, int, str, str | None], None] | None = None,
                 on_group: Callable[[str, bytes], None] | None = None) -> None:
        """inst: a HostInstall; link: its HostLink, connected. on_message(sender, payload) once
        per message (default: kept in `received`); on_status(peer, seq, status, reason);
        on_group(group, wire): each message of a joined group (None: pump() leaves them in the
        link's queue, and close() spools them)."""
        self.inst, self.link = inst, link
        self._on_group = on_group
        self.received: list[tuple[str, bytes]] = []
        self.duplicates = self.failed = 0
        self.last_error: str | None = None
        self._on_message = on_message
        self._on_status = on_status
        self._statuses: dict[tuple[str, int], tuple[str, str | None]] = {}
        # counts since the last report() (POST /reports): no peer, id or content, only numbers
        self._unreported = dict.fromkeys(REPORTED, 0)
        self.delivery = inst.delivery(on_status=self._status)
        self._connects = link.connects

    @classmethod
    def open(cls, inst: Any, broker: str | None = None, timeout: float = 10.0, tls_ca: str | None = None,
             **kw: Any) -> Messenger:
        """The install's link to its broker, connected, with a Messenger on it."""
        return cls(inst, inst.link(broker, timeout=timeout, tls_ca=tls_ca).connect(), **kw)

    def __repr__(self) -> str:
        return "<Messenger %s>" % self.inst.device_id

    def __enter__(self) -> Messenger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _status(self, peer: str, seq: int, status: str, reason: str | None) -> None:
        if len(self._statuses) >= _STATUSES_KEPT:
            self._statuses.pop(next(iter(self._statuses)))
        self._statuses[(peer, seq)] = (status, reason)
        if status == _delivery.DELIVERED:
            self._unreported["delivered"] += 1
        if status == _delivery.FAILED:
            self._unreported["undelivered"] += 1
            log.warning("message %d to %s failed: %s", seq, peer, reason)
        if self._on_status is not None:
            self._on_status(peer, seq, status, reason)

    def status(self, peer: str, seq: int) -> tuple[str, str | None]:
        """The last status of message `seq` to `peer` this run: ("queued", None) while it waits in
        the outbox unsent, else sent / delivered / failed with its reason."""
        return self._statuses.get((peer, seq), ("queued", None))

    def send(self, peer: str, data: bytes) -> int:
        """Queues `data` for `peer` (in the outbox before this returns) and sends what the window
        allows. Returns the message id. OutboxFull / DeliveryError when it cannot be queued."""
        seq = self.delivery.send(peer, data)
        self.flush()
        return int(seq)

    def pending(self, peer: str) -> int:
        return int(self.delivery.pending(peer))

    def flush(self) -> int:
        """Receipts, reset requests and the data each window allows, to the broker. A link that is
        down stops it (at once when it is known to be down, paho reconnecting: no wait for the
        link's timeout): what was not sent stays due."""
        if not self.link.online:
            return 0
        if self.link.connects != self._connects:  # reconnected: messages on the way may be gone
            self._connects = self.link.connects
            self.delivery.reconnected()
        try:
            return int(self.delivery.flush(self.link.send))
        except TransportError as e:
            log.info("%s: flush stopped: %s", self.inst.device_id, e)
            return 0

    def handle(self, sender: str, wire: bytes) -> None:
        """One inbox envelope: data to on_message once, receipts and reset requests to the outbox.
        A message that cannot be used is counted (failed / duplicates) and dropped."""
        if self.inst.is_probe(sender, wire):
            return
        try:
            self.delivery.handle(sender, wire, self._deliver)
        except ratchet.DuplicateMessage:
            self.duplicates += 1
        except MESSAGE_ERRORS as e:
            self.failed += 1
            self._unreported["decrypt_failures"] += 1
            self.last_error = type(e).__name__
            log.warning("%s: dropped a message from %r: %s", self.inst.device_id, sender, self.last_error)

    def _deliver(self, sender: str, payload: Any) -> None:
        data = bytes(payload)
        self._unreported["received"] += 1
        if self._on_message is None:
            self.received.append((sender, data))
        else:
            self._on_message(sender, data)

    def _next(self) -> tuple[str | None, str, bytes] | None:
        """(None, sender, envelope) from the inbox, else (group, "", wire) from a joined group
        (when on_group is set), else None. The inbox goes first: a sender key distribution is
        handled before the group messages its sender published after it."""
        try:
            sender, wire = self.link.inbox.get_nowait()
            return None, sender, wire
        except queue.Empty:
            pass
        if self._on_group is not None:
            try:
                group, wire = self.link.group_messages.get_nowait()
                return group, "", wire
            except queue.Empty:
                pass
        return None

    def _take(self, item: tuple[str | None, str, bytes]) -> None:
        group, sender, wire = item
        try:
            if group is None:
                self.handle(sender, wire)
            else:
                assert self._on_group is not None
                self._on_group(group, wire)
        except BaseException:  # the install's own failure (store, disk) or an interrupt: kept, not lost
            self.inst.spool([(sender if group is None else self.inst.group_spool_sender(group), wire)])
            raise

    def pump(self, wait: float = 0.0, limit: int | None = None) -> int:
        """Flushes, then handles what arrives within `wait` seconds (flushing after each batch, so
        receipts are batched), then flushes again. At most `limit` messages (None: no limit):
        the rest waits in the link's queues. Returns the number of messages handled."""
        self.flush()
        handled = 0
        deadline = time.monotonic() + wait
        flushed = time.monotonic()
        while limit is None or handled < limit:
            item = self._next()
            if item is None:
                if time.monotonic() >= deadline:
                    break
                try:  # wait for the inbox a little (group messages are looked at every 20 ms)
                    sender, wire = self.link.inbox.get(timeout=min(0.02, max(0.0, deadline - time.monotonic())))
                    item = (None, sender, wire)
                except queue.Empty:
                    if time.monotonic() - flushed >= 0.05:  # resends and probes do not wait for traffic
                        self.flush()
                        flushed = time.monotonic()
                    continue
            while item is not None:  # a batch: everything queued now
                self._take(item)
                handled += 1
                if limit is not None and handled >= limit:
                    break
                item = self._next()
            self.flush()
            flushed = time.monotonic()
        self.flush()
        return handled

    def report(self) -> dict[str, int]:
        """Sends the counts since the previous report to the service (DeviceClient.report, POST
        /reports; docs/provisioning.md "Client reports"): messages delivered (receipt back) and
        undelivered (failed), messages received, envelopes that did not decrypt. Counts only.
        Returns what was sent; when the service refuses (ApiError) they stay for the next one."""
        counts = {name: min(n, REPORT_MAX) for name, n in self._unreported.items()}
        self.inst.client.report(**counts)
        for name, n in counts.items():
            self._unreported[name] -= n
        return counts

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Pumps until done() or the timeout; returns done()."""
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self.pump(min(0.2, max(0.0, deadline - time.monotonic())))
        return done()

    def close(self) -> None:
        """Last flush, then the link closed; what it received but nobody handled is spooled."""
        self.flush()
        self.link.close()
        self.inst.spool_rest(self.link)
        self.inst.save()
