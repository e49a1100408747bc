"""Host transport over the project's broker with paho-mqtt 2 (docs/broker.md, "Host transport"):
the same topics and semantics as the device link (e2ee.transport.link): a persistent session
(clean_session False, fixed client id), its inbox and fleet revocation list at QoS 1, envelopes
framed with the sender's id. Received messages wait in bounded thread-safe queues.

connect() returns once the broker granted the subscriptions; send() once the broker acknowledged
the message (PUBACK). Every failure is a TransportError within the link's timeout; a send that
failed for want of a PUBACK may still be delivered later (at least once: the recipient's Double
Ratchet refuses a second copy)."""
from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from e2ee.protocol.envelope import MAX_ENVELOPE
from e2ee.transport import topics

__all__ = ["HostLink", "MAX_QUEUED", "TransportError", "paho_client"]

log = logging.getLogger(__name__)

# Received messages kept per queue until the application takes them: enough for any burst a
# device fleet sends a host (about 50 MB of largest envelopes); beyond it a message is dropped and
# counted (HostLink.dropped), so a peer flooding this inbox cannot exhaust the host's memory.
MAX_QUEUED = 10_000
# QoS 1 messages paho may hold while waiting for PUBACKs or a connection (a failed send stays
# there to be retried after a reconnection); beyond it send() fails at once.
MAX_OUTGOING = 1000
# paho's reconnect backoff doubles from 1 s up to this (its default, 120 s, is far too long)
MAX_RECONNECT_DELAY = 30


def paho_client(owner: Any, client_id: str, user: str, password: str, *, clean_session: bool,
                tls_ca: str | None, manual_ack: bool = False) -> mqtt.Client:
    """A paho 2 client with the project's settings (TLS trusting `tls_ca` when given, reconnect
    backoff capped at MAX_RECONNECT_DELAY, at most MAX_OUTGOING queued QoS 1 messages) calling
    `owner`'s _on_message, _on_connect, _on_subscribe and _on_disconnect."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                         manual_ack=manual_ack)
    client.username_pw_set(user, password)
    if tls_ca is not None:
        client.tls_set(ca_certs=tls_ca)
    client.reconnect_delay_set(1, MAX_RECONNECT_DELAY)
    client.max_queued_messages_set(MAX_OUTGOING)
    client.on_message = owner._on_message
    client.on_connect = owner._on_connect
    client.on_subscribe = owner._on_subscribe
    client.on_disconnect = owner._on_disconnect
    client.on_socket_open = _no_delay
    return client


def _no_delay(client: Any, userdata: Any, sock: Any) -> None:
    """TCP_NODELAY on the broker connection: without it a PUBLISH written while the PUBACK of a
    received message is not yet acknowledged waits for the broker's delayed ACK (about 40 ms;
    a sender waiting for each PUBACK sent 25 messages a second)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket
        pass


class TransportError(RuntimeError):
    """The broker refused, did not answer within the timeout, or the connection is down."""


class HostLink:
    def __init__(self, host: str, port: int, fleet: str, device_id: str, password: str, timeout: float = 10.0,
                 tls_ca: str | None = None, max_queued: int = MAX_QUEUED) -> None:
        """tls_ca: connect over TLS trusting this CA file (hostname checked against `host`).
        timeout: seconds connect() waits for CONNACK and SUBACK, send() for the connection and
        the PUBACK, receive() for a message. max_queued: bound of each receive queue."""
        self.fleet, self.device_id, self.timeout = fleet, device_id, timeout
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue(max_queued)
        self.crls: queue.Queue[bytes] = queue.Queue(max_queued)
        self.group_messages: queue.Queue[tuple[str, bytes]] = queue.Queue(max_queued)  # (group, wire)
        self.dropped = 0  # received messages dropped because their queue was full
        self.connects = 0  # connections made (subscriptions granted): a change means a reconnect
        self._groups: set[str] = set()
        self._lock = threading.Lock()  # orders subscribe() and its SUBACK callback
        self._subacks: dict[int, tuple[threading.Event, list[Any]]] = {}
        self._connect_mid: int | None = None  # the SUBSCRIBE of the current connection
        self._connect_topics: list[tuple[str, int]] = []
        self._online = threading.Event()  # connected, inbox and crl subscriptions granted
        self._answered = threading.Event()  # the first CONNACK (or SUBACK) came
        self._refused: str | None = None
        self._closing = False
        self._host, self._port = host, port
        self._client = paho_client(self, device_id, device_id, password, clean_session=False, tls_ca=tls_ca)

    def __repr__(self) -> str:
        return "<HostLink %s>" % self.device_id

    # --- paho's network thread ---

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._refused = "the broker refused %s: CONNACK %s" % (self.device_id, rc)
            self._answered.set()
            return
        # (re)subscribe on every connect: paho reconnects by itself
        with self._lock:
            self._connect_topics = self._wanted()
            result, self._connect_mid = client.subscribe(self._connect_topics)
        if result != mqtt.MQTT_ERR_SUCCESS:
            log.warning("%s: SUBSCRIBE not sent (%s)", self.device_id, mqtt.error_string(result))

    def _wanted(self) -> list[tuple[str, int]]:
        return ([(topics.inbox(self.fleet, self.device_id), 1), (topics.crl(self.fleet), 1)]
                + [(topics.group(self.fleet, g), 1) for g in sorted(self._groups)])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._lock:  # waits until subscribe() has returned its message id
            waiter = self._subacks.pop(mid, None)
            if waiter is not None:  # join_group's SUBACK
                waiter[1].extend(codes)
                waiter[0].set()
                return
            if mid != self._connect_mid:
                return
            refused = [topic for (topic, _), code in zip(self._connect_topics, codes) if code.is_failure]
            group_prefix = topics.group(self.fleet, "")
            for topic in refused:
                if topic.startswith(group_prefix):
                    self._groups.discard(topic[len(group_prefix):])  # no longer a member: not asked again
        if topics.inbox(self.fleet, self.device_id) in refused or topics.crl(self.fleet) in refused:
            self._refused = "the broker refused the subscription to %s (SUBACK 0x80)" % ", ".join(refused)
            log.error("%s: %s", self.device_id, self._refused)
        else:
            self._refused = None
            self.connects += 1
            self._online.set()
        self._answered.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._online.clear()
        if not self._closing:
            log.warning("%s lost its broker connection (%s); reconnecting", self.device_id, rc)

    def _put(self, q: queue.Queue[Any], item: Any) -> None:
        try:
            q.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("%s: receive queue full (%d): message dropped (%d so far)", self.device_id,
                            q.maxsize, self.dropped)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if msg.topic == topics.crl(self.fleet):
            self._put(self.crls, bytes(msg.payload))
            return
        group_prefix = topics.group(self.fleet, "")
        if msg.topic.startswith(group_prefix):
            self._put(self.group_messages, (msg.topic[len(group_prefix):], bytes(msg.payload)))
            return
        try:
            sender, envelope = topics.unframe(msg.payload)
        except ValueError:
            return
        self._put(self.inbox, (sender, bytes(envelope)))

    # --- the application's side ---

    def connect(self) -> HostLink:
        """Connects and subscribes to the inbox and the fleet's revocation list. Raises
        TransportError when the broker is unreachable, refuses the client (CONNACK) or a
        subscription (SUBACK 0x80), or does not answer within the timeout."""
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except (OSError, ValueError) as e:  # refused, unreachable, TLS handshake (ssl.SSLError)
            raise TransportError("no connection to the broker at %s:%d: %s" % (
                self._host, self._port, type(e).__name__)) from None
        self._client.loop_start()
        if not self._answered.wait(self.timeout) or self._refused is not None:
            why = self._refused or "no answer from the broker at %s:%d within %.0f s" % (
                self._host, self._port, self.timeout)
            self.close()
            raise TransportError(why)
        return self

    @property
    def online(self) -> bool:
        """Connected, with the inbox and revocation list subscriptions granted."""
        return self._online.is_set()

    def _publish(self, topic: str, payload: bytes, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        if not self._online.wait(self.timeout):
            raise TransportError("%s not sent: %s is not connected to the broker (%s)" % (
                what, self.device_id, self._refused or "waited %.0f s" % self.timeout))
        info = self._client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        except (RuntimeError, ValueError) as e:  # not connected any more, paho's queue full
            raise TransportError("%s not sent: %s" % (what, e)) from None
        if not info.is_published():
            raise TransportError("%s: no PUBACK from the broker within %.0f s (it may still be delivered)"
                                 % (what, self.timeout))

    def send(self, peer: str, envelope: bytes, fleet: str | None = None) -> None:
        """Publishes an envelope to `peer`'s inbox (QoS 1) and returns once the broker has it.
        Raises TransportError when the envelope exceeds MAX_ENVELOPE, the link is down for the
        whole timeout, or no PUBACK came within it."""
        if len(envelope) > MAX_ENVELOPE:
            raise TransportError("envelope of %d bytes exceeds MAX_ENVELOPE (%d)" % (len(envelope), MAX_ENVELOPE))
        self._publish(topics.inbox(fleet or self.fleet, peer), topics.frame(self.device_id, envelope),
                      "envelope for %s" % peer)

    def join_group(self, group: str) -> bool:
        """Subscribes to the group topic; False when the broker refuses (not a member)."""
        self._groups.add(group)
        done = threading.Event()
        granted: list[Any] = []
        deadline = time.monotonic() + self.timeout
        while True:  # a role change makes the broker drop the session: wait for the reconnect
            with self._lock:
                rc, mid = self._client.subscribe(topics.group(self.fleet, group), qos=1)
                if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                    self._subacks[mid] = (done, granted)
                    break
            if time.monotonic() > deadline:
                self._groups.discard(group)
                raise TransportError("not connected: cannot join group %s" % group)
            time.sleep(0.1)
        if not done.wait(max(0.0, deadline - time.monotonic())):
            with self._lock:
                self._subacks.pop(mid, None)
            raise TransportError("no SUBACK for group %s" % group)
        if granted[0].is_failure:
            self._groups.discard(group)
            return False
        return True

    def send_group(self, group: str, wire: bytes) -> None:
        """One publish for the whole group (a Sender Key message, docs/groups.md); TransportError
        as for send()."""
        self._publish(topics.group(self.fleet, group), wire, "group message for %s" % group)

    def receive(self, timeout: float | None = None) -> tuple[str, bytes]:
        try:
            return self.inbox.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            raise TransportError("no message for %s within %.0f s" % (
                self.device_id, self.timeout if timeout is None else timeout)) from None

    def close(self) -> None:
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> HostLink:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
