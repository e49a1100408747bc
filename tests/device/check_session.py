# SessionManager behaviour on MicroPython and CPython (docs/protocol.md §6).
# Usage: check_session.py <empty directory>
import os
import sys

from e2ee.protocol import envelope, ratchet
from e2ee.protocol.keys import KeyAgreementError
from e2ee.protocol.session import NoSession, SessionError, SessionManager, UntrustedIdentity

TYPED = (envelope.DecodeError, ratchet.RatchetError, KeyAgreementError, SessionError)
KEY = bytes(range(32))


def raw(manager, peer):
    # The encrypted file of a peer's session exactly as on flash.
    with open(manager._sessions.directory + "/" + peer, "rb") as f:
        return f.read()


def expect_typed(fn, *args):
    try:
        fn(*args)
    except TYPED as e:
        return e
    raise AssertionError("no typed error")


def unchanged_after_failure(manager, peer, data):
    before = raw(manager, peer)
    keys_before = manager.keystore.to_bytes()
    err = expect_typed(manager.decrypt, peer, data)
    assert raw(manager, peer) == before, "session record changed"
    assert manager.keystore.to_bytes() == keys_before, "keystore changed"
    return err


def main(root):
    alice = SessionManager.create(root + "/alice", KEY, one_time=3)
    bob = SessionManager.create(root + "/bob", KEY, one_time=3)
    opk = bob.keystore.one_time_prekey_ids()[0]
    alice.start("bob", bob.bundle(opk))
    first = alice.encrypt("bob", b"hello bob")
    assert isinstance(envelope.decode(first), envelope.PreKeyMessage)

    # A forged first message (tampered ciphertext) does not burn the one-time prekey.
    forged = bytearray(first)
    forged[-1] ^= 1
    expect_typed(bob.decrypt, "alice", forged)
    assert opk in bob.keystore.one_time_prekey_ids() and not bob.has_session("alice")
    assert bytes(bob.decrypt("alice", first)) == b"hello bob"
    assert opk not in bob.keystore.one_time_prekey_ids(), "used one-time prekey kept"
    # Alice keeps sending PreKeyMessages until Bob answers; Bob decrypts them in his session.
    second = alice.encrypt("bob", b"again")
    assert isinstance(envelope.decode(second), envelope.PreKeyMessage)
    assert bytes(bob.decrypt("alice", second)) == b"again"
    reply = bob.encrypt("alice", b"hi alice")
    assert isinstance(envelope.decode(reply), envelope.RatchetMessage)
    assert bytes(alice.decrypt("bob", reply)) == b"hi alice"
    assert isinstance(envelope.decode(alice.encrypt("bob", b"x")), envelope.RatchetMessage)

    # Tampering with any byte of an envelope: typed error, stored state byte-for-byte unchanged.
    env = bob.encrypt("alice", b"tamper with me")
    for i in range(len(env)):
        bad = bytearray(env)
        bad[i] ^= 0x01 << (i % 8)
        unchanged_after_failure(alice, "bob", bad)
    for cut in (0, 1, len(env) // 2, len(env) - 1):
        unchanged_after_failure(alice, "bob", env[:cut])
    assert bytes(alice.decrypt("bob", env)) == b"tamper with me"
    # Replay.
    err = unchanged_after_failure(alice, "bob", env)
    assert isinstance(err, ratchet.DuplicateMessage)
    # Beyond MAX_SKIP in one chain.
    burst = [bob.encrypt("alice", b"skip %d" % i) for i in range(ratchet.MAX_SKIP + 2)]
    err = unchanged_after_failure(alice, "bob", burst[-1])  # needs MAX_SKIP + 1 skipped keys
    assert isinstance(err, ratchet.TooManySkipped)
    for i in range(1, len(burst)):  # the burst arrives after all, first one lost: within bounds
        assert bytes(alice.decrypt("bob", burst[i])) == b"skip %d" % i

    # Restart both sides from flash and continue.
    alice = SessionManager.open(root + "/alice", KEY)
    bob = SessionManager.open(root + "/bob", KEY)
    assert bytes(bob.decrypt("alice", alice.encrypt("bob", b"after reboot"))) == b"after reboot"
    assert bytes(alice.decrypt("bob", bob.encrypt("alice", b"welcome back"))) == b"welcome back"

    # No session, another identity under a known peer id, a control message.
    expect_typed(alice.decrypt, "carol", bob.encrypt("alice", b"to carol?"))
    mallory = SessionManager.create(root + "/mallory", KEY, one_time=0)
    mallory.start("bob", bob.bundle())
    try:
        bob.decrypt("alice", mallory.encrypt("bob", b"I am alice"))
        raise AssertionError("identity swap accepted")
    except UntrustedIdentity:
        pass
    try:
        alice.encrypt("nobody", b"x")
        raise AssertionError("encrypt without a session")
    except NoSession:
        pass
    # repr hides keys; the storage key never appears in any file.
    assert "SessionManager" in repr(alice)
    for name in os.listdir(root + "/alice/sessions"):
        assert KEY not in raw(alice, name)
    print("ok session")


main(sys.argv[1])
