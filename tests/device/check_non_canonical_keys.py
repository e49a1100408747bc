# Audit finding 7 (issue 12): X25519 ignores bit 255 of a public key and reduces it mod
# p = 2^255 - 19, so flipping bit 255 of a PreKeyMessage's base key gave the same key under other
# bytes: the duplicate check (a state answered from that base key) missed it, X3DH ran again and
# the message decrypted a second time, its stale state becoming current. Public keys are now
# refused unless canonical, in the envelope codec first, and at every use. On MicroPython and
# CPython:   check_non_canonical_keys.py <empty directory>    prints "ok non-canonical keys"
import os
import sys

from checks import raises_in
from e2ee.protocol import envelope, keys, ratchet, x3dh
from e2ee.protocol.envelope import canonical_ed25519, canonical_x25519
from e2ee.protocol.session import MESSAGE_ERRORS, SessionManager

raises = raises_in(MESSAGE_ERRORS + (keys.KeyFormatError, envelope.EnvelopeError))
d = sys.argv[1]
P = 2**255 - 19


def le(value):
    return bytes([(value >> (8 * i)) & 0xFF for i in range(32)])


def flipped(key):
    return key[:31] + bytes([key[31] ^ 0x80])


def files(who):
    out = []
    for kind in ("sessions", "keys"):
        path = d + "/" + who + "/" + kind
        for name in sorted(os.listdir(path)):
            with open(path + "/" + name, "rb") as f:
                out.append((kind, name, f.read()))
    return out


# The encodings: X25519 u < p with bit 255 clear; Ed25519 y < p, and no sign bit on x = 0.
for value, x, e in ((0, 1, 1), (9, 1, 1), (P - 1, 1, 1), (P, 0, 0), (P + 18, 0, 0), (2**255 - 1, 0, 0),
                    (2**255 + 9, 0, 1), (2**255 + 1, 0, 0), (2**255 + P - 1, 0, 0), (2**255 + P, 0, 0)):
    assert (canonical_x25519(le(value)), canonical_ed25519(le(value))) == (x == 1, e == 1), value

alice = SessionManager.create(d + "/alice", bytes(32), 1)
bob = SessionManager.create(d + "/bob", bytes(range(32)), 1)
alice.start("bob", bob.bundle(None))  # no one-time prekey: nothing is spent that stops a replay
first = bytes(alice.encrypt("bob", b"open valve 7"))
base_key = bytes(envelope.decode(first).base_key)
assert bytes(bob.decrypt("alice", first)) == b"open valve 7"
raises(ratchet.DuplicateMessage, bob.decrypt, "alice", first)
# The same PreKeyMessage with bit 255 of its base key set: the same X25519 key, other bytes.
at = first.find(base_key)
replay = bytearray(first)
replay[at + 31] ^= 0x80
before = files("bob")
try:
    again = bob.decrypt("alice", replay)
except envelope.BadField:
    again = None
assert again is None, "the replay with bit 255 set decrypted again: %r" % bytes(again)
assert files("bob") == before, "the refused replay changed bob's records"
raises(envelope.BadField, envelope.decode, replay)
# Every other way in refuses it too: X3DH, the ratchet header, bundles, and encoding it.
ik, is_ = alice.keystore.ik_pub, alice.keystore.is_pub
spk = bob.keystore.spk_id
raises(x3dh.InvalidPublicKey, x3dh.respond, bob.keystore, ik, is_, flipped(base_key), spk)
raises(x3dh.InvalidPublicKey, x3dh.respond, bob.keystore, flipped(ik), is_, base_key, spk)
raises(x3dh.InvalidPublicKey, x3dh.respond, bob.keystore, ik, le(2**255 + 1), base_key, spk)
state = ratchet.init_responder(bytes(32), bob.keystore.signed_prekey_pair(spk), bytes(128))
raises(ratchet.InvalidHeader, state.decrypt, flipped(base_key), 0, 0, bytes(16))
raises(ratchet.InvalidHeader, state.decrypt, le(P), 0, 0, bytes(16))
b = bob.bundle(None)
for args in ((flipped(b.ik_pub), b.is_pub, b.spk_id, b.spk_pub, b.spk_sig),
             (b.ik_pub, le(P + 3), b.spk_id, b.spk_pub, b.spk_sig),
             (b.ik_pub, b.is_pub, b.spk_id, flipped(b.spk_pub), b.spk_sig),
             (b.ik_pub, b.is_pub, b.spk_id, b.spk_pub, b.spk_sig, 7, le(P))):
    raises(keys.InvalidBundle, keys.PrekeyBundle, *args)
message = envelope.decode(first)
message.base_key = flipped(base_key)
raises(envelope.EncodeError, envelope.encode, message)
# The session goes on.
assert bytes(alice.decrypt("bob", bob.encrypt("alice", b"opened"))) == b"opened"
print("ok non-canonical keys")
