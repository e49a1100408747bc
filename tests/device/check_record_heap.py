# A maximal session record (docs/protocol.md §3, §5, §6: MAX_STORED_SKIPPED skipped keys, all
# MAX_PREVIOUS_CHAINS previous keys) loads and saves on a fragmented heap, on MicroPython and
# CPython. Usage: check_record_heap.py <empty directory>   (prints "ok record heap")
# On MicroPython the free heap is cut into runs of at most HOLE bytes, a quarter of MAX_RECORD,
# before the decrypt that fills the record: a save or load that needs the record in one block
# (the store before it serialized and encrypted in place) fails with MemoryError.
import gc
import hashlib
import os
import sys

from heapcut import allocatable, fragment, plug

from e2ee.protocol import ratchet
from e2ee.protocol.session import SessionManager
from e2ee.protocol.store import MAX_RECORD

KEY = bytes(range(32))
HOLE = MAX_RECORD // 4
# Bob's record: header (66), responder base key (32), the ratchet state with the §2 AD (128), the
# peer id "alice" and its length.
MAX_SESSION_RECORD = 66 + 32 + ratchet.MAX_STATE_SIZE - (ratchet.MAX_AD_SIZE - 128) + 1 + len("alice")
MICROPYTHON = sys.implementation.name == "micropython"


# SHA-256 of a peer's encrypted record file, read 256 bytes at a time (reading it whole would
# need a block of its size).
def digest(manager, peer):
    h = hashlib.sha256()
    buf = bytearray(256)
    with open(manager._sessions.directory + "/" + peer, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                return h.digest()
            h.update(memoryview(buf)[:n])


# The plaintext length of a peer's record (its file less format byte, nonce and tag).
def record_size(manager, peer):
    return os.stat(manager._sessions.directory + "/" + peer)[6] - 29


def main(root):
    alice = SessionManager.create(root + "/alice", KEY, one_time=1)
    bob = SessionManager.create(root + "/bob", KEY, one_time=1)
    alice.start("bob", bob.bundle(bob.keystore.one_time_prekey_ids()[0]))
    bob.decrypt("alice", alice.encrypt("bob", b"hello"))
    # Round trips until bob remembers MAX_PREVIOUS_CHAINS earlier ratchet keys of alice.
    for i in range(ratchet.MAX_PREVIOUS_CHAINS + 1):
        alice.decrypt("bob", bob.encrypt("alice", b"ping %d" % i))
        bob.decrypt("alice", alice.encrypt("bob", b"pong %d" % i))
    # Two bursts of MAX_SKIP + 1 messages of which bob gets the last: MAX_STORED_SKIPPED skipped.
    assert ratchet.MAX_STORED_SKIPPED == 2 * ratchet.MAX_SKIP
    sent = [alice.encrypt("bob", b"reading %d" % i) for i in range(2 * ratchet.MAX_SKIP + 2)]
    keep = [sent[0], sent[ratchet.MAX_SKIP], sent[-1]]
    sent = None
    assert bytes(bob.decrypt("alice", keep[1])) == b"reading %d" % ratchet.MAX_SKIP
    tampered = bytearray(keep[2])
    tampered[-1] ^= 1

    filler = None
    if MICROPYTHON:
        filler = fragment(HOLE)
        plug(filler[1], HOLE)
        assert not allocatable(HOLE), "heap not fragmented"
    # The decrypt that fills the record to its largest size, then a reply: both load and save it.
    assert bytes(bob.decrypt("alice", keep[2])) == b"reading %d" % (2 * ratchet.MAX_SKIP + 1)
    assert record_size(bob, "alice") == MAX_SESSION_RECORD
    bob.encrypt("alice", b"a reply from a full record")
    # Failures leave the stored record unchanged: a replay, a tampered message.
    before = digest(bob, "alice")
    for bad, error in ((keep[2], ratchet.DuplicateMessage), (tampered, ratchet.RatchetError)):
        try:
            bob.decrypt("alice", bad)
            raise AssertionError("accepted a message it must refuse")
        except error:
            pass
        assert digest(bob, "alice") == before, "record changed by a failed decrypt"
    # After a reboot: a skipped key is used once, then the message is a duplicate.
    bob = SessionManager.open(root + "/bob", KEY)
    assert bytes(bob.decrypt("alice", keep[0])) == b"reading 0"
    try:
        bob.decrypt("alice", keep[0])
        raise AssertionError("a skipped message key was used twice")
    except ratchet.DuplicateMessage:
        pass
    assert record_size(bob, "alice") == MAX_SESSION_RECORD - 68
    filler = None  # noqa: F841
    print("ok record heap")


main(sys.argv[1])
