# Behaviour of the Double Ratchet (docs/protocol.md §3) on MicroPython and CPython: two parties
# built from a fixed SK, long conversations with reordering and drops, replays, the skip limits,
# tampering, serialization, eviction; optionally the known-answer file docs/vectors/ratchet.txt.
# Usage: check_ratchet.py [vectors-file]   (prints "ok ratchet state_max=<bytes> ..." when all
# passed, with forged_x25519=<X25519 calls a forged message with a new ratchet key cost>)
# checks first: it is compiled from source at import, and compiling it after the SDK modules
# are loaded fragments the 120 KB heap enough that the large buffers below may not fit.
from checks import raises_in
import gc
import hashlib
import sys
from binascii import hexlify

from e2ee import crypto
from e2ee.crypto.errors import InvalidLength
from e2ee.protocol import chain_key, ratchet, root_key
from e2ee.protocol.ratchet import (
    DecryptionFailed,
    DuplicateMessage,
    InvalidHeader,
    NoSendingChain,
    RatchetError,
    StateDecodeError,
    TooManySkipped,
    UnsupportedStateVersion,
)

SK = bytes(range(32))
AD = bytes(range(128))  # §2: IK_A || IS_A || IK_B || IS_B, 128 bytes
MAX_STATE_SIZE = 4849  # 113 fixed + 3 optional keys + 128 AD + 5 previous keys + 64 skipped x 68


# Deterministic ratchet-key source: HMAC(seed, be32(counter)), 32 bytes per call.
class Rng:
    def __init__(self, seed):
        self.seed = seed
        self.count = 0

    def __call__(self, n):
        self.count += 1
        return crypto.hmac_sha256(self.seed, self.count.to_bytes(4, "big"))[:n]


# The ratchet keys of a fixed list, in order (vectors).
class FixedKeys:
    def __init__(self, keys):
        self.keys = keys
        self.used = 0

    def __call__(self, n):
        if self.used + n > len(self.keys):
            raise AssertionError("vector ran out of fixed ratchet keys")
        self.used += n
        return self.keys[self.used - n : self.used]


def pair(seed=b"pair"):
    bob_rng = Rng(seed + b"-bob")
    spk = ratchet.generate_keypair(bob_rng)
    alice = ratchet.init_initiator(SK, spk[1], AD, Rng(seed + b"-alice"))
    bob = ratchet.init_responder(SK, spk, AD, bob_rng)
    return alice, bob


raises = raises_in((RatchetError, StateDecodeError))


# SHA-256 of the serialized session, written into one buffer allocated at start (a device
# saves sessions the same way: a 4.8 KB allocation in a fragmented heap can fail).
STATE_BUFFER = bytearray(ratchet.MAX_STATE_SIZE)


def state_digest(session):
    n = session.to_bytes_into(STATE_BUFFER)
    return hashlib.sha256(memoryview(STATE_BUFFER)[:n]).digest()


# The error is raised and the session serializes to the same bytes as before.
def unchanged(error, session, *message):
    before = state_digest(session)
    raises(error, session.decrypt, *message)
    if state_digest(session) != before:
        raise AssertionError("%s changed the session state" % error.__name__)


def deliver(session, message, plaintext):
    got = session.decrypt(*message)
    if bytes(got) != plaintext:
        raise AssertionError("wrong plaintext %r, expected %r" % (bytes(got), plaintext))


def check_constants():
    assert ratchet.MAX_SKIP == 32
    assert ratchet.MAX_STORED_SKIPPED == 64
    assert ratchet.MAX_PREVIOUS_CHAINS == 5
    assert ratchet.HEADER_SIZE == 40
    assert ratchet.STATE_FORMAT == 0x31
    assert root_key.RATCHET_INFO == b"e2ee-iot ratchet v1"
    assert chain_key.MESSAGE_INFO == b"e2ee-iot message v1"
    assert bytes(ratchet.header_bytes(bytes([7]) * 32, 0x01020304, 5)) == bytes([7]) * 32 + bytes(
        [1, 2, 3, 4, 0, 0, 0, 5])


# Runs of 1..6 messages from a random side; in-flight messages arrive in random order, some
# are dropped. Every delivered message must decrypt to its plaintext.
def check_long_conversation(steps):
    alice, bob = pair(b"long")
    choose = Rng(b"schedule")
    parties = ((alice, bob, []), (bob, alice, []))
    sent = delivered = dropped = 0
    # Bob cannot send before Alice's first message arrives.
    raises(NoSendingChain, bob.encrypt, b"too early")
    first = alice.encrypt(b"hello")
    deliver(bob, first, b"hello")
    for step in range(steps):
        r = choose(32)
        sender, receiver, flight = parties[r[0] & 1]
        for i in range(1 + r[1] % 6):
            plaintext = b"m%d-%d" % (step, i) * (r[2] % 5)
            flight.append((sender.encrypt(plaintext), plaintext))
            sent += 1
        # Deliver most in-flight messages of both directions in random order.
        for s, rcv, fl in parties:
            j = 3
            while len(fl) > (r[j] & 3) and j < 30:
                k = r[j + 1] % len(fl)
                message, plaintext = fl.pop(k)
                if r[j + 2] % 17 == 0:
                    dropped += 1
                else:
                    deliver(rcv, message, plaintext)
                    delivered += 1
                j += 3
    for s, rcv, fl in parties:
        for message, plaintext in fl:
            deliver(rcv, message, plaintext)
            delivered += 1
    if dropped == 0 or delivered + dropped != sent:
        raise AssertionError("schedule covered no drops (%d/%d/%d)" % (sent, delivered, dropped))
    return sent, dropped


# One-sided runs: Alice sends 40 in a row, delivered reversed within MAX_SKIP windows.
def check_one_sided_and_out_of_order():
    alice, bob = pair(b"oneway")
    messages = [(alice.encrypt(b"n%d" % i), b"n%d" % i) for i in range(40)]
    order = list(range(32, -1, -1)) + list(range(39, 32, -1))
    for i in order:
        deliver(bob, messages[i][0], messages[i][1])
    assert bob.skipped_count == 0
    # Bob answers with a one-sided run, Alice gets them out of order.
    replies = [(bob.encrypt(b"r%d" % i), b"r%d" % i) for i in range(10)]
    for i in (3, 0, 9, 1, 2, 8, 4, 5, 7, 6):
        deliver(alice, replies[i][0], replies[i][1])
    assert alice.skipped_count == 0


def check_duplicates():
    alice, bob = pair(b"dup")
    m0, m1, m2 = alice.encrypt(b"a"), alice.encrypt(b"b"), alice.encrypt(b"c")
    deliver(bob, m0, b"a")
    unchanged(DuplicateMessage, bob, *m0)  # current chain, N below the next number
    deliver(bob, m2, b"c")
    deliver(bob, m1, b"b")  # from the skipped store
    unchanged(DuplicateMessage, bob, *m1)  # skipped key already used
    reply = bob.encrypt(b"r")
    deliver(alice, reply, b"r")
    unchanged(DuplicateMessage, alice, *reply)
    deliver(bob, alice.encrypt(b"d"), b"d")  # Bob ratchets: Alice's first chain is now old
    unchanged(DuplicateMessage, bob, *m0)  # replay of an earlier chain: no DH step
    unchanged(DuplicateMessage, bob, *m2)


def check_max_skip():
    alice, bob = pair(b"skip")
    messages = [alice.encrypt(b"s%d" % i) for i in range(34)]
    msg = raises(TooManySkipped, bob.decrypt, *messages[33])
    assert "33" in msg and "32" in msg, msg
    unchanged(TooManySkipped, bob, *messages[33])
    deliver(bob, messages[32], b"s32")  # exactly MAX_SKIP skipped keys is allowed
    assert bob.skipped_count == 32
    deliver(bob, messages[33], b"s33")
    # Skipping past MAX_SKIP in the previous chain (PN) is refused as well.
    alice, bob = pair(b"skip-pn")
    old = [alice.encrypt(b"o%d" % i) for i in range(40)]
    deliver(bob, old[0], b"o0")
    deliver(alice, bob.encrypt(b"r"), b"r")
    new = alice.encrypt(b"new")
    assert new[1] == 40
    unchanged(TooManySkipped, bob, *new)
    for i in range(1, 8):
        deliver(bob, old[i], b"o%d" % i)
    deliver(bob, new, b"new")  # now 32 keys remain to skip in the old chain
    assert bob.skipped_count == 32
    deliver(bob, old[39], b"o39")


def flip(data, i, bit=1):
    out = bytearray(data)
    out[i] ^= bit
    return bytes(out)


def check_tampering():
    alice, bob = pair(b"tamper")
    deliver(bob, alice.encrypt(b"first"), b"first")
    for new_chain in (False, True):
        if new_chain:
            deliver(alice, bob.encrypt(b"turn"), b"turn")
        dh, pn, n, ct = alice.encrypt(b"payload to protect")
        unchanged(DecryptionFailed, bob, dh, pn, n, flip(ct, 0))
        unchanged(DecryptionFailed, bob, dh, pn, n, flip(ct, len(ct) - 1, 0x80))  # tag
        unchanged(DecryptionFailed, bob, dh, pn, n, ct[:15])
        unchanged(DecryptionFailed, bob, dh, pn, n, b"")
        unchanged(DecryptionFailed, bob, dh, pn, n + 1, ct)
        unchanged(DecryptionFailed, bob, dh, pn + 1, n, ct)
        unchanged(DecryptionFailed, bob, flip(dh, 5), pn, n, ct)
        unchanged(InvalidHeader, bob, bytes(32), pn, n, ct)  # small-order ratchet key
        unchanged(InvalidHeader, bob, dh[:31], pn, n, ct)
        unchanged(InvalidHeader, bob, dh, -1, n, ct)
        unchanged(InvalidHeader, bob, dh, pn, 1 << 32, ct)
        unchanged(InvalidHeader, bob, dh, pn, b"\x00", ct)
        unchanged(InvalidHeader, bob, bob.ratchet_public, pn, n, ct)  # reflected
        unchanged(TooManySkipped, bob, dh, pn, n + 33, ct)
        # A session with different associated data rejects it.
        other = ratchet.from_bytes(bob.to_bytes())
        other._ad = AD[:-1] + b"\x00"
        raises(DecryptionFailed, other.decrypt, dh, pn, n, ct)
        deliver(bob, (dh, pn, n, ct), b"payload to protect")
    # Errors name no key bytes.
    msg = raises(DecryptionFailed, bob.decrypt, *alice.encrypt(b"x")[:3], b"\x00" * 20)
    assert hexlify(SK).decode()[:8] not in msg


# Counts the X25519 operations (x25519 and x25519_base) of the crypto interface the ratchet
# calls, while `fn(*args)` runs; returns (count, result or the error raised).
def x25519_calls(fn, *args):
    count = [0]
    plain, base = crypto.x25519, crypto.x25519_base

    def counted(f):
        def call(*a):
            count[0] += 1
            return f(*a)
        return call

    crypto.x25519, crypto.x25519_base = counted(plain), counted(base)
    try:
        result = fn(*args)
    except RatchetError as e:
        result = e
    finally:
        crypto.x25519, crypto.x25519_base = plain, base
    return count[0], result


# A forged message with a new ratchet key costs one X25519 (the receiving chain its message key
# needs), no rng call and no state change; the new own key pair and sending chain (X25519 base
# and X25519) follow only after the AEAD check passed (§3, D16: each stored state tried).
def check_forged_message_cost():
    alice, bob = pair(b"forged")
    forger = ratchet.generate_keypair(Rng(b"forger"))[1]
    fresh = ratchet.init_responder(SK, ratchet.generate_keypair(Rng(b"fresh")), AD, Rng(b"fresh-2"))
    deliver(bob, alice.encrypt(b"first"), b"first")
    deliver(alice, bob.encrypt(b"turn"), b"turn")
    genuine = alice.encrypt(b"new chain")  # Alice's second ratchet key: new to Bob
    forged = (
        (bob, (forger, 0, 0, bytes(40))),  # a foreign key, receiving chain present
        (bob, (forger, 3, 5, bytes(40))),  # skips in the old and the new chain
        (bob, genuine[:3] + (flip(genuine[3], len(genuine[3]) - 1),)),  # a genuine header
        (fresh, (forger, 0, 0, bytes(40))),  # a responder before its first message
    )
    worst = 0
    for session, message in forged:
        before, rng_calls = state_digest(session), session._rng.count
        calls, result = x25519_calls(session.decrypt, *message)
        if not isinstance(result, DecryptionFailed):
            raise AssertionError("forged message gave %r" % (result,))
        if calls != 1:
            raise AssertionError("forged message with a new ratchet key cost %d X25519, expected 1" % calls)
        worst = max(worst, calls)
        if session._rng.count != rng_calls or state_digest(session) != before:
            raise AssertionError("forged message changed the session or drew from the rng")
    # The genuine message still performs the whole DH ratchet step, once.
    rng_calls = bob._rng.count
    calls, result = x25519_calls(bob.decrypt, *genuine)
    if bytes(result) != b"new chain" or calls != 3 or bob._rng.count != rng_calls + 1:
        raise AssertionError("genuine new-chain message: %d X25519, %r" % (calls, result))
    calls, result = x25519_calls(bob.decrypt, *alice.encrypt(b"same chain"))
    if bytes(result) != b"same chain" or calls != 0:
        raise AssertionError("message of the current chain cost %d X25519" % calls)
    return worst


def check_serialization():
    alice, bob = pair(b"ser")
    fresh = bob.to_bytes()  # responder before its first message: no DHr, CKs, CKr
    assert ratchet.from_bytes(fresh).to_bytes() == fresh
    messages = [alice.encrypt(b"x%d" % i) for i in range(5)]
    deliver(bob, messages[4], b"x4")
    deliver(alice, bob.encrypt(b"y"), b"y")
    # Mid-conversation round trip of both parties; they carry on as if nothing happened.
    a_state, b_state = alice.to_bytes(), bob.to_bytes()
    alice = ratchet.from_bytes(a_state, alice._rng)
    bob = ratchet.from_bytes(bytearray(b_state), bob._rng)
    assert alice.to_bytes() == a_state and bob.to_bytes() == b_state
    deliver(bob, messages[1], b"x1")
    deliver(bob, alice.encrypt(b"z"), b"z")
    deliver(alice, bob.encrypt(b"w"), b"w")
    deliver(bob, messages[0], b"x0")
    # Malformed records raise typed errors.
    state = bob.to_bytes()
    raises(StateDecodeError, ratchet.from_bytes, state[:-1])
    raises(StateDecodeError, ratchet.from_bytes, state + b"\x00")
    raises(StateDecodeError, ratchet.from_bytes, state[:50])
    raises(StateDecodeError, ratchet.from_bytes, b"")
    raises(StateDecodeError, ratchet.from_bytes, "text")
    raises(UnsupportedStateVersion, ratchet.from_bytes, b"\x32" + state[1:])
    raises(StateDecodeError, ratchet.from_bytes, state[:1] + b"\x08" + state[2:])
    raises(StateDecodeError, ratchet.from_bytes, state[:1] + b"\x02" + state[2:])  # CKs without DHr
    raises(StateDecodeError, ratchet.from_bytes, state[:112] + b"\x41" + state[113:])  # 65 skipped
    raises(StateDecodeError, ratchet.from_bytes, state[:111] + b"\x06" + state[112:])  # 6 previous
    # repr shows counters only.
    text = repr(bob)
    for key in (bob._rk, bob._dhs, bob._cks, bob._ckr):
        assert hexlify(key).decode()[:8] not in text
    assert len(text) < 70, text


# Fills the skipped store past MAX_STORED_SKIPPED: the oldest keys are dropped first.
def check_eviction():
    alice, bob = pair(b"evict")
    first = [alice.encrypt(b"a%d" % i) for i in range(32)][:4] + [None] * 28 + [alice.encrypt(b"a32")]
    deliver(bob, first[32], b"a32")  # 32 skipped, chain 1
    deliver(alice, bob.encrypt(b"r1"), b"r1")
    second = [alice.encrypt(b"b%d" % i) for i in range(32)][:1] + [None] * 31 + [alice.encrypt(b"b32")]
    deliver(bob, second[32], b"b32")  # 32 more, chain 2: the store is full
    assert bob.skipped_count == 64
    deliver(alice, bob.encrypt(b"r2"), b"r2")
    third = [alice.encrypt(b"c%d" % i) for i in range(4)]
    deliver(bob, third[3], b"c3")  # 3 more: a0, a1, a2 are dropped
    assert bob.skipped_count == 64
    for i in range(3):
        unchanged(DuplicateMessage, bob, *first[i])
    deliver(bob, first[3], b"a3")
    deliver(bob, second[0], b"b0")
    deliver(bob, third[0], b"c0")
    assert bob.skipped_count == 61


# The largest state: all keys present, 128-byte AD, 5 previous keys, 64 skipped keys.
def check_max_state_size():
    alice, bob = pair(b"size")
    for i in range(6):
        deliver(bob, alice.encrypt(b"p"), b"p")
        deliver(alice, bob.encrypt(b"q"), b"q")
    for i in range(2):
        burst = [alice.encrypt(b"s") for _ in range(33)]
        deliver(bob, burst[32], b"s")
        deliver(alice, bob.encrypt(b"q"), b"q")
    deliver(bob, alice.encrypt(b"p"), b"p")
    assert len(bob._previous) == ratchet.MAX_PREVIOUS_CHAINS
    assert bob.skipped_count == ratchet.MAX_STORED_SKIPPED
    size = bob.to_bytes_into(STATE_BUFFER)
    if size != MAX_STATE_SIZE or bob.serialized_size() != size:
        raise AssertionError("largest state is %d bytes, expected %d" % (size, MAX_STATE_SIZE))
    digest = state_digest(bob)
    bob = None
    gc.collect()
    restored = ratchet.from_bytes(memoryview(STATE_BUFFER)[:size])
    if state_digest(restored) != digest:
        raise AssertionError("largest state does not round-trip")
    try:
        restored.to_bytes_into(memoryview(STATE_BUFFER)[: size - 1])
        raise AssertionError("short state buffer accepted")
    except InvalidLength:
        pass
    assert ratchet.MAX_STATE_SIZE == 4976  # with the longest AD (255 bytes)
    return size


# docs/vectors/ratchet.txt: KDF known answers, then a conversation replayed event by event
# with the exact header fields, ciphertexts and final serialized states.
def check_vectors(path):
    import vectorfile

    sessions = {}
    messages = {}
    count = 0
    for rec in vectorfile.records(path):
        kind = rec["id"]
        count += 1
        if kind == "kdf_rk":
            assert root_key.advance(rec["rk"], rec["dh_out"]) == (rec["new_rk"], rec["ck"])
        elif kind == "kdf_ck":
            ck, mk = chain_key.advance(rec["ck"])
            assert (bytes(ck), bytes(mk)) == (rec["next_ck"], rec["mk"])
        elif kind == "message_key":
            key, nonce = chain_key.expand(rec["mk"])
            assert (bytes(key), bytes(nonce)) == (rec["key"], rec["nonce"])
        elif kind == "setup":
            spk = (rec["bob_spk"], crypto.x25519_base(rec["bob_spk"]))
            assert bytes(spk[1]) == rec["bob_spk_pub"]
            sessions["a"] = ratchet.init_initiator(rec["sk"], spk[1], rec["ad"], FixedKeys(rec["alice_keys"]))
            sessions["b"] = ratchet.init_responder(rec["sk"], spk, rec["ad"], FixedKeys(rec["bob_keys"]))
        elif kind.startswith("send-"):
            dh, pn, n, ct = sessions[kind[5]].encrypt(rec["pt"])
            got = (bytes(dh), pn, n, bytes(ct))
            want = (rec["dh"], vectorfile.as_int(rec["pn"]), vectorfile.as_int(rec["n"]), rec["ct"])
            if got != want:
                raise AssertionError("%s msg %d: got %r" % (kind, rec["msg"][0], got))
            messages[rec["msg"][0]] = got
        elif kind.startswith("recv-"):
            session = sessions[kind[5]]
            message = messages[rec["msg"][0]]
            if rec.get("result") == "invalid":
                unchanged(DuplicateMessage, session, *message)
            else:
                deliver(session, message, rec["pt"])
        elif kind.startswith("state-"):
            if sessions[kind[6]].to_bytes() != rec["state"]:
                raise AssertionError("%s differs" % kind)
            assert ratchet.from_bytes(rec["state"]).to_bytes() == rec["state"]
        else:
            raise AssertionError("unknown vector record %s" % kind)
    if count < 10 or len(messages) < 9:
        raise AssertionError("vector file too short: %d records" % count)
    return count


# Each check runs after a collection, as firmware would run one session at a time.
def run(check, *args):
    gc.collect()
    return check(*args)


# Loads the crypto backend modules the ratchet uses into the heap before any session exists,
# as firmware does at boot, so long-lived code does not end up between session buffers.
def warm_up():
    gc.collect()
    shared = crypto.x25519(bytes([1]) * 32, crypto.x25519_base(bytes([2]) * 32))
    sealed = crypto.aead_encrypt(shared, bytes(12), b"")
    crypto.aead_decrypt(shared, bytes(12), sealed)
    crypto.hkdf_sha256(shared, None, b"", 44)
    gc.collect()


def main():
    warm_up()
    run(check_constants)
    sent, dropped = run(check_long_conversation, 60)
    run(check_one_sided_and_out_of_order)
    run(check_duplicates)
    run(check_max_skip)
    run(check_tampering)
    forged = run(check_forged_message_cost)
    run(check_serialization)
    run(check_eviction)
    size = run(check_max_state_size)
    vectors = check_vectors(sys.argv[1]) if len(sys.argv) > 1 else 0
    print("ok ratchet state_max=%d messages=%d dropped=%d vectors=%d forged_x25519=%d" % (
        size, sent, dropped, vectors, forged))


main()
