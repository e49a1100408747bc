"""Host transport over the project's broker with paho-mqtt 2 (docs/broker.md, "Host transport"):
the same topics and semantics as the device link (e2ee.transport.link): a persistent session
(clean_session False, fixed client id), its inbox and fleet revocation list at QoS 1, envelopes
framed with the sender's id. Received messages wait in a thread-safe queue."""
from __future__ import annotations

import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from e2ee.transport import topics

__all__ = ["HostLink", "TransportError"]


class TransportError(RuntimeError):
    pass


class HostLink:
    def __init__(self, host: str, port: int, fleet: str, device_id: str, password: str, timeout: float = 10.0) -> None:
        self.fleet, self.device_id, self.timeout = fleet, device_id, timeout
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.crls: queue.Queue[bytes] = queue.Queue()
        self.group_messages: queue.Queue[tuple[str, bytes]] = queue.Queue()  # (group, wire)
        self._groups: set[str] = set()
        self._lock = threading.Lock()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, clean_session=False)
        self._client.username_pw_set(device_id, password)
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._connected = threading.Event()
        self._refused: Any = None
        self._host, self._port = host, port

    def __repr__(self) -> str:
        return "<HostLink %s>" % self.device_id

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._refused = rc
        else:  # (re)subscribe on every connect: paho reconnects by itself
            client.subscribe([(topics.inbox(self.fleet, self.device_id), 1), (topics.crl(self.fleet), 1)]
                             + [(topics.group(self.fleet, g), 1) for g in sorted(self._groups)])
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if msg.topic == topics.crl(self.fleet):
            self.crls.put(bytes(msg.payload))
            return
        group_prefix = topics.group(self.fleet, "")
        if msg.topic.startswith(group_prefix):
            self.group_messages.put((msg.topic[len(group_prefix):], bytes(msg.payload)))
            return
        try:
            sender, envelope = topics.unframe(msg.payload)
        except ValueError:
            return
        self.inbox.put((sender, bytes(envelope)))

    def connect(self) -> HostLink:
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        if not self._connected.wait(self.timeout):
            raise TransportError("no answer from the broker at %s:%d" % (self._host, self._port))
        if self._refused is not None:
            self.close()
            raise TransportError("the broker refused %s: %s" % (self.device_id, self._refused))
        return self

    def send(self, peer: str, envelope: bytes, fleet: str | None = None) -> None:
        info = self._client.publish(topics.inbox(fleet or self.fleet, peer), topics.frame(self.device_id, envelope),
                                    qos=1)
        info.wait_for_publish(self.timeout)

    def join_group(self, group: str) -> bool:
        """Subscribes to the group topic; False when the broker refuses (not a member)."""
        self._groups.add(group)
        done = threading.Event()
        granted: list[Any] = []
        wanted: list[int] = []

        def on_subscribe(client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
            with self._lock:  # waits until subscribe() below has returned its message id
                if wanted and mid == wanted[0]:  # the SUBACK of this subscription, not of another
                    granted.extend(codes)
                    done.set()
        deadline = time.monotonic() + self.timeout
        while not wanted:  # a role change makes the broker drop the session: wait for the reconnect
            with self._lock:
                self._client.on_subscribe = on_subscribe
                rc, mid = self._client.subscribe(topics.group(self.fleet, group), qos=1)
                if rc == mqtt.MQTT_ERR_SUCCESS:
                    wanted.append(mid)
            if not wanted:
                if time.monotonic() > deadline:
                    raise TransportError("not connected: cannot join group %s" % group)
                time.sleep(0.1)
        if not done.wait(self.timeout):
            raise TransportError("no SUBACK for group %s" % group)
        return not granted[0].is_failure

    def send_group(self, group: str, wire: bytes) -> None:
        """One publish for the whole group (a Sender Key message, docs/groups.md)."""
        self._client.publish(topics.group(self.fleet, group), wire, qos=1).wait_for_publish(self.timeout)

    def receive(self, timeout: float | None = None) -> tuple[str, bytes]:
        try:
            return self.inbox.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            raise TransportError("no message for %s within %.0f s" % (
                self.device_id, self.timeout if timeout is None else timeout)) from None

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def __enter__(self) -> HostLink:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
