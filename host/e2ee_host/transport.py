"""Host transport over the project's broker with paho-mqtt 2 (docs/broker.md, "Host transport"):
the same topics and semantics as the device link (e2ee.transport.link): a persistent session
(clean_session False, fixed client id), its inbox and fleet revocation list at QoS 1, envelopes
framed with the sender's id. Received messages wait in a thread-safe queue."""
from __future__ import annotations

import queue
import threading
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
            client.subscribe([(topics.inbox(self.fleet, self.device_id), 1), (topics.crl(self.fleet), 1)])
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if msg.topic == topics.crl(self.fleet):
            self.crls.put(bytes(msg.payload))
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
