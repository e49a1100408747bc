"""The relay's JetStream source (docs/broker.md, "Relay over JetStream"): instead of the broker
admin's persistent MQTT session, the service consumes inbox traffic from a NATS JetStream stream
whose subjects are the inbox topics as nats-server's MQTT front end names them
(`e2ee/v1/<fleet>/d/<device_id>/inbox` is `e2ee.v1.<fleet>.d.<device_id>.inbox`, a "." inside a
topic level is "//"), fed by a Mosquitto bridge into nats-server's MQTT listener or by publishers
of its own. A durable pull consumer with explicit acknowledgement: each message is acknowledged
(and the server's confirmation awaited) only once RelayBridge.on_inbox stored it; when on_inbox
raises, the message and the rest of its batch are handed back (nak) and come again after a pause,
in order; one whose acknowledgement was lost (the server away) comes again after ACK_WAIT and is
acknowledged without a second store while this process remembers its stream sequence. Service replicas share the one durable consumer: each message goes to one of them.

nats-py is asyncio: the consumer runs its own event loop on a thread of its own, and calls
on_inbox there through a worker thread, so the database may make it wait."""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["JetStreamError", "JetStreamRelay", "inbox_subject", "parse_inbox_subject", "stream_config"]

log = logging.getLogger(__name__)

# messages fetched at once, and on the way unacknowledged (the consumer's max_ack_pending): one, so
# that a message whose acknowledgement was lost comes again before any later one (stream order)
BATCH = 1
# seconds a fetch waits for a message (close() waits as long at most). A message the server hands
# out just as a fetch expires is not seen and comes again after ack_wait: a longer wait makes that
# rarer
FETCH_WAIT = 2.0
ACK_WAIT = 30.0  # seconds: a message fetched and not acknowledged is delivered again after it
RETRY_MAX = 30.0  # seconds: the longest pause before a message on_inbox refused comes again
# The offline promise (docs/broker.md): 7 days of inbox traffic kept, then the oldest dropped.
MAX_AGE = 7 * 24 * 3600
RECENT = 10_000  # stored stream sequences remembered (a lost acknowledgement's message not stored twice)
MAX_MESSAGE = 9400  # the largest payload the protocol publishes (mosquitto.production.conf)


class JetStreamError(Exception):
    """The JetStream server could not be reached or refused the consumer."""


def _level(name: str) -> str:
    return name.replace(".", "//")


def inbox_subject(fleet: str, device_id: str) -> str:
    """The subject of a device's inbox, as nats-server's MQTT front end maps its topic."""
    return "e2ee.v1.%s.d.%s.inbox" % (_level(fleet), _level(device_id))


def parse_inbox_subject(subject: str) -> tuple[str, str] | None:
    """(fleet, device_id) of an inbox subject; None for any other subject."""
    parts = subject.split(".")
    if len(parts) != 6 or parts[:2] != ["e2ee", "v1"] or parts[3] != "d" or parts[5] != "inbox":
        return None
    fleet, device_id = parts[2].replace("//", "."), parts[4].replace("//", ".")
    if not fleet or not device_id or "*" in parts[2] + parts[4] or ">" in parts[2] + parts[4]:
        return None
    return fleet, device_id


def stream_config(name: str, fleets: list[str]) -> dict[str, Any]:
    """A stream for the inboxes of `fleets` sized by the offline promise: kept 7 days on disk,
    messages up to the protocol's largest payload. Keyword arguments of JetStreamContext.add_stream."""
    return {"name": name, "subjects": ["e2ee.v1.%s.d.*.inbox" % _level(f) for f in fleets],
            "max_age": MAX_AGE, "max_msg_size": MAX_MESSAGE, "storage": "file"}


class JetStreamRelay:
    """Consumes `stream` with the durable pull consumer `durable` at `url` and hands every inbox
    message to on_inbox(fleet, device_id, payload). start() returns once the consumer is bound
    (JetStreamError otherwise); close() lets the message being stored finish and be acknowledged."""

    def __init__(self, url: str, stream: str, durable: str, on_inbox: Callable[[str, str, bytes], None],
                 timeout: float = 10.0, ack_wait: float = ACK_WAIT) -> None:
        self.url, self.stream, self.durable = url, stream, durable
        self.ack_wait = ack_wait
        self._on_inbox = on_inbox
        self._timeout = timeout
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._failure: str | None = None
        self._thread: threading.Thread | None = None
        self.stored = 0  # messages handed to on_inbox and acknowledged since the start
        # stream sequences of the last RECENT messages stored: one that comes again because its
        # acknowledgement was lost (the server restarted meanwhile) is acknowledged, not stored again
        self._recent: set[int] = set()
        self._order: collections.deque[int] = collections.deque()

    def __repr__(self) -> str:
        return "<JetStreamRelay %s %s/%s>" % (self.url, self.stream, self.durable)

    def start(self) -> JetStreamRelay:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="e2ee-relay-jetstream",
                                        daemon=True)
        self._thread.start()
        if not self._bound.wait(self._timeout) or self._failure:
            self.close()
            raise JetStreamError("no JetStream consumer %s on %s: %s" % (
                self.durable, self.stream, self._failure or "no answer within %.0f s" % self._timeout))
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._timeout + self.ack_wait)

    def _remember(self, seq: int) -> None:
        self._recent.add(seq)
        self._order.append(seq)
        if len(self._order) > RECENT:
            self._recent.discard(self._order.popleft())

    async def _run(self) -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        try:
            nc = await nats.connect(self.url, connect_timeout=self._timeout, max_reconnect_attempts=-1,
                                    reconnect_time_wait=1)
            js = nc.jetstream()
            # made once (the same configuration again is no change), then shared by every replica;
            # one message on the way at a time: a lost acknowledgement's message comes again before
            # any later one, so the relay stores in stream order
            await js.add_consumer(self.stream, ConsumerConfig(
                durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.ack_wait, max_ack_pending=BATCH))
            sub = await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        except Exception as e:  # unreachable, no such stream, refused: the type says which
            self._failure = type(e).__name__
            self._bound.set()
            return
        self._bound.set()
        pause = 0.5
        try:
            while not self._stop.is_set():
                try:
                    batch = await sub.fetch(BATCH, timeout=FETCH_WAIT)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):  # nothing within the wait
                    continue
                except Exception as e:  # the connection away: nats-py reconnects
                    log.warning("relay (JetStream): fetch failed: %s", type(e).__name__)
                    await asyncio.sleep(0.5)
                    continue
                for i, msg in enumerate(batch):
                    where = parse_inbox_subject(msg.subject)
                    seq = msg.metadata.sequence.stream
                    try:
                        if where is None:  # not an inbox: never ours to store
                            await msg.term()
                            continue
                        if seq not in self._recent:  # else: stored, its acknowledgement was lost
                            try:
                                await asyncio.to_thread(self._on_inbox, where[0], where[1], msg.data)
                            except Exception as e:
                                log.warning("relay (JetStream): storing a message failed: %s; again in %.1f s",
                                            type(e).__name__, pause)
                                for later in batch[i:]:  # the rest comes again after it, in order
                                    await later.nak(delay=pause)
                                pause = min(pause * 2, RETRY_MAX)
                                break
                            self._remember(seq)
                        await msg.ack_sync()  # the server has the acknowledgement before the next one
                    except Exception as e:  # the server away: unacknowledged ones come again after ack_wait
                        log.warning("relay (JetStream): acknowledgement failed: %s", type(e).__name__)
                        break
                    self.stored += 1
                    pause = 0.5
        finally:  # every acknowledgement was confirmed already: nothing to drain (a drain of a pull
            await nc.close()  # subscription waits out its 30 s timeout)
