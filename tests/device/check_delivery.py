# End-to-end delivery (docs/protocol.md §8) on MicroPython and CPython: the outbox, receipts,
# the window, exactly-once by message id across resends and session resets, signed reset
# requests (forged, replayed, too soon), expiry, reopening after a reboot.
# Usage: check_delivery.py <empty directory>   (prints "ok delivery")
import sys

from e2ee.protocol import delivery, envelope, ratchet
from e2ee.protocol.delivery import (DELIVERED, FAILED, SENT, Delivery, Malformed, OutboxFull, ResetRefused,
                                    Undeliverable)
from e2ee.protocol.session import NoSession, SessionManager

KEY = bytes(range(32))
ROOT = sys.argv[1]


class Clock:
    def __init__(self):
        self.t = 1000

    def __call__(self):
        return self.t


class Node:
    # One device: sessions, delivery, what it delivered to its application, statuses it heard.
    def __init__(self, name, clock, sessions=None, **kw):
        self.name = name
        self.sessions = sessions or SessionManager.create(ROOT + "/" + name, KEY, one_time=4)
        self.got = []
        self.status = []
        self.kw = kw
        self.clock = clock
        self.open()

    def open(self):
        self.d = Delivery(self.sessions, ROOT + "/" + self.name, KEY, self.name, starter=self.start,
                          on_status=lambda peer, seq, status, reason: self.status.append((peer, seq, status, reason)),
                          clock=self.clock, **self.kw)

    def start(self, peer):
        other = NODES[peer]
        self.sessions.start(peer, other.sessions.bundle())

    def deliver(self, sender, payload):
        self.got.append((sender, bytes(payload)))


class Sized:  # a payload of that length, without a block that size on a fragmented heap
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


NODES = {}
WIRE = []  # (to, sender, envelope): the broker


def publish_from(node):
    def publish(peer, wire):
        WIRE.append((peer, node.name, bytes(wire)))
    return publish


def pump(drop=None, rounds=50):
    # Flushes every node and hands the wire over until nothing moves; drop(i, item) -> True loses it.
    i = 0
    for _ in range(rounds):
        for node in NODES.values():
            node.d.flush(publish_from(node))
        if not WIRE:
            return
        batch = WIRE[:]
        del WIRE[:]
        for item in batch:
            i += 1
            if drop is not None and drop(i, item):
                continue
            to, sender, wire = item
            if to not in NODES:  # nobody of that name
                continue
            try:
                NODES[to].d.handle(sender, wire, NODES[to].deliver)
            except (ValueError,) + tuple(delivery.MESSAGE_ERRORS):
                pass
    raise AssertionError("the network did not settle")


def statuses(node, status):
    return [s for (_, s, st, _) in node.status if st == status]


def expect(error, fn, *args):
    try:
        fn(*args)
    except error as e:
        return e
    raise AssertionError("no %s" % error.__name__)


def payloads(n, start=0):
    return [b"m%d" % i for i in range(start, start + n)]


def main():
    clock = Clock()
    a = NODES["alice"] = Node("alice", clock)
    b = NODES["bob"] = Node("bob", clock)

    # The window: 40 queued, 16 go out before a receipt comes back.
    for m in payloads(40):
        a.d.send("bob", m)
    assert a.d.pending("bob") == 40
    a.start("bob")
    a.d.flush(publish_from(a))
    assert len(WIRE) == delivery.WINDOW, len(WIRE)
    pump()
    assert [p for _, p in b.got] == payloads(40), "not all, once, in order"
    assert sorted(statuses(a, DELIVERED)) == list(range(1, 41)) and a.d.pending("bob") == 0

    # A lossy network: every 5th message lost (data and receipts); selective receipts and a
    # reconnect bring everything, each delivered once.
    del b.got[:]
    for m in payloads(30, 100):
        a.d.send("bob", m)
    pump(drop=lambda i, item: i % 5 == 0)
    for _ in range(6):
        clock.t += 100
        a.d.reconnected()
        pump(drop=lambda i, item: i % 7 == 0)
    clock.t += 100
    a.d.reconnected()
    pump()
    got = [p for _, p in b.got]
    assert sorted(got) == sorted(payloads(30, 100)) and len(got) == 30, got
    assert a.d.pending("bob") == 0

    # A reboot of both: the outbox and the receiver's record of what it delivered stay.
    for m in payloads(3, 200):
        a.d.send("bob", m)
    a.d.flush(publish_from(a))
    held = WIRE[:]
    del WIRE[:]
    a.open()
    b.open()
    assert a.d.pending("bob") == 3
    pump()  # a restart alone sends nothing again (the broker keeps what it acknowledged)
    assert len(b.got) == 30 and not WIRE
    clock.t += 2
    a.d.reconnected()
    pump()  # a reconnect sends what was on the way again, once its wait is over
    for item in held:  # the first copies arrive late: duplicates, not delivered twice
        b.d.handle(item[1], item[2], b.deliver)
    pump()
    assert [p for _, p in b.got[-3:]] == payloads(3, 200) and len(b.got) == 33

    # Tail loss: the last message on the way is lost while the peer is up; a later receipt from
    # the peer that does not name it, RECEIPT_GRACE after it was sent, makes it due again.
    a.d.send("bob", b"tail")
    pump(drop=lambda i, item: item[0] == "bob")
    assert a.d.pending("bob") == 1
    b.d.send("alice", b"ping")
    pump()
    assert b.got[-1] != ("alice", b"tail") and a.d.pending("bob") == 1  # too soon to call it lost
    clock.t += delivery.RECEIPT_GRACE
    a.d.send("bob", b"next")
    pump()
    assert b.got[-2:] == [("alice", b"next"), ("alice", b"tail")] and a.d.pending("bob") == 0, b.got[-2:]
    del a.got[:]

    # A publish that hands arrivals over while it waits (a board's MQTT client reads incoming
    # packets until its PUBACK): a receipt that comes during the first publish settles every
    # message of the flush; none is read from the outbox again, none is reported sent after
    # delivered.
    for m in payloads(3, 300):
        a.d.send("bob", m)
    a.d.flush(publish_from(a))
    for to, sender, wire in WIRE:
        b.d.handle(sender, wire, b.deliver)
    del WIRE[:]
    b.d.flush(publish_from(b))
    [(to, sender, receipt)] = WIRE
    del WIRE[:]
    clock.t += 100
    a.d.reconnected()  # all three are due again
    published = []

    def publish_reading(peer, wire):
        published.append(wire)
        if len(published) == 1:
            a.d.handle(sender, receipt, a.deliver)
    seen = len(a.status)
    a.d.flush(publish_reading)
    assert len(published) == 1 and a.d.pending("bob") == 0
    first = a.status[seen][1]
    assert [(s, st) for (_, s, st, _) in a.status[seen:]] == [(first + i, DELIVERED) for i in range(3)], a.status[seen:]
    assert [p for _, p in b.got[-3:]] == payloads(3, 300)

    # Data that arrives while the receipt before it is being published (handed to handle() from
    # inside publish) is receipted too, in the same flush: no message waits for a probe.
    for m in payloads(2, 400):
        a.d.send("bob", m)
    a.d.flush(publish_from(a))
    (_, s1, w1), (_, s2, w2) = WIRE
    del WIRE[:]
    b.d.handle(s1, w1, b.deliver)

    def publish_reading_data(peer, wire):
        WIRE.append((peer, "bob", bytes(wire)))
        if len(WIRE) == 1:
            b.d.handle(s2, w2, b.deliver)
    b.d.flush(publish_reading_data)
    assert len(WIRE) == 2, "no receipt for the message that came during the first one's publish"
    pump()
    assert a.d.pending("bob") == 0 and [p for _, p in b.got[-2:]] == payloads(2, 400)

    # A forced gap of 100 lost messages: bob cannot decrypt (TooManySkipped), asks alice for a
    # reset, alice starts a new session and resends; the next message decrypts.
    for _ in range(100):
        a.sessions.encrypt("bob", delivery.encode_data(b"\x00" * 8, 1, b"lost"))
    a.d.send("bob", b"after the gap")
    a.d.flush(publish_from(a))
    to, sender, wire = WIRE.pop()
    expect(ratchet.TooManySkipped, b.d.handle, sender, wire, b.deliver)
    b.d.flush(publish_from(b))
    to, sender, reset = WIRE.pop()
    assert to == "alice" and isinstance(envelope.decode(reset), envelope.Control)
    # forged: a fleet member signs with its own identity in bob's name; damaged; wrong size
    mallory = SessionManager.create(ROOT + "/mallory", KEY, one_time=1)
    control = envelope.decode(reset)
    dh = bytes(control.payload[:32])
    forged = envelope.encode(envelope.Control(envelope.SESSION_RESET, dh + mallory.keystore.sign(
        delivery.reset_message("bob", "alice", dh))))
    expect(ResetRefused, a.d.handle, "bob", forged, a.deliver)
    flipped = bytearray(reset)
    flipped[-1] ^= 1
    expect(ResetRefused, a.d.handle, "bob", bytes(flipped), a.deliver)
    expect(Malformed, a.d.handle, "bob", envelope.encode(envelope.Control(envelope.SESSION_RESET, b"x")), a.deliver)
    expect(ResetRefused, a.d.handle, "carol", reset, a.deliver)  # no session with carol
    assert a.d.resets_taken == 0
    key_before = a.sessions.sending_key("bob")
    a.d.handle("bob", reset, a.deliver)
    assert a.d.resets_taken == 1
    pump()
    assert a.sessions.sending_key("bob") != key_before, "no new session"
    assert b.got[-1] == ("alice", b"after the gap") and a.d.pending("bob") == 0
    assert a.status[-2][2:] == (SENT, "resent") and a.status[-1][2] == DELIVERED, a.status[-2:]  # said so
    # the same request again names a key alice no longer sends with (and is too soon anyway)
    expect(ResetRefused, a.d.handle, "bob", reset, a.deliver)
    assert a.d.resets_taken == 1

    # Bob loses his sessions (NoSession): the reset heals it; a message already delivered
    # before the reset is not delivered again when resent.
    for name in b.sessions.peers():
        b.sessions._sessions.delete(name)
    clock.t += delivery.RESET_INTERVAL
    a.d.send("bob", b"into the void")
    a.d.flush(publish_from(a))
    to, sender, wire = WIRE.pop()
    expect(NoSession, b.d.handle, sender, wire, b.deliver)
    n = len(b.got)
    pump()
    assert b.got[n:] == [("alice", b"into the void")], b.got[n:]
    assert b.d.resets_asked == 2 and a.d.resets_taken == 2
    # and bob can answer on the new session
    b.d.send("alice", b"hello alice")
    pump()
    assert a.got == [("bob", b"hello alice")] and statuses(b, DELIVERED) == [1, 2]

    # A second reset within the interval is refused (no endless X3DH).
    for _ in range(40):
        a.sessions.encrypt("bob", b"x")
    a.d.send("bob", b"second gap")
    a.d.flush(publish_from(a))
    to, sender, wire = WIRE.pop()
    expect(ratchet.TooManySkipped, b.d.handle, sender, wire, b.deliver)
    b.d.flush(publish_from(b))
    assert not WIRE, "a reset request within the interval"
    clock.t += delivery.RESET_INTERVAL  # bob may ask again: the waiting request goes out
    b.d.flush(publish_from(b))
    to, sender, reset = WIRE.pop()
    a.d._peers["bob"].reset_taken = clock.t - 1
    expect(ResetRefused, a.d.handle, "bob", reset, a.deliver)
    a.d._peers["bob"].reset_taken = None
    a.d.handle("bob", reset, a.deliver)
    pump()
    assert b.got[-1] == ("alice", b"second gap")

    # The rate limit outlives the peer's entry in RAM: a target that meanwhile holds max_peers
    # other peers still refuses a second reset within RESET_INTERVAL (idle peers are dropped from
    # RAM, but not while a reset taken from them is that recent).
    fay = NODES["fay"] = Node("fay", clock, max_peers=2)
    gus = NODES["gus"] = Node("gus", clock)
    fay.d.send("gus", b"hi gus")
    pump()
    assert gus.got[-1] == ("fay", b"hi gus")

    def request():  # gus's genuine request, naming the key fay sends with now
        dh = fay.sessions.sending_key("gus")
        return envelope.encode(envelope.Control(envelope.SESSION_RESET, dh + gus.sessions.keystore.sign(
            delivery.reset_message("gus", "fay", dh))))
    fay.d.handle("gus", request(), fay.deliver)
    key = fay.sessions.sending_key("gus")
    pump()
    assert fay.d.resets_taken == 1 and fay.sessions.sending_key("gus") != key
    for other in ("h1", "h2", "h3"):
        assert fay.d.pending(other) == 0  # other peers in fay's RAM
    expect(ResetRefused, fay.d.handle, "gus", request(), fay.deliver)
    clock.t += delivery.RESET_INTERVAL
    fay.d.handle("gus", request(), fay.deliver)
    assert fay.d.resets_taken == 2
    pump()

    # A fleet member forges failures in alice's name (an unknown ratchet key, PN beyond MAX_SKIP:
    # TooManySkipped before any X25519) after a real one: the request still names the real key
    # (it names the last 4 distinct ones), and alice takes it.
    clock.t += delivery.RESET_INTERVAL
    for _ in range(40):
        a.sessions.encrypt("bob", b"x")
    a.d.send("bob", b"third gap")
    a.d.flush(publish_from(a))
    to, sender, wire = WIRE.pop()
    expect(ratchet.TooManySkipped, b.d.handle, sender, wire, b.deliver)
    for i in range(2):
        forged = envelope.encode(envelope.RatchetMessage(a.sessions.sending_key("bob")[:31] + bytes((i,)), 40, 0,
                                                         bytes(16)))
        expect(ratchet.TooManySkipped, b.d.handle, "alice", forged, b.deliver)
    b.d.flush(publish_from(b))
    to, sender, reset = WIRE.pop()
    assert len(envelope.decode(reset).payload) == 3 * 32 + 64
    a.d.handle("bob", reset, a.deliver)
    pump()
    assert b.got[-1] == ("alice", b"third gap"), b.got[-1]

    # A publish that fails (the link went down) spends no ratchet key: the next flush sends the
    # same envelope.
    a.d.send("bob", b"through an outage")
    tries = []

    def down(peer, wire):
        tries.append(wire)
        raise OSError(113)
    for _ in range(3):
        try:
            a.d.flush(down)
        except OSError:
            pass
    assert len(tries) == 3 and tries[0] == tries[1] == tries[2]
    pump()
    assert b.got[-1] == ("alice", b"through an outage") and b.d.resets_asked == 4

    # A whole window lost while alice's link stays up (no reconnect, no later receipt): after
    # PROBE_AFTER the oldest goes again; bob's receipt for it shows the rest lost; all arrive.
    n = len(b.got)
    for m in payloads(5, 300):
        a.d.send("bob", m)
    pump(drop=lambda i, item: item[0] == "bob")
    assert a.d.pending("bob") == 5
    clock.t += delivery.PROBE_AFTER
    pump()
    clock.t += delivery.RECEIPT_GRACE
    pump()
    assert sorted(p for _, p in b.got[n:]) == payloads(5, 300) and a.d.pending("bob") == 0, b.got[n:]

    # Reset requests have a budget per interval across peers (sender ids are anyone's to invent).
    clock.t += delivery.RESET_INTERVAL
    junk = envelope.encode(envelope.RatchetMessage(bytes(31) + b"\x09", 0, 0, bytes(16)))
    for i in range(delivery.MAX_RESETS + 3):
        expect(NoSession, b.d.handle, "ghost-%d" % i, junk, b.deliver)
    asked = b.d.resets_asked
    b.d.flush(lambda peer, wire: None)
    assert b.d.resets_asked - asked == delivery.MAX_RESETS

    # Bounds: a full outbox refuses; an oversize payload refuses; nothing stored either way.
    small = Node("dora", clock, max_outbox=3)
    NODES["dora"] = small
    for m in payloads(3):
        small.d.send("bob", m)
    expect(OutboxFull, small.d.send, "bob", b"one too many")
    expect(delivery.DeliveryError, small.d.send, "bob", Sized(delivery.MAX_PAYLOAD + 1))
    assert small.d.pending("bob") == 3
    # Expiry: no receipt within the ttl fails each message, with the reason; none is silent.
    small.d.flush(lambda peer, wire: None)  # published into nowhere (bob offline, queue lost)
    assert statuses(small, SENT) == [1, 2, 3]
    clock.t += delivery.TTL
    small.d.flush(lambda peer, wire: None)
    failed = [(s, r) for (_, s, st, r) in small.status if st == FAILED]
    assert [s for s, _ in failed] == [1, 2, 3] and "no receipt" in failed[0][1], failed
    assert small.d.pending("bob") == 0

    # A starter that says never (revoked, no such device) fails the queue with its reason.
    def never(peer):
        raise Undeliverable("%s is revoked" % peer)
    ghost = Node("ghost", clock)
    ghost.d._starter = never
    ghost.d.send("nobody", b"x")
    ghost.d.flush(lambda peer, wire: None)
    assert [(s, st) for (_, s, st, _) in ghost.status] == [(1, FAILED)] and "revoked" in ghost.status[0][3]

    # Without a starter the application starts sessions itself: nothing goes out before it did,
    # and a reset taken waits for its new session (started()), then the message goes on it.
    erin = NODES["erin"] = Node("erin", clock)
    erin.d._starter = None
    erin.d.send("bob", b"first from erin")
    pump()
    assert erin.d.pending("bob") == 1 and not erin.sessions.has_session("bob")
    erin.start("bob")
    pump()
    assert b.got[-1] == ("erin", b"first from erin") and erin.d.pending("bob") == 0
    for _ in range(100):
        erin.sessions.encrypt("bob", b"lost")
    erin.d.send("bob", b"after erin's gap")
    pump()
    assert erin.d.resets_taken == 1 and erin.d.pending("bob") == 1 and b.got[-1][1] != b"after erin's gap"
    erin.start("bob")
    pump()
    assert erin.d.pending("bob") == 1  # a new session Delivery was not told of
    erin.d.started("bob")
    pump()
    assert b.got[-1] == ("erin", b"after erin's gap") and erin.d.pending("bob") == 0

    # Plaintexts that are no delivery record are refused (typed).
    expect(Malformed, delivery.decode, b"")
    expect(Malformed, delivery.decode, b"\x01short")
    expect(Malformed, delivery.decode, delivery.encode_data(b"\x00" * 8, 0, b""))
    expect(Malformed, delivery.decode, delivery.encode_receipt(b"\x00" * 8, 0, 1 << delivery.BITS))
    # The receiver's bitmap: out of order, duplicates, slides past the window.
    entry = [b"s" * 8, 0, 0]
    for seq, new in ((2, True), (1, True), (2, False), (5, True), (3, True), (4, True), (4, False)):
        assert delivery._mark(entry, seq) is new, (seq, entry)
    assert entry[1:] == [5, 0]
    assert delivery._mark(entry, 5 + delivery.BITS + 3) and entry[1] == 8
    print("ok delivery")


main()
