# End-to-end delivery over sessions (docs/protocol.md §8): message ids, an outbox kept (encrypted
# at rest) until the recipient's encrypted receipt names the message, exactly-once delivery by
# message id across session resets, a window of unacknowledged messages per peer, and signed
# session-reset requests with which a receiver that cannot decrypt asks the sender to start over.
#
# Sans-IO, shared by boards and hosts: the transport hands every inbox frame to handle() and
# publishes what flush() gives it; the application learns each message's fate (sent, delivered,
# failed with a reason) through on_status.
#
#   d = Delivery(sessions, directory, storage_key, device_id, starter=fetch_bundle_and_start)
#   mid = d.send("gateway-1", b"valve 7 open")      # kept in the outbox; OutboxFull when full
#   d.flush(link.send)                               # receipts, reset requests, data in the window
#   d.handle(sender, envelope, deliver)              # deliver(sender, payload) once per message id
#   d.reconnected()                                  # after a reconnect: in-flight data is resent
import struct
import time

from e2ee import crypto
from e2ee.protocol import envelope, ratchet
from e2ee.protocol.keys import UnknownPrekey
from e2ee.protocol.session import MESSAGE_ERRORS, BadRecord, NoSession, PeerRefused, record_name
from e2ee.protocol.store import NotFound, RecordStore

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# §8 record kinds: the first byte of every session plaintext.
DATA = const(1)  # DATA || stream (8) || be32 seq || payload
RECEIPT = const(2)  # RECEIPT || stream (8) || be32 low || be32 bits
_STREAM = const(8)
_HEAD = const(13)
_RECEIPT_SIZE = const(17)
# A receipt says: every seq <= low was delivered, and seq low + 1 + i for each bit i set. 30 bits
# keep the bitmap a small int on 32-bit boards (31-bit small ints).
BITS = const(30)
# Unacknowledged messages per peer on the way (§8 "Flow control"): a message is sent only while
# it is within WINDOW of the oldest unacknowledged one. <= BITS (the receiver's bitmap covers
# the window) and below ratchet.MAX_SKIP (a whole window lost is a gap the ratchet skips).
WINDOW = const(16)
MAX_PAYLOAD = const(4083)  # a 4096-byte session plaintext (envelope.MAX_CIPHERTEXT - 16) - _HEAD
# Seconds: between reset requests to one peer, and between resets accepted from one peer.
RESET_INTERVAL = const(60)
TTL = const(604800)  # seconds an unacknowledged message is kept: the 7-day offline promise
_FAILURES = const(3)  # DecryptionFailed in a row from one peer before a reset is asked
_SIGNATURE = const(64)
# A reset request's payload: k ratchet keys (32 each, k = 1.._RESET_KEYS) || Ed25519 signature (64).
_RESET_KEYS = const(4)
# Reset requests one device sends in a reset_interval, to all peers together (each costs a
# signature; sender ids in frames are anyone's to invent).
MAX_RESETS = const(8)
_RESET_CONTEXT = b"e2ee-iot session reset v1"
_STATE_FORMAT = const(0x61)
_INBOUND = const(2)  # inbound streams remembered per peer: the current one and the one before
# Seconds after which a message on the way that a receipt from its peer does not name counts as
# lost (the peer is up, and receipts what it gets within a flush).
RECEIPT_GRACE = const(30)
# Seconds before the oldest message on the way goes again unasked (a probe: a peer that is up
# answers with a receipt that names everything it holds; doubling per sending up to _RESEND_MAX).
# Covers a whole window the broker lost while this side's link stayed up, and a lost receipt.
PROBE_AFTER = const(60)
_RESEND_MAX = const(3600)  # seconds: the longest wait before a reconnect resends a message again
# Messages the receiver cannot read because its session is gone or out of step: a reset helps.
_RESET_ERRORS = (NoSession, BadRecord, ratchet.TooManySkipped, UnknownPrekey)

# on_status(peer, seq, status, reason) statuses
SENT = "sent"  # published to the broker (PUBACK); reason "resent" when sent again
DELIVERED = "delivered"  # the recipient's receipt names it
FAILED = "failed"  # will not be delivered: reason says why; removed from the outbox


class DeliveryError(ValueError):
    pass


# A session plaintext that is no §8 record, or a reset request of the wrong size.
class Malformed(DeliveryError):
    pass


# The peer's outbox holds max_outbox messages: nothing was stored.
class OutboxFull(DeliveryError):
    pass


# A session-reset request that is not acted on: no session with its sender, a bad signature, a
# ratchet key this side does not send with (a replay, or already reset), or too soon after the last.
class ResetRefused(DeliveryError):
    pass


# Raised by a starter for a peer no session can ever be started with (no such device, revoked):
# its queued messages fail with this reason.
class Undeliverable(DeliveryError):
    pass


# The signed bytes of a reset request: context || u8 len || requester || u8 len || target || keys,
# keys = the k ratchet keys it names (32 bytes each).
def reset_message(requester, target, keys):
    r, t = requester.encode(), target.encode()
    return _RESET_CONTEXT + bytes((len(r),)) + r + bytes((len(t),)) + t + bytes(keys)


def encode_data(stream, seq, payload):
    return bytes((DATA,)) + stream + struct.pack(">I", seq) + payload


def encode_receipt(stream, low, bits):
    return bytes((RECEIPT,)) + stream + struct.pack(">II", low, bits)


# (kind, stream, a, b): DATA (stream, seq, payload) or RECEIPT (stream, low, bits). Malformed.
def decode(plaintext):
    n = len(plaintext)
    if n >= _HEAD and plaintext[0] == DATA:
        seq = struct.unpack(">I", bytes(plaintext[9:13]))[0]
        if seq == 0:
            raise Malformed("data record with seq 0")
        return DATA, bytes(plaintext[1:9]), seq, memoryview(plaintext)[_HEAD:]
    if n == _RECEIPT_SIZE and plaintext[0] == RECEIPT:
        low, bits = struct.unpack(">II", bytes(plaintext[9:17]))
        if bits >> BITS:
            raise Malformed("receipt bitmap wider than %d bits" % BITS)
        return RECEIPT, bytes(plaintext[1:9]), low, bits
    raise Malformed("session plaintext of %d bytes is no delivery record" % n)


# Marks seq delivered in an inbound stream entry [stream, low, bits]; False if it was already.
# A seq past the bitmap slides it: the sender never sends seq n before every seq <= n - WINDOW
# was receipted, so what slides out was delivered.
def _mark(entry, seq):
    low, bits = entry[1], entry[2]
    if seq <= low:
        return False
    if seq - low > BITS:
        shift = seq - BITS - low
        bits = bits >> shift if shift < BITS else 0
        low = seq - BITS
    bit = 1 << (seq - low - 1)
    if bits & bit:
        return False
    bits |= bit
    while bits & 1:
        bits >>= 1
        low += 1
    entry[1], entry[2] = low, bits
    return True


def _seen(entry, seq):
    off = seq - entry[1] - 1
    return off < 0 or (off < BITS and (entry[2] >> off) & 1)


class _Peer:
    def __init__(self, peer, name):
        self.peer = peer
        self.name = name
        self.stream = None  # own outbound stream id, made with the first message
        self.next = 1  # next seq of that stream
        self.inbound = []  # [stream, low, bits] per sending stream of the peer, newest first
        self.box = None  # the outbox store, opened on first use
        self.seqs = None  # outbox entries: seq -> created (seconds)
        self.tx = {}  # seq -> [transmission number, when, count]: on the way since then
        self.sends = {}  # seq -> times sent, for a message due again (its resend backoff)
        self.txn = 0
        self.receipt = []  # streams of the peer a receipt is due for
        self.receipt_wire = None  # (record, envelope) of a receipt whose publish failed: sent as is
        self.wire = None  # (seq, envelope) of data whose publish failed: sent as is, no new key
        self.reset_dh = None  # ratchet keys a reset request is due to name, newest first
        self.reset_sent = None
        self.reset_taken = None
        self.restart = False  # a new session is needed before sending (reset accepted)
        self.retry_at = 0  # when the starter may be tried again
        self.failures = 0

    # Nothing to keep in RAM: no messages, nothing due, and no reset taken within interval (the
    # rate limit would be forgotten with the entry).
    def idle(self, now, interval):
        return (not self.seqs and not self.receipt and not self.reset_dh and not self.restart
                and (self.reset_taken is None or now - self.reset_taken >= interval))


class Delivery:
    # sessions: the SessionManager; directory, storage_key: where the delivery state and the
    # outboxes live (record stores under directory/delivery and directory/outbox/<peer>);
    # device_id: this device's id (it signs reset requests with it); starter(peer): starts a new
    # session with peer from a fresh bundle (raise Undeliverable when it never can), None: the
    # application starts sessions itself; on_status(peer, seq, status, reason); clock() seconds.
    def __init__(self, sessions, directory, storage_key, device_id, starter=None, on_status=None,
                 window=WINDOW, max_outbox=64, ttl=TTL, reset_interval=RESET_INTERVAL, max_peers=16,
                 clock=None):
        if not 0 < window <= BITS or window >= ratchet.MAX_SKIP:
            raise ValueError("window must be 1..%d and below MAX_SKIP" % BITS)
        self.sessions = sessions
        self.device_id = device_id
        self.window = window
        self.max_outbox = max_outbox
        self.ttl = ttl
        self.reset_interval = reset_interval
        self.max_peers = max_peers
        self.resets_asked = 0
        self.resets_taken = 0
        self._resets = []  # when the reset requests of the last interval went
        self._starter = starter
        self._on_status = on_status
        self._clock = clock or time.time
        self._dir = directory
        self._key = storage_key
        self._state = RecordStore(directory + "/delivery", "delivery", storage_key)
        self._peers = {}
        for name in self._state.names():  # peers with messages in their outbox come back
            p = self._state.get_with(name, _load_state)
            if p is not None:
                self._load_box(p)
                for seq in list(p.tx):
                    if seq not in p.seqs:
                        del p.tx[seq]
                if p.seqs:
                    self._peers[p.peer] = p

    def __repr__(self):
        return "<Delivery %s peers=%d>" % (self.device_id, len(self._peers))

    def _peer(self, peer):
        p = self._peers.get(peer)
        if p is not None:
            return p
        name = record_name(peer)
        try:
            p = self._state.get_with(name, _load_state)
        except NotFound:
            p = None
        if p is None or p.peer != peer:  # none, or a record of another id (cannot be: names differ)
            p = _Peer(peer, name)
        if len(self._peers) >= self.max_peers:
            now = self._clock()
            for other in list(self._peers):
                if self._peers[other].idle(now, self.reset_interval):
                    del self._peers[other]
        self._peers[peer] = p
        return p

    def _load_box(self, p):
        if p.box is None:
            p.box = RecordStore(self._dir + "/outbox/" + p.name, "outbox", self._key)
            p.seqs = {}
            for n in p.box.names():
                p.seqs[int(n[:8], 16)] = int(n[9:], 16)
        return p.box

    # State record (§8): _STATE_FORMAT || stream (8, zeros: none yet) || be32 next || u8 n ||
    # n x (stream (8) || be32 low || be32 bits) || u8 m || m x (be32 seq || be32 when || u8 count)
    # (messages on the way: when last sent, how often) || peer id || u8 len(peer id).
    def _save(self, p):
        r = p.peer.encode()
        flight = [(seq, p.tx[seq]) for seq in sorted(p.tx)][:255]
        out = bytearray(16 + 16 * len(p.inbound) + 9 * len(flight) + len(r))
        out[0] = _STATE_FORMAT
        if p.stream is not None:
            out[1:9] = p.stream
        struct.pack_into(">IB", out, 9, p.next, len(p.inbound))
        pos = 14
        for stream, low, bits in p.inbound:
            out[pos:pos + 8] = stream
            struct.pack_into(">II", out, pos + 8, low, bits)
            pos += 16
        out[pos] = len(flight)
        pos += 1
        for seq, t in flight:
            struct.pack_into(">IIB", out, pos, seq, int(t[1]) & 0xFFFFFFFF, min(t[2], 255))
            pos += 9
        out[pos:pos + len(r)] = r
        out[-1] = len(r)
        self._state.put(p.name, out)

    def _status(self, p, seq, status, reason=None):
        if self._on_status is not None:
            self._on_status(p.peer, seq, status, reason)

    # --- sending ---

    # Queues payload for peer in its outbox (on flash before this returns) and returns its
    # message id (seq, per peer). flush() sends it when the window allows.
    def send(self, peer, payload):
        if len(payload) > MAX_PAYLOAD:
            raise DeliveryError("payload of %d bytes exceeds %d" % (len(payload), MAX_PAYLOAD))
        p = self._peer(peer)
        box = self._load_box(p)
        if len(p.seqs) >= self.max_outbox:
            raise OutboxFull("%d messages for %s wait for a receipt" % (len(p.seqs), peer))
        if p.stream is None or p.next > 0xFFFFFFFF:
            if p.seqs:
                raise OutboxFull("stream to %s exhausted: wait for its receipts" % peer)
            p.stream, p.next = crypto.random_bytes(_STREAM), 1
        seq = p.next
        p.next += 1
        self._save(p)  # first: a seq is never given twice
        created = int(self._clock())
        box.put("%08x-%08x" % (seq, created & 0xFFFFFFFF), payload)
        p.seqs[seq] = created
        return seq

    # Messages of peer waiting for a receipt (sent or not).
    def pending(self, peer):
        p = self._peer(peer)
        self._load_box(p)
        return len(p.seqs)

    # The connection came back: messages on the way since before it may have been lost with the
    # broker; each is sent again once the wait since its last sending is over (1 s doubling
    # per sending to an hour, so a flapping link does not fill an offline peer's queue).
    def reconnected(self):
        now = self._clock()
        for p in self._peers.values():
            for seq in list(p.tx):
                txn, when, count = p.tx[seq]
                if now - when >= min(1 << min(count, 12), _RESEND_MAX):
                    del p.tx[seq]
                    p.sends[seq] = count

    # The application started a new session with peer itself (the way without a starter): a
    # reset taken from peer is answered, and what was on the way goes again, on the new session.
    def started(self, peer):
        p = self._peers.get(peer)
        if p is not None:
            p.restart = False
            _resend_all(p)

    # Publishes what is due with publish(peer, envelope_bytes): reset requests, receipts, then
    # data within each peer's window (starting sessions first where needed). A publish that
    # raises stops the flush (the link is down): what it did not send stays due. publish may
    # hand what arrives meanwhile to handle() (a board's MQTT client reads incoming PUBLISH
    # packets while it waits for its PUBACK): a receipt may settle messages mid-flush. Returns
    # the number published.
    def flush(self, publish):
        now = self._clock()
        count = 0
        for p in list(self._peers.values()):
            count += self._flush(p, publish, now)
        return count

    def _flush(self, p, publish, now):
        count = 0
        if (p.reset_dh and (p.reset_sent is None or now - p.reset_sent >= self.reset_interval)
                and self._reset_budget(now)):
            keys = b"".join(p.reset_dh)
            sig = self.sessions.keystore.sign(reset_message(self.device_id, p.peer, keys))
            publish(p.peer, envelope.encode(envelope.Control(envelope.SESSION_RESET, keys + sig)))
            p.reset_dh, p.reset_sent = None, now
            self._resets.append(now)
            self.resets_asked += 1
            count += 1
        if p.seqs is not None:
            self._expire(p, now)
        if p.restart or (p.seqs and not self.sessions.has_session(p.peer)):
            # before receipts: a reset taken means the old session cannot carry them
            if self._starter is None or now < p.retry_at:
                return count
            try:
                self._starter(p.peer)
            except Undeliverable as e:
                self._fail_all(p, "undeliverable: %s" % e)
                return count
            except Exception:  # the service is out of reach: later
                p.retry_at = now + 10
                return count
            p.restart = False
            p.wire = p.receipt_wire = None
            _resend_all(p)
        while p.receipt:
            stream = p.receipt[0]
            entry = _entry(p, stream)
            if entry is None:
                p.receipt.pop(0)
                continue
            record = encode_receipt(stream, entry[1], entry[2])
            if p.receipt_wire is not None and p.receipt_wire[0] == record:
                wire = p.receipt_wire[1]  # a publish that failed: the same bytes, no key spent
            else:
                try:
                    wire = self.sessions.encrypt(p.peer, record)
                except MESSAGE_ERRORS:
                    p.receipt.pop(0)  # no session to carry it: the sender sends again, then it is receipted
                    continue
            p.receipt_wire = (record, wire)
            # no longer due while it is published: data that publish() hands to handle() meanwhile
            # makes it due again (it was popped afterwards, so that data went unreceipted)
            p.receipt.pop(0)
            try:
                publish(p.peer, wire)
            except Exception:
                if stream not in p.receipt:
                    p.receipt.insert(0, stream)  # still due: sent as is at the next flush
                raise
            p.receipt_wire = None
            count += 1
        if not p.seqs:
            return count
        if p.stream is None:  # the delivery record was lost beside its outbox: a new stream
            p.stream, p.next = crypto.random_bytes(_STREAM), max(p.seqs) + 1
            self._save(p)
        self._probe(p, now)
        seqs = sorted(p.seqs)
        limit = seqs[0] + self.window
        sent = False
        for seq in seqs:
            if seq >= limit:
                break
            if seq in p.tx or seq not in p.seqs:  # receipted while an earlier one was published
                continue
            if p.wire is not None and p.wire[0] == seq:
                wire = p.wire[1]  # its publish failed: the same envelope again, no key spent
            else:
                try:
                    wire = self.sessions.encrypt(p.peer, p.box.get_with(
                        "%08x-%08x" % (seq, p.seqs[seq] & 0xFFFFFFFF), _data_writer(p.stream, seq)))
                except PeerRefused as e:  # revoked, expired: what is queued never goes
                    self._fail_all(p, "%s: %s" % (type(e).__name__, e))
                    return count
                p.wire = (seq, wire)
            publish(p.peer, wire)
            p.wire = None
            count += 1
            if seq not in p.seqs:  # its receipt came while publish() waited for the broker
                continue
            p.txn += 1
            p.tx[seq] = [p.txn, now, p.sends.pop(seq, 0) + 1]
            sent = True
            self._status(p, seq, SENT, "resent" if p.tx[seq][2] > 1 else None)
        if sent:
            self._save(p)  # when each was sent: a restart resends only after its wait
        return count

    # The oldest message on the way, unanswered for PROBE_AFTER (doubling per sending), is due
    # again: a peer that is up receipts it and, with it, everything it holds.
    def _probe(self, p, now):
        if not p.tx:
            return
        seq = min(p.tx)
        txn, when, count = p.tx[seq]
        if now - when >= min(PROBE_AFTER << min(count - 1, 6), _RESEND_MAX):
            del p.tx[seq]
            p.sends[seq] = count

    # At most MAX_RESETS reset requests per reset_interval, to all peers together.
    def _reset_budget(self, now):
        self._resets = [t for t in self._resets if now - t < self.reset_interval]
        return len(self._resets) < MAX_RESETS

    def _expire(self, p, now):
        for seq in sorted(p.seqs):
            if now - p.seqs[seq] < self.ttl:
                break
            self._drop(p, seq, FAILED, "no receipt within %d s" % self.ttl)

    def _drop(self, p, seq, status, reason=None):
        try:
            p.box.delete("%08x-%08x" % (seq, p.seqs[seq] & 0xFFFFFFFF))
        except NotFound:
            pass
        del p.seqs[seq]
        p.tx.pop(seq, None)
        p.sends.pop(seq, None)
        self._status(p, seq, status, reason)

    def _fail_all(self, p, reason):
        for seq in sorted(p.seqs):
            self._drop(p, seq, FAILED, reason)

    # --- receiving ---

    # One inbox envelope from sender. Data: deliver(sender, payload) once per message id (a
    # memoryview valid during the call), then the id is recorded and a receipt falls due; a
    # receipt settles the outbox; a reset request (signed) makes the next flush start a new
    # session and resend. Returns the seq of data delivered, else None. Raises what the
    # message's fault is (session.MESSAGE_ERRORS, DeliveryError): the transport acknowledges and
    # drops it; when it means the session is gone or out of step, a reset request falls due.
    def handle(self, sender, data, deliver):
        message = envelope.decode(data)
        if isinstance(message, envelope.Control):
            return self._on_reset(sender, message)
        try:
            plaintext = self.sessions.decrypt(sender, data)
        except MESSAGE_ERRORS as e:
            self._failed(sender, message, e)
            raise
        p = self._peer(sender)
        p.failures = 0
        p.reset_dh = None  # the session reads again: no reset needed
        kind, stream, a, b = decode(plaintext)
        if kind == RECEIPT:
            self._on_receipt(p, stream, a, b)
            return None
        entry = _entry(p, stream)
        if entry is not None and _seen(entry, a):
            _due(p, stream)
            return None  # delivered before (a resend): receipted again
        deliver(sender, b)
        if entry is None:  # a new stream of the peer (its outbox state was new)
            entry = [stream, 0, 0]
        elif entry in p.inbound:
            p.inbound.remove(entry)
        p.inbound.insert(0, entry)  # the stream used last first: an old one leaves first
        del p.inbound[_INBOUND:]
        _mark(entry, a)
        self._save(p)
        _due(p, stream)
        return a

    def _on_receipt(self, p, stream, low, bits):
        if stream != p.stream:
            return  # of an older stream of this side's: nothing of it is kept
        self._load_box(p)
        latest = 0
        for seq in sorted(p.seqs):
            off = seq - low - 1
            if off < 0 or (off < BITS and (bits >> off) & 1):
                t = p.tx.get(seq)
                if t is not None and t[0] > latest:
                    latest = t[0]
                self._drop(p, seq, DELIVERED)
        now = self._clock()
        for seq in list(p.tx):
            # sent before one that arrived, or long enough before this receipt, and not named in
            # it: lost on the way (a broker that lost it, a tail of a stream): due again
            txn, when, count = p.tx[seq]
            if txn < latest or now - when >= RECEIPT_GRACE:
                del p.tx[seq]
                p.sends[seq] = count

    # A message the session could not read: when the session is gone or out of step (or
    # DecryptionFailed _FAILURES times in a row), a reset request naming the ratchet key the
    # message came with falls due; flush() sends it, at most once per reset_interval. While it
    # waits it gathers the last _RESET_KEYS distinct keys of such messages (newest first), so a
    # fleet member forging failures in the peer's name does not replace the real key by one.
    def _failed(self, sender, message, e):
        if isinstance(e, ratchet.DecryptionFailed):
            p = self._peer(sender)
            p.failures += 1
            if p.failures < _FAILURES:
                return
        elif not isinstance(e, _RESET_ERRORS):
            return
        p = self._peer(sender)
        inner = message.message if isinstance(message, envelope.PreKeyMessage) else message
        dh = bytes(inner.dh)
        keys = [k for k in (p.reset_dh or []) if k != dh]
        p.reset_dh = [dh] + keys[:_RESET_KEYS - 1]  # several: a forged failure cannot push the real key out alone
        p.failures = 0

    def _on_reset(self, sender, control):
        payload = control.payload
        k = (len(payload) - _SIGNATURE) // 32
        if control.kind != envelope.SESSION_RESET or not 0 < k <= _RESET_KEYS or len(payload) != 32 * k + _SIGNATURE:
            raise Malformed("session reset request of %d bytes" % len(payload))
        if not self.sessions.has_session(sender):
            raise ResetRefused("no session with %s to reset" % sender)
        keys = bytes(payload[:32 * k])
        try:
            crypto.ed25519_verify(self.sessions.peer_identity(sender)[1],
                                  reset_message(sender, self.device_id, keys), payload[32 * k:])
        except crypto.InvalidSignature:
            raise ResetRefused("reset request not signed by %s's identity" % sender)
        own = self.sessions.sending_key(sender)
        if not [i for i in range(k) if keys[32 * i:32 * i + 32] == own]:
            raise ResetRefused("reset request names no ratchet key this side sends with")
        p = self._peer(sender)
        now = self._clock()
        if p.reset_taken is not None and now - p.reset_taken < self.reset_interval:
            raise ResetRefused("a reset from %s was taken %d s ago" % (sender, now - p.reset_taken))
        p.reset_taken = now
        p.restart = True
        p.retry_at = 0
        _resend_all(p)
        self._load_box(p)
        self.resets_taken += 1
        return None


# Everything of p's on the way goes again (a reset, a new session); each counts as sent before
# (its status says resent).
def _resend_all(p):
    for seq in p.tx:
        p.sends[seq] = p.tx[seq][2]
    p.tx = {}


def _entry(p, stream):
    for e in p.inbound:
        if e[0] == stream:
            return e
    return None


def _due(p, stream):
    if stream not in p.receipt:
        p.receipt.append(stream)


def _data_writer(stream, seq):
    def read(payload):
        return encode_data(stream, seq, payload)
    return read


# The _Peer a state record holds; None for a record of another format.
def _load_state(data):
    if len(data) < 17 or data[0] != _STATE_FORMAT:
        return None
    n = data[-1]
    peer = bytes(data[len(data) - 1 - n:len(data) - 1]).decode()
    p = _Peer(peer, record_name(peer))
    if bytes(data[1:9]) != bytes(_STREAM):
        p.stream = bytes(data[1:9])
    p.next, count = struct.unpack_from(">IB", data, 9)
    pos = 14
    for _ in range(count):
        low, bits = struct.unpack_from(">II", data, pos + 8)
        p.inbound.append([bytes(data[pos:pos + 8]), low, bits])
        pos += 16
    for _ in range(data[pos]):
        seq, when, sent = struct.unpack_from(">IIB", data, pos + 1)
        p.tx[seq] = [0, when, sent]
        pos += 9
    return p
