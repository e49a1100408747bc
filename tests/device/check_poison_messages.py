# Audit finding 6 (issue 12): a message a device cannot use raises one of
# session.MESSAGE_ERRORS, never a store or Python error, and changes nothing stored; on
# MicroPython and CPython.  check_poison_messages.py <empty directory>  prints "ok poison messages"
import os
import sys

from e2ee.protocol import envelope, ratchet, session, store
from e2ee.protocol.session import MESSAGE_ERRORS, BadPeerId, SessionManager

d = sys.argv[1]
alice = SessionManager.create(d + "/alice", bytes(32), 2)
bob = SessionManager.create(d + "/bob", bytes(range(32)), 2)
bundle = bob.bundle(None)
alice.start("bob", bundle)
first = alice.encrypt("bob", b"hello bob")


def files():
    out = []
    for who in ("alice", "bob"):
        for kind in ("sessions", "keys"):
            path = d + "/" + who + "/" + kind
            for name in sorted(os.listdir(path)):
                with open(path + "/" + name, "rb") as f:
                    out.append((who, kind, name, f.read()))
    return out


# Each poison message raises the typed error named, one of MESSAGE_ERRORS, and no file changes.
def refused(manager, sender, data, error):
    before = files()
    try:
        manager.decrypt(sender, data)
    except MESSAGE_ERRORS as e:
        assert isinstance(e, error), "%s: %s, expected %s" % (sender, type(e).__name__, error.__name__)
        assert files() == before, "a refused message changed a stored record"
        return
    raise AssertionError("no error for sender %r" % (sender,))


# Sender names no session can have: typed BadPeerId (was store.BadName for "").
for sender in ("", "a/b", "x" * 65, "caf\u00e9", "bob\n", b"bob", None):
    refused(bob, sender, first, BadPeerId)
assert issubclass(BadPeerId, session.SessionError)
# A RatchetMessage whose dh is Bob's signed prekey, Alice's DHr before she has a receiving chain
# (was TypeError: CKr None), at N 0 and beyond, PN 0 and beyond.
for pn, n in ((0, 0), (0, 1), (3, 2)):
    poison = envelope.encode(envelope.RatchetMessage(bundle.spk_pub, pn, n, bytes(40)))
    refused(alice, "bob", poison, ratchet.InvalidHeader)
# Its own ratchet key and bytes that are no envelope: typed as before.
own = alice._load("bob").states[0].session(None).ratchet_public
refused(alice, "bob", envelope.encode(envelope.RatchetMessage(own, 0, 0, bytes(40))), ratchet.InvalidHeader)
refused(alice, "bob", b"\x01\xff garbage", envelope.DecodeError)
stranger = bytearray(os.urandom(32))
stranger[31] &= 0x7F  # a canonical X25519 key (finding 7)
refused(alice, "nobody", envelope.encode(envelope.RatchetMessage(stranger, 0, 0, bytes(40))),
        session.NoSession)
# The store's and the machine's trouble is not the message's: never in MESSAGE_ERRORS.
for error in (OSError(5), MemoryError(), store.Corrupted("x"), store.NotFound("x"), TypeError("x")):
    assert not isinstance(error, MESSAGE_ERRORS), type(error).__name__
# The session still works: Bob answers, Alice reads him.
assert bytes(bob.decrypt("alice", first)) == b"hello bob"
assert bytes(alice.decrypt("bob", bob.encrypt("alice", b"hi alice"))) == b"hi alice"
print("ok poison messages")
