# The device's link to the broker (docs/broker.md, "Device transport"): connects with its broker
# credentials and a persistent session (clean_session False, QoS 1), so messages sent while it was
# offline arrive when it comes back; reconnects with exponential backoff and jitter; subscribes to
# its inbox and its fleet's revocation list again after each reconnect; keeps the connection alive
# with PINGREQ. At-least-once delivery can hand a message over twice (a PUBACK lost with the
# connection): the Double Ratchet refuses the second copy (DuplicateMessage), so each message is
# decrypted once.
#
# The MQTT client class comes in by injection: micropython-lib's umqtt.simple.MQTTClient on a
# board, or e2ee.transport.mqtt.MQTTClient (the same API).
import time

from e2ee.transport import topics

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

BACKOFF_FIRST_MS = const(500)
BACKOFF_MAX_MS = const(30000)


def _ticks():
    return time.ticks_ms() if hasattr(time, "ticks_ms") else int(time.time() * 1000)


def _elapsed(since):
    return time.ticks_diff(_ticks(), since) if hasattr(time, "ticks_diff") else _ticks() - since


class Link:
    # on_message(sender, envelope) for inbox messages; on_crl(data) for the revocation list.
    def __init__(self, client_class, server, port, fleet, device_id, password, on_message, on_crl=None,
                 keepalive=60, rng=None):
        self.fleet = fleet
        self.device_id = device_id
        self.keepalive = keepalive
        self._client_class = client_class
        self._args = (device_id, server, port, device_id, password, keepalive)
        self._on_message = on_message
        self._on_crl = on_crl
        self._rng = rng
        self.client = None
        self.connects = 0
        self.delivered = 0
        self._last_io = 0

    def __repr__(self):
        return "<Link %s %s>" % (self.device_id, "up" if self.client else "down")

    def _deliver(self, topic, payload):
        self.delivered += 1
        topic = topic.decode() if isinstance(topic, (bytes, bytearray)) else topic
        if topic == topics.crl(self.fleet):
            if self._on_crl:
                self._on_crl(payload)
            return
        try:
            sender, envelope = topics.unframe(payload)
        except ValueError:
            return  # not ours: dropped (the broker's ACL lets only fleet members write here)
        self._on_message(sender, envelope)

    # Connects (once); raises OSError or the client's exception when the broker refuses.
    def connect(self):
        client = self._client_class(*self._args)
        client.set_callback(self._deliver)
        client.connect(clean_session=False)
        client.subscribe(topics.inbox(self.fleet, self.device_id), 1)
        client.subscribe(topics.crl(self.fleet), 1)
        self.client = client
        self.connects += 1
        self._last_io = _ticks()

    # Connects, retrying with exponential backoff and jitter up to `attempts` times.
    def connect_with_backoff(self, attempts=8, sleep_ms=None):
        delay = BACKOFF_FIRST_MS
        for attempt in range(attempts):
            try:
                self.connect()
                return True
            except Exception:  # OSError (network) or MQTTException (refused): both retried
                self.client = None
                if attempt == attempts - 1:
                    raise
            jitter = (self._rng(1)[0] if self._rng else 128) * delay // 512
            (sleep_ms or _sleep_ms)(delay // 2 + jitter)
            delay = min(delay * 2, BACKOFF_MAX_MS)
        return False

    def send(self, peer, envelope, fleet=None):
        self.client.publish(topics.inbox(fleet or self.fleet, peer), topics.frame(self.device_id, envelope), qos=1)
        self._last_io = _ticks()

    # Handles waiting messages; pings when the link has been quiet for half the keepalive. A
    # broken connection raises OSError: call connect_with_backoff() and go on.
    def poll(self):
        while True:
            before = self.delivered
            if self.client.check_msg() is None and self.delivered == before:
                break  # nothing was waiting
            self._last_io = _ticks()
        if self.keepalive and _elapsed(self._last_io) > self.keepalive * 500:
            self.client.ping()
            self._last_io = _ticks()

    def close(self):
        if self.client is not None:
            try:
                self.client.disconnect()
            except OSError:
                pass
            self.client = None


def _sleep_ms(ms):
    if hasattr(time, "sleep_ms"):
        time.sleep_ms(ms)
    else:
        time.sleep(ms / 1000)
