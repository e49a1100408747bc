# The device MQTT client and link (e2ee.transport.mqtt, e2ee.transport.link; docs/boards.md,
# "Device MQTT client") on MicroPython and CPython, driven by tests/broker/test_device_mqtt.py.
# Run from the repository root:
#
#   mqtt_client_checks.py fake HOST PORT [CHECK ...]
#       against the test's scripted server: one connection per check, whose client id names the
#       check so the server plays the matching script (no name: every check, UNITS and FAKE)
#   mqtt_client_checks.py broker HOST PORT FLEET DEVICE_ID PASSWORD PHASE
#       against the project's Mosquitto, one phase of BROKER per run (the test acts in between)
#
# Prints "ok <check>" for each check that held and "FAIL <check>: <error>" for each that did not,
# then exits 1 if any failed. The link's clock is replaced by a logical one where a check is about
# keepalive time; waits for the network are polling loops with a generous deadline.
from checks import Stream, raises, raises_in
import errno
import gc
import os
import sys
import time

from e2ee.transport import link as link_mod, mqtt, topics
from e2ee.transport.link import Link
from e2ee.transport.mqtt import (ConnectRefused, MalformedPacket, MQTTClient, MQTTException,
                                 SubscribeRefused, UnsupportedQoS)

typed = raises_in(MQTTException)  # raises(error, fn, *args) for the client's typed errors
FLEET = "fake-fleet"
WAIT_MS = 20000  # how long a check waits for the network before it fails


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def now_ms():
    return time.ticks_ms() if hasattr(time, "ticks_ms") else int(time.monotonic() * 1000)


def sleep_ms(ms):
    time.sleep(ms / 1000)


# Calls fn() every few ms until it returns something true; that value, or AssertionError(what).
def until(fn, what):
    start = now_ms()
    while True:
        got = fn()
        if got:
            return got
        if now_ms() - start > WAIT_MS:
            raise AssertionError("waited %d ms for %s" % (WAIT_MS, what))
        sleep_ms(5)


# Calls step() (a blocking read) until cond() holds; cond() first, so no read waits for nothing.
def pump(step, cond, what):
    def attempt():
        if not cond():
            step()
        return cond()
    return until(attempt, what)


# The exception fn(*args) raises (AssertionError when none).
def error_of(fn, *args):
    try:
        fn(*args)
    except Exception as e:
        return e
    raise AssertionError("nothing raised by %s" % fn)


# The exception fn() raises within WAIT_MS (it returns None while nothing happened).
def raised(fn, what):
    def attempt():
        try:
            fn()
        except Exception as e:
            return e
    return until(attempt, what)


# The link's logical clock: ms that only advance when a check says so.
class Clock:
    def __init__(self):
        self.ms = 0
        link_mod._ticks = self.ticks

    def ticks(self):
        return self.ms


# An in-memory socket: what the client reads comes from `data`, what it writes goes to `out`.
def streamed(data=b"", **kw):
    c = MQTTClient("unit", "127.0.0.1", 1, **kw)
    c._bind(Stream(data))
    return c


# ---- checks without a network -------------------------------------------------------------

LENGTHS = ((0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"), (16384, b"\x80\x80\x01"),
           (2097151, b"\xff\xff\x7f"), (2097152, b"\x80\x80\x80\x01"), (268435455, b"\xff\xff\xff\x7f"))


# Remaining length (MQTT 3.1.1 §2.2.3, the table's boundaries) both ways; over four bytes refused.
def check_lengths():
    check(mqtt.MAX_REMAINING == 268435455, "MAX_REMAINING")
    for n, wire in LENGTHS:
        buf = bytearray(5)
        end = mqtt._put_len(buf, n)
        check(bytes(buf[1:end]) == wire, "encoding of %d: %r" % (n, bytes(buf[1:end])))
        check(streamed(wire)._recv_len() == n, "decoding of %r" % wire)
    for n in (268435456, -1):
        raises(ValueError, mqtt._put_len, bytearray(5), n)
    typed(MalformedPacket, streamed(b"\xff\xff\xff\xff\x01")._recv_len)
    typed(MalformedPacket, streamed(b"\x80\x80\x80\x80\x00")._recv_len)


# CONNECT, PUBLISH and SUBSCRIBE byte for byte; lengths count encoded bytes, not characters.
def check_encoding():
    c = streamed(user="u", password="p", keepalive=30)
    c.client_id = "dev"
    c._send_connect(False)
    check(bytes(c.sock.out) == b"\x10\x15\x00\x04MQTT\x04\xc0\x00\x1e\x00\x03dev\x00\x01u\x00\x01p",
          "CONNECT %r" % bytes(c.sock.out))
    c = streamed(user="d\xfc", password="p\xe4\xdf")
    c.client_id = "d\xfc"
    c._send_connect(True)
    check(bytes(c.sock.out) == b"\x10\x1b\x00\x04MQTT\x04\xc2\x00\x00\x00\x03d\xc3\xbc\x00\x03d\xc3\xbc"
          b"\x00\x05p\xc3\xa4\xc3\x9f", "CONNECT non-ASCII %r" % bytes(c.sock.out))
    c = streamed()
    c.set_last_will("w/t", b"gone", retain=True, qos=1)
    c.client_id = "x"
    c._send_connect(True)
    check(bytes(c.sock.out) == b"\x10\x18\x00\x04MQTT\x04\x2e\x00\x00\x00\x01x\x00\x03w/t\x00\x04gone",
          "CONNECT with a will %r" % bytes(c.sock.out))
    c = streamed()
    c.publish("a/b", b"x" * 200)
    check(bytes(c.sock.out) == b"\x30\xcd\x01\x00\x03a/b" + b"x" * 200, "PUBLISH QoS 0")
    c = streamed(b"\x40\x02\x00\x01")  # its PUBACK is waiting already
    c.publish(b"a/b", b"hi", retain=True, qos=1)
    check(bytes(c.sock.out) == b"\x33\x09\x00\x03a/b\x00\x01hi", "PUBLISH QoS 1 %r" % bytes(c.sock.out))
    # a QoS 1 publish from the callback while another waits (nested): the inner one reads the
    # outer one's PUBACK first; both complete
    c = streamed(b"\x30\x05\x00\x01tXY" b"\x40\x02\x00\x01" b"\x40\x02\x00\x02")
    c.set_callback(lambda topic, msg: c.publish(b"i", b"in", qos=1))
    c.publish(b"o", b"out", qos=1)
    check(bytes(c.sock.out) == b"\x32\x08\x00\x01o\x00\x01out" b"\x32\x07\x00\x01i\x00\x02in" and not c._acked,
          "nested QoS 1 publishes %r" % bytes(c.sock.out))
    c = streamed(b"\x90\x03\x00\x01\x01")
    check(c.subscribe("a/+", 1) == 1, "granted QoS")
    check(bytes(c.sock.out) == b"\x82\x08\x00\x01\x00\x03a/+\x01", "SUBSCRIBE %r" % bytes(c.sock.out))


# The limits, pinned (the test also derives MAX_PACKET from the protocol's own limits).
def check_limits():
    check(mqtt.MAX_PACKET == 9600, "MAX_PACKET %d" % mqtt.MAX_PACKET)
    check(link_mod.BACKOFF_FIRST_MS == 500 and link_mod.BACKOFF_MAX_MS == 30000, "backoff limits")


# Exponential backoff from 0.5 s, capped at 30 s, each wait in [d/2, d) drawn from the rng
# (default os.urandom: waits differ).
def check_backoff():
    low = Link(MQTTClient, "127.0.0.1", 1, FLEET, "b", "pw", None, rng=lambda n: b"\x00")
    check([low.backoff() for _ in range(9)] == [250, 500, 1000, 2000, 4000, 8000, 15000, 15000, 15000],
          "backoff with the lowest jitter")
    high = Link(MQTTClient, "127.0.0.1", 1, FLEET, "b", "pw", None, rng=lambda n: b"\xff")
    waits = [high.backoff() for _ in range(9)]
    d = 500
    for w in waits:
        check(d // 2 <= w < d, "wait %d outside [%d, %d)" % (w, d // 2, d))
        d = min(d * 2, 30000)
    default = Link(MQTTClient, "127.0.0.1", 1, FLEET, "b", "pw", None)
    check(default._rng is os.urandom, "the jitter comes from os.urandom")
    for _ in range(7):
        default.backoff()
    check(len(set([default.backoff() for _ in range(16)])) > 1, "jittered waits differ")


# ---- checks against the scripted server (client id = check name) ---------------------------

# Nothing waiting is None, a reset connection is OSError(ECONNRESET), not None.
def check_reset(host, port):
    c = MQTTClient("reset", host, port)
    c.connect()
    check(c.check_msg() is None, "nothing waiting")
    c.ping()  # the server resets the connection when it reads this
    e = raised(c.check_msg, "the reset")
    check(isinstance(e, OSError) and e.args[0] == errno.ECONNRESET, "reset seen as %r" % (e,))


# A connection the server closes is OSError(-1).
def check_eof(host, port):
    c = MQTTClient("eof", host, port)
    c.connect()
    c.ping()  # the server closes the connection when it reads this
    e = raised(c.check_msg, "the close")
    check(isinstance(e, OSError) and e.args[0] == -1, "close seen as %r" % (e,))


# Packets over MAX_PACKET (a 2.1 MB one, far over the heap, and one byte over) are drained and
# counted, and still acknowledged; a full revocation list and one of exactly MAX_PACKET arrive.
def check_oversize(host, port):
    got = []
    c = MQTTClient("oversize", host, port)
    c.set_callback(lambda t, m: got.append((t, len(m))))
    c.connect()
    gc.collect()
    pump(c.wait_msg, lambda: len(got) == 3, "three kept messages")
    crl = topics.crl("f" * 64).encode()
    check(got == [(crl, 9400), (b"t/max", mqtt.MAX_PACKET - 9), (b"t/end", 3)], "kept %r" % got)
    check(c.dropped == 3, "dropped %d" % c.dropped)
    c.disconnect()


# A connected client, and the list its callback appends each message to.
def collecting(name, host, port):
    got = []
    c = MQTTClient(name, host, port)
    c.set_callback(lambda t, m: got.append(m))
    c.connect()
    return c, got


# The check for a malformed packet: bad_length, a remaining length over four bytes; bad_topic, a
# topic longer than its packet. MalformedPacket, nothing delivered.
def malformed(name):
    def run(host, port):
        c, got = collecting(name, host, port)
        typed(MalformedPacket, c.wait_msg)
        check(not got, "nothing delivered")
        c.disconnect()
    return run


# QoS 2 refused before anything is sent; an incoming QoS 2 PUBLISH is dropped and completed
# (PUBREC, PUBCOMP for the PUBREL) so it does not come again.
def check_qos2(host, port):
    c, got = collecting("qos2", host, port)
    check(typed(UnsupportedQoS, c.publish, "t", b"m", False, 2) == "2", "UnsupportedQoS names the QoS")
    typed(UnsupportedQoS, c.subscribe, "t", 2)
    c.ping()  # the first packet the server sees after CONNECT
    pump(c.wait_msg, lambda: got, "the message after the QoS 2 one")
    check(got == [b"after"], "delivered %r" % got)
    check(c.dropped == 1, "dropped %d" % c.dropped)
    c.disconnect()


# A refused CONNACK is ConnectRefused(code) with the socket closed (the server sees it close);
# so is a CONNACK that is not one, and a connection nobody accepts.
def check_refused(host, port):
    c = MQTTClient("refused", host, port, "refused", "wrong")
    e = typed(ConnectRefused, c.connect)
    check(e == "5", "code %s" % e)
    check(c.sock is None, "socket closed")
    c = MQTTClient("not_connack", host, port)
    typed(MalformedPacket, c.connect)
    check(c.sock is None, "socket closed after a bad CONNACK")
    c = MQTTClient("nobody", host, 1)
    raises(OSError, c.connect)
    check(c.sock is None, "socket closed after a refused TCP connect")


def check_suback(host, port):
    c = MQTTClient("suback", host, port)
    c.connect()
    e = typed(SubscribeRefused, c.subscribe, "no/such", 1)
    check(e == str(0x80), "SUBACK code %s" % e)
    check(c.subscribe("yes", 1) == 1, "the next subscription")
    c.disconnect()


def new_link(name, client_class=MQTTClient, **kw):
    got = []
    link = Link(client_class, HOST, PORT, FLEET, name, "pw", lambda s, e: got.append(bytes(e)), **kw)
    return link, got


# The client class, recording each client the link makes (to see their sockets closed).
class Recorded(MQTTClient):
    made = []

    def __init__(self, *args):
        super().__init__(*args)
        Recorded.made.append(self)


def all_closed():
    return [c for c in Recorded.made if c.sock is not None] == []


# Keepalive on the link's logical clock (keepalive 30 s: PINGREQ after 15 s without sending,
# dead 15 s after an unanswered one): received traffic does not count as sent; the PINGRESP
# clears the ping; a withheld one is OSError(ETIMEDOUT); step() then reconnects.
def check_link_keepalive(host, port):
    clock = Clock()
    link, got = new_link("link_keepalive", keepalive=30)
    link.connect()
    clock.ms = 10000
    until(lambda: link.poll() or got, "m1")  # received at 10 s: nothing sent since 0 s
    clock.ms = 20000
    link.poll()
    check(link.pings == 1, "a PINGREQ after 20 s without sending")
    until(lambda: link.poll() or len(got) == 2, "the server's message after its PINGRESP")
    clock.ms = 36000
    link.poll()  # answered: no timeout; 16 s without sending: the second PINGREQ (withheld)
    check(link.pings == 2, "the second PINGREQ")
    clock.ms = 50000
    link.poll()  # 14 s unanswered: still alive
    clock.ms = 51000
    e = error_of(link.poll)
    check(isinstance(e, OSError) and e.args[0] == errno.ETIMEDOUT, "dead link seen as %r" % (e,))
    check(link.step() is False and link.client is None, "step() drops the dead link")
    check(isinstance(link.error, OSError), "error %r" % link.error)
    check(link.step() is False and link.connects == 1, "no attempt before the backoff wait")
    clock.ms += 500
    check(link.step() is True and link.connects == 2, "step() reconnected")
    until(lambda: link.step() and len(got) == 3, "the message on the new connection")
    check(got == [b"m1", b"pong seen", b"again"], "got %r" % got)
    link.close()


# What the link tells a delivery layer (e2ee.device.Device): each connect, and a flush through
# its own send() after each poll.
class Delivery:
    def __init__(self):
        self.reconnects = self.flushes = 0
        self.publish = None

    def reconnected(self):
        self.reconnects += 1

    def flush(self, publish):
        self.flushes += 1
        self.publish = publish
        return 0


# step() alone: connects, sees a reset, waits out the backoff, reconnects and resubscribes; its
# delivery layer hears of both connects and is flushed after every poll.
def check_link_reset(host, port):
    clock = Clock()
    delivery = Delivery()
    link, got = new_link("link_reset", rng=lambda n: b"\x80", delivery=delivery)
    check(link.step() is True and link.connects == 1, "first step connects")
    check(delivery.reconnects == 1 and delivery.flushes == 0, "connect: reconnected(), no flush yet")
    until(lambda: not link.step(), "the reset")
    check(isinstance(link.error, OSError) and link.error.args[0] == errno.ECONNRESET, "error %r" % link.error)
    check(link.client is None and link.step() is False, "down until the backoff wait is over")
    clock.ms += 374
    check(link.step() is False, "still waiting at 374 ms")
    clock.ms += 1
    check(link.step() is True and link.connects == 2, "reconnected after 375 ms")
    until(lambda: link.step() and got, "the message after the reconnect")
    check(got == [b"back"], "got %r" % got)
    check(delivery.reconnects == 2, "reconnected() after the second connect")
    check(delivery.flushes >= 1 and callable(delivery.publish), "polls flush")
    check(link.backoff() == 375, "backoff starts again after a connect")
    link.close()


# A refused CONNACK: both attempts refused, one backoff wait between them, both sockets closed.
def check_link_refused(host, port):
    waits = []
    Recorded.made = []
    link, _ = new_link("link_refused", Recorded)
    e = typed(ConnectRefused, link.connect_with_backoff, 2, waits.append)
    check(e == "4", "code %s" % e)
    check(len(waits) == 1 and 250 <= waits[0] < 500, "waits %r" % waits)
    check(link.client is None and len(Recorded.made) == 2 and all_closed(), "both sockets closed")


# A refused subscription fails the connect and closes its socket.
def check_link_suback(host, port):
    Recorded.made = []
    link, _ = new_link("link_suback", Recorded)
    typed(SubscribeRefused, link.connect)
    check(link.client is None and len(Recorded.made) == 1 and all_closed(), "socket closed")
    e = error_of(link.send, "peer", b"x")
    check(isinstance(e, OSError) and e.args[0] == errno.ENOTCONN, "send while down: %r" % (e,))


UNITS = (("lengths", check_lengths), ("encoding", check_encoding), ("limits", check_limits),
         ("backoff", check_backoff))
FAKE = (("reset", check_reset), ("eof", check_eof), ("oversize", check_oversize),
        ("bad_length", malformed("bad_length")), ("bad_topic", malformed("bad_topic")), ("qos2", check_qos2), ("refused", check_refused),
        ("suback", check_suback), ("link_keepalive", check_link_keepalive), ("link_reset", check_link_reset),
        ("link_refused", check_link_refused), ("link_suback", check_link_suback))


# ---- phases against the project's Mosquitto (the device may use its inbox and its fleet's crl) --

def say(line):
    sys.stdout.write(line + "\n")
    if hasattr(sys.stdout, "flush"):
        sys.stdout.flush()


class Device:
    def __init__(self, fleet, device_id, password, **kw):
        self.got, self.crls = [], []
        self.link = Link(MQTTClient, HOST, PORT, fleet, device_id, password,
                         lambda s, e: self.got.append(bytes(e)), lambda d: self.crls.append(len(d)), **kw)


# A wrong password is ConnectRefused (4 or 5) with the socket closed; QoS 2 is refused without
# a byte sent: the same connection goes on with QoS 1.
def phase_refused(fleet, device_id, password):
    c = MQTTClient(device_id, HOST, PORT, device_id, "wrong")
    code = typed(ConnectRefused, c.connect)
    check(code in ("4", "5") and c.sock is None, "refused with %s, socket %r" % (code, c.sock))
    got = []
    c = MQTTClient(device_id, HOST, PORT, device_id, password, keepalive=30)
    c.set_callback(lambda t, m: got.append(m))
    c.connect()
    inbox = topics.inbox(fleet, device_id)
    typed(UnsupportedQoS, c.subscribe, inbox, 2)
    typed(UnsupportedQoS, c.publish, inbox, b"qos 2", False, 2)
    check(c.subscribe(inbox, 1) == 1, "QoS 1 granted")
    c.publish(inbox, topics.frame("self", b"still here"), qos=1)
    pump(c.wait_msg, lambda: got, "the QoS 1 message")
    check(got == [topics.frame("self", b"still here")], "got %r" % got)
    c.disconnect()


# The persistent session starts.
def phase_session(fleet, device_id, password):
    d = Device(fleet, device_id, password)
    d.link.connect()
    d.link.close()


# What the test queued while the device was away: a 12 KB message (over MAX_PACKET) is dropped
# and acknowledged, the small one after it delivered; the retained 9400-byte revocation list
# arrives. The link goes on: a message to itself comes back.
def phase_queued(fleet, device_id, password):
    d = Device(fleet, device_id, password)
    d.link.connect()
    client = d.link.client
    until(lambda: d.link.poll() or (d.got and d.crls), "the queued message and the retained list")
    check(d.got == [b"small"], "queued %r" % d.got)
    check(d.crls in ([9400], [9400, 9400]), "revocation lists %r" % d.crls)  # queued, and retained
    check(client.dropped == 1, "dropped %d" % client.dropped)
    d.link.send(device_id, b"self")
    until(lambda: d.link.poll() or len(d.got) == 2, "its own message")
    check(d.got == [b"small", b"self"] and client.dropped == 1,
          "got %r, dropped %d" % (d.got, client.dropped))
    d.link.close()


# Nothing comes again (the dropped messages were acknowledged) but the retained list; the broker
# answers PINGREQ after half the keepalive on the link's logical clock, so no false timeout.
def phase_again(fleet, device_id, password):
    clock = Clock()
    d = Device(fleet, device_id, password, keepalive=30)
    d.link.connect()
    client = d.link.client
    until(lambda: d.link.poll() or d.crls, "the retained list")
    check(d.got == [] and d.crls == [9400] and client.dropped == 0,
          "again: %r %r %d" % (d.got, d.crls, client.dropped))
    for n in (1, 2):
        clock.ms += 15000
        rx = client.rx
        d.link.poll()
        check(d.link.pings == n, "PINGREQ %d" % n)
        until(lambda: d.link.poll() or client.rx != rx, "PINGRESP %d" % n)
    clock.ms += 14999
    d.link.poll()
    check(d.link.client is client and d.link.pings == 2, "answered pings keep the link")
    d.link.close()


# step() alone across a broker restart: the test restarts the broker after "up" and queues a
# message for the device, then says "go".
def phase_restart(fleet, device_id, password):
    d = Device(fleet, device_id, password)
    until(d.link.step, "the first connect")
    say("up")
    check(sys.stdin.readline().strip() == "go", "go")
    until(lambda: d.link.step() and d.got, "the message queued during the restart")
    check(d.got == [b"after restart"] and d.link.connects == 2,
          "got %r after %d connects" % (d.got, d.link.connects))
    d.link.close()


BROKER = (("refused", phase_refused), ("session", phase_session), ("queued", phase_queued),
          ("again", phase_again), ("restart", phase_restart))


def report(e):
    if hasattr(sys, "print_exception"):
        sys.print_exception(e)
    else:
        import traceback
        traceback.print_exc()


def main(argv):
    global HOST, PORT
    mode, HOST, PORT = argv[1], argv[2], int(argv[3])
    if mode == "fake":
        names = argv[4:]
        todo = [(n, f, ()) for n, f in UNITS if not names or n in names]
        todo += [(n, f, (HOST, PORT)) for n, f in FAKE if not names or n in names]
    else:
        todo = [(n, f, tuple(argv[4:7])) for n, f in BROKER if n == argv[7]]
    check(todo, "no such check: %r" % argv[4:])
    failed = 0
    for name, fn, args in todo:
        try:
            fn(*args)
            say("ok " + name)
        except Exception as e:
            failed += 1
            report(e)
            say("FAIL %s: %s %s" % (name, type(e).__name__, e))
    if failed:
        sys.exit(1)


HOST, PORT = None, None
main(sys.argv)
