# The Double Ratchet's corner cases as docs/protocol.md §3 "Corner cases" states them, on
# MicroPython and CPython: no receiving chain yet, a header carrying the signed prekey, unknown
# and old ratchet keys, replays after the skipped store dropped a key, counters at their maximum.
# Every refusal leaves the session's serialized state unchanged. Prints "ok ratchet corners".
from checks import raises_in
import gc
import hashlib
import struct

from e2ee import crypto

crypto.default.resolve()
from e2ee.protocol import ratchet  # noqa: E402
from e2ee.protocol.ratchet import (  # noqa: E402
    DecryptionFailed, DuplicateMessage, InvalidHeader, NoSendingChain, RatchetError, StateDecodeError,
    TooManySkipped,
)

raises = raises_in((RatchetError, StateDecodeError))
SK, AD = bytes(range(32)), bytes(range(128))
LAST = 0xFFFFFFFF


class Rng:
    def __init__(self, seed):
        self.seed, self.count = seed, 0

    def __call__(self, n):
        self.count += 1
        return crypto.hmac_sha256(self.seed, self.count.to_bytes(4, "big"))[:n]


def pair():
    bob_rng = Rng(b"bob")
    spk = ratchet.generate_keypair(bob_rng)
    alice = ratchet.init_initiator(SK, spk[1], AD, Rng(b"alice"))
    return alice, ratchet.init_responder(SK, spk, AD, bob_rng), spk


# The serialized state's digest, through one buffer allocated at start (as check_ratchet.py).
STATE_BUFFER = bytearray(ratchet.MAX_STATE_SIZE)


def digest(session):
    return hashlib.sha256(memoryview(STATE_BUFFER)[:session.to_bytes_into(STATE_BUFFER)]).digest()


def unchanged(error, session, *message):
    before = digest(session)
    raises(error, session.decrypt, *message)
    assert digest(session) == before, "state changed by a refused message"


def with_counter(session, offset, value):  # offset 98: Ns, 102: Nr (§3 serialized session)
    state = bytearray(session.to_bytes())
    struct.pack_into(">I", state, offset, value)
    return ratchet.from_bytes(bytes(state), Rng(b"again"))


def no_receiving_chain():
    alice, bob, spk = pair()
    for pn, n in ((0, 0), (0, 5), (3, 0)):  # Alice: DHr = SPK_B.pub, no CKr
        unchanged(InvalidHeader, alice, spk[1], pn, n, bytes(40))
    raises(NoSendingChain, bob.encrypt, b"x")  # Bob before his first message
    unchanged(InvalidHeader, bob, spk[1], 0, 0, bytes(40))  # his own DHs.pub: the signed prekey
    m0 = alice.encrypt(b"m0")
    assert bytes(bob.decrypt(*m0)) == b"m0"
    r = [bob.encrypt(b"r%d" % i) for i in range(3)]
    # Alice still has no receiving chain: the PN limit applies to Bob's first key, nothing is skipped
    unchanged(TooManySkipped, alice, r[0][0], 33, 0, r[0][3])
    assert bytes(alice.decrypt(*r[2])) == b"r2" and alice.skipped_count == 2
    return alice, bob, spk, r


def signed_prekey_later(alice, bob, spk, r):
    # Alice: SPK_B.pub is now her oldest previous peer key: a replay, no DH step
    unchanged(DuplicateMessage, alice, spk[1], 0, 0, bytes(40))
    # Bob: his signed prekey is no longer his DHs: an unknown peer key, the AEAD fails
    assert bytes(bob.decrypt(*alice.encrypt(b"after r"))) == b"after r"
    unchanged(DecryptionFailed, bob, spk[1], 0, 0, bytes(40))
    # five more chains on Alice's side push SPK_B.pub out of her previous keys
    for i in range(5):
        assert bytes(bob.decrypt(*alice.encrypt(b"a%d" % i))) == b"a%d" % i
        assert bytes(alice.decrypt(*bob.encrypt(b"b%d" % i))) == b"b%d" % i
    unchanged(DecryptionFailed, alice, spk[1], 0, 0, bytes(40))
    unchanged(TooManySkipped, alice, spk[1], 0, 33, bytes(40))


def replays():
    alice, bob, _ = pair()
    sent = [alice.encrypt(b"m%d" % i) for i in range(33)]
    first, fifth, last = sent[0], sent[5], sent[32]
    sent = None
    assert bytes(bob.decrypt(*last)) == b"m32" and bob.skipped_count == 32
    assert bytes(bob.decrypt(*fifth)) == b"m5"
    unchanged(DuplicateMessage, bob, *fifth)  # its skipped key was used
    unchanged(DuplicateMessage, bob, *last)  # below the chain's next number
    # 64 keys fill the store: two more chains of 32 skipped keys each drop the oldest ones
    for _ in range(2):
        assert bytes(alice.decrypt(*bob.encrypt(b"reply"))) == b"reply"
        newest = alice.encrypt(b"n0")
        for i in range(1, 32):
            alice.encrypt(b"n%d" % i)
        gc.collect()
        assert bytes(bob.decrypt(*alice.encrypt(b"n32"))) == b"n32"
    assert bob.skipped_count == ratchet.MAX_STORED_SKIPPED
    unchanged(DuplicateMessage, bob, *first)  # dropped from the store, its chain is a previous one
    assert bytes(bob.decrypt(*newest)) == b"n0"  # the newest skipped keys are kept


def counters():
    alice, bob, _ = pair()
    assert bytes(bob.decrypt(*alice.encrypt(b"m0"))) == b"m0"
    alice, bob = with_counter(alice, 98, LAST - 1), with_counter(bob, 102, LAST - 1)
    dh = alice.ratchet_public
    for pn, n in ((1 << 32, 0), (0, 1 << 32), (-1, 0)):
        unchanged(InvalidHeader, bob, dh, pn, n, bytes(40))
    for n in (LAST - 1, LAST):  # the last two messages of a sending chain
        message = alice.encrypt(b"n")
        assert message[2] == n and bytes(bob.decrypt(*message)) == b"n"
    raises(RatchetError, alice.encrypt, b"one more")


signed_prekey_later(*no_receiving_chain())
gc.collect()
replays()
gc.collect()
counters()
print("ok ratchet corners")
