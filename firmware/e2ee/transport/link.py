# The device's link to the broker (docs/broker.md, "Device transport"; docs/boards.md, "Device MQTT
# client"): connects with its broker credentials and a persistent session (clean_session False,
# QoS 1), so messages sent while it was offline arrive when it comes back; reconnects with
# exponential backoff and jitter; subscribes to its inbox and its fleet's revocation list again
# after each reconnect; keeps the connection alive with PINGREQ and declares it dead when a
# PINGREQ goes unanswered. At-least-once delivery can hand a message over twice (a PUBACK lost
# with the connection): the Double Ratchet refuses the second copy (DuplicateMessage), so each
# message is decrypted once.
#
# Poison messages (issue 12, finding 6): a message on_message (or on_crl) cannot use, whatever
# it raises (a frame that is not one, a refused or undecryptable envelope, a forged list), is
# acknowledged all the same and dropped: counted in `dropped`, its error type kept in
# `drop_error` and logged, never its content. Left unacknowledged, the broker would hand it over
# again after every reconnect and the inbox behind it would never move. Only the board's own
# trouble (OSError: network or flash; MemoryError) leaves it unacknowledged, to come again.
#
# An application either calls step() from its main loop (never sleeps; reconnects by itself) or
# connect_with_backoff() once and poll() in its loop, calling connect_with_backoff() again when
# poll() raises.
#
# The service channel (docs/provisioning.md, "Service channel"; e2ee.transport.service): with
# `service` the link subscribes to its answer topic after every connect, hands what arrives there
# to service.handle(), publishes its requests (publish()) and expires them in step().
#
# End-to-end delivery (docs/protocol.md §8): with `delivery` (an e2ee.device.Device, or a
# protocol Delivery wrapped the same way: flush(publish), reconnected()) the link tells it of
# every connect (messages on the way before may be lost: resent after their wait) and flushes it
# after each poll's batch of packets, so the receipts of a batch go out in one message and the
# next messages of the window follow. A flush publishes through send(): each publish waits for
# its PUBACK (within `timeout`), nothing sleeps.
#
# The MQTT client class comes in by injection: e2ee.transport.mqtt.MQTTClient, or micropython-lib's
# umqtt.simple.MQTTClient (the same API). What umqtt.simple loses: it does not report PINGRESP (no
# packet counter `rx`), so a dead connection is found only by the socket timeout or TCP, not by
# the keepalive watchdog; its check_msg leaves the socket blocking with no timeout (setblocking
# True clears it on lwIP), so the link sets the timeout again before each publish (PUBACK wait),
# which a MicroPython TLS socket cannot take (it has no settimeout: that wait is then unbounded).
#
# TLS (docs/boards.md, "TLS"): client keywords go to the client class, ssl=<an ssl.SSLContext
# with verify_mode CERT_REQUIRED and the broker's CA loaded>; both clients check the broker's
# certificate against the host name they connect to (e2ee.transport.mqtt.MQTTClient also takes
# ssl_params={"server_hostname": ...} for another name).
import errno
import os
import time

from e2ee.transport import topics

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# Reconnect waits: 0.5 s doubling to 30 s, each drawn from [d/2, d) with os.urandom so a fleet
# that lost its broker at once does not come back at once; back to 0.5 s after a connect.
BACKOFF_FIRST_MS = const(500)
BACKOFF_MAX_MS = const(30000)
_POLL_MAX = const(16)  # packets handled per poll(): a burst does not starve the main loop
# What a handler may raise without its message being acknowledged: the board's own trouble,
# which a reconnect or a reboot may cure (a message's own fault would come back every time).
_RETRY = (OSError, MemoryError)

# Milliseconds of a monotonic clock (module globals: a test may put a logical clock here).
if hasattr(time, "ticks_ms"):
    _ticks = time.ticks_ms
    _diff = time.ticks_diff
else:
    def _ticks():
        return int(time.monotonic() * 1000)

    def _diff(a, b):
        return a - b


def _elapsed(since):
    return _diff(_ticks(), since)


class Link:
    # on_message(sender, envelope) for inbox messages; on_crl(data) for the revocation list.
    # rng(n) -> n random bytes for the backoff jitter (default os.urandom). timeout: seconds a
    # socket operation may block (connect, the waits for CONNACK, SUBACK, PUBACK), None: forever.
    # log(text): where dropped messages are reported (default print). service, delivery: see above.
    # client_kw: more keywords for client_class (ssl=, ssl_params=: TLS, see above).
    def __init__(self, client_class, server, port, fleet, device_id, password, on_message, on_crl=None,
                 keepalive=60, rng=None, timeout=30, log=None, service=None, delivery=None, **client_kw):
        self.fleet = fleet
        self.device_id = device_id
        self.keepalive = keepalive
        self.timeout = timeout
        self._client_class = client_class
        self._args = (device_id, server, port, device_id, password, keepalive)
        self._client_kw = client_kw
        self._on_message = on_message
        self._on_crl = on_crl
        self._service = service
        self._delivery = delivery
        if service is not None:
            service.publish = self.publish
        self._crl_topic = topics.crl(fleet).encode()
        self._rng = rng or os.urandom
        self.client = None
        self.connects = 0
        self.delivered = 0
        self.dropped = 0  # messages acknowledged and dropped: unusable (see above)
        self.drop_error = None  # the error type name of the last one
        self._log = log or print
        self.pings = 0
        self.error = None  # what last broke or refused the connection (step())
        self._delay = BACKOFF_FIRST_MS
        self._down = _ticks()  # while down: since when, and how long to wait before trying
        self._wait = 0
        self._tx = 0  # when the last packet was sent
        self._ping = None  # when an unanswered PINGREQ was sent
        self._ping_rx = 0  # the client's packet count then
        self._poller = self._polled = None  # wait()'s select.poll, and the socket it watches

    def __repr__(self):
        return "<Link %s %s>" % (self.device_id, "up" if self.client else "down")

    def _deliver(self, topic, payload):
        self.delivered += 1
        if isinstance(topic, str):
            topic = topic.encode()
        sender = None
        try:
            if self._service is not None and self._service.handle(topic, payload):
                return
            if topic == self._crl_topic:
                if self._on_crl:
                    self._on_crl(payload)
                return
            sender, envelope = topics.unframe(payload)  # ValueError: not a frame
            self._on_message(sender, envelope)
        except _RETRY:
            raise  # not acknowledged: it comes again
        except Exception as e:  # the message's fault: acknowledged (on return) and dropped
            self.dropped += 1
            self.drop_error = type(e).__name__
            self._log("e2ee: dropped a message from %s: %s" % (  # repr: a sender name is wire data
                "the crl topic" if topic == self._crl_topic else repr(sender), self.drop_error))

    # Connects once: a new client (the old one's socket closed), CONNACK, both subscriptions.
    # Raises OSError or the client's exception (a refused CONNACK, a refused subscription); the
    # new socket is closed then.
    def connect(self):
        self._drop()
        client = self._client_class(*self._args, **self._client_kw)
        client.set_callback(self._deliver)
        self.client = client  # the session's queued messages arrive while subscribing
        try:
            if self.timeout:
                client.connect(clean_session=False, timeout=self.timeout)
            else:
                client.connect(clean_session=False)
            client.subscribe(topics.inbox(self.fleet, self.device_id), 1)
            client.subscribe(topics.crl(self.fleet), 1)
            if self._service is not None:
                client.subscribe(self._service.topic, 1)
        except BaseException:
            self._drop()
            raise
        self.connects += 1
        self._delay = BACKOFF_FIRST_MS
        self._tx = _ticks()
        if self._delivery is not None:
            self._delivery.reconnected()

    # Forgets the client and closes its socket, without DISCONNECT (the connection is broken or
    # being replaced).
    def _drop(self):
        client, self.client, self._ping = self.client, None, None
        self._poller = self._polled = None
        if client is not None and client.sock is not None:
            try:
                client.sock.close()
            except OSError:
                pass
            client.sock = None

    # The next reconnect wait in ms: from [d/2, d), d doubling from BACKOFF_FIRST_MS to BACKOFF_MAX_MS.
    def backoff(self):
        delay = self._delay
        self._delay = min(delay * 2, BACKOFF_MAX_MS)
        return delay // 2 + self._rng(1)[0] * delay // 512

    # Connects, retrying up to `attempts` times with backoff() waits in between (sleep_ms(ms),
    # default time.sleep_ms). Raises the last attempt's error.
    def connect_with_backoff(self, attempts=8, sleep_ms=None):
        for attempt in range(attempts):
            try:
                self.connect()
                return True
            except Exception:  # OSError (network) or MQTTException (refused): both retried
                if attempt == attempts - 1:
                    raise
            (sleep_ms or _sleep_ms)(self.backoff())
        return False

    # One turn of an application's main loop; never sleeps. Down: connects once the backoff wait
    # is over (the attempt blocks up to `timeout`). Up: poll(). Whatever breaks or refuses the
    # connection (kept in `error`; an OSError or MemoryError from on_message too: the message was
    # not acknowledged and comes again) drops it and schedules the next attempt. True while up.
    def step(self):
        if self._service is not None:
            self._service.step()
        try:
            if self.client is None:
                if _elapsed(self._down) < self._wait:
                    return False
                self.connect()
            else:
                self.poll()
            return True
        except Exception as e:
            if e is not self.error:  # publish() already dropped the connection for it
                self._fail(e)
            return False

    # The connection is gone: keep why, close it, schedule the next attempt.
    def _fail(self, e):
        self.error = e
        self._drop()
        self._down = _ticks()
        self._wait = self.backoff()

    # Publishes a framed envelope to the peer's inbox at QoS 1 and waits for its PUBACK. Raises
    # OSError(ENOTCONN) while down; a failure drops the connection (step() reconnects) and raises.
    def send(self, peer, envelope, fleet=None):
        self.publish(topics.inbox(fleet or self.fleet, peer), topics.frame(self.device_id, envelope))

    # Publishes payload on topic at QoS 1 (the service channel's requests), as send().
    def publish(self, topic, payload):
        if self.client is None:
            raise OSError(errno.ENOTCONN)
        try:
            if self.timeout and not hasattr(self.client, "rx"):  # umqtt.simple: see above
                settimeout = getattr(self.client.sock, "settimeout", None)
                if settimeout is not None:
                    settimeout(self.timeout)
            self.client.publish(topic, payload, qos=1)
        except Exception as e:
            self._fail(e)  # the stream may stop mid-packet: this connection is done
            raise
        self._tx = _ticks()

    # Handles what arrived (at most _POLL_MAX packets), then flushes the delivery layer; sends
    # PINGREQ when nothing was sent for half the keepalive; a PINGREQ unanswered for another half
    # keepalive means a dead connection: OSError(ETIMEDOUT). Any error means the connection is
    # broken: step() reconnects by itself, otherwise call connect_with_backoff().
    def poll(self):
        client = self.client
        if client is None:
            raise OSError(errno.ENOTCONN)
        for _ in range(_POLL_MAX):
            before = self.delivered + getattr(client, "rx", 0)
            if client.check_msg() is None and self.delivered + getattr(client, "rx", 0) == before:
                break  # nothing was waiting
        if self._delivery is not None:
            self._delivery.flush(self.send)
        if not self.keepalive:
            return
        half = self.keepalive * 500
        if self._ping is not None:
            if client.rx != self._ping_rx:
                self._ping = None  # an answer (or anything else) came back
            elif _elapsed(self._ping) >= half:
                raise OSError(errno.ETIMEDOUT)  # no PINGRESP
        if self._ping is None and _elapsed(self._tx) >= half:
            client.ping()
            self.pings += 1
            self._tx = _ticks()
            if hasattr(client, "rx"):
                self._ping, self._ping_rx = self._tx, client.rx

    # An idle main loop's pause: returns once something arrives for poll() or after ms
    # milliseconds (at once when down), so the next message does not wait out a fixed sleep.
    def wait(self, ms):
        client = self.client
        if client is None or client.sock is None:
            return
        if self._poller is None or self._polled is not client.sock:
            import select
            self._poller, self._polled = select.poll(), client.sock
            self._poller.register(client.sock, select.POLLIN)
        self._poller.poll(ms)

    # DISCONNECT and close; the persistent session keeps what arrives meanwhile.
    def close(self):
        if self.client is not None:
            try:
                self.client.disconnect()
            except Exception:
                pass
            self._drop()


def _sleep_ms(ms):
    if hasattr(time, "sleep_ms"):
        time.sleep_ms(ms)
    else:
        time.sleep(ms / 1000)
