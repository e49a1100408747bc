# Certified sessions (docs/protocol.md §6, "Certified sessions") on MicroPython and CPython: the
# TrustStore (e2ee.protocol.trust) and a SessionManager with one, against certificates and
# revocation lists a real Fleet CA issued (tests/protocol/test_trust.py writes them). Run from the
# repository root:
#
#   check_trust.py ROOT CASES    prints "ok trust"
#
# ROOT holds the device directories alice, bob and mallory (key stores made by the host test);
# CASES one file per item, <name>.bin: ca-keys (trusted CA keys, concatenated), now (be64),
# <device>[-variant] certificates (alice, bob, mallory, bob-as-carol, bob-other-keys,
# bob-unknown-ca, bob-expired, bob-revoked, bob-short, bob-renewed, alice-other-keys,
# alice-unknown-ca), <name>-serial and <name>-not-after for alice, bob, bob-renewed, and the
# signed lists crl-1 (bob-revoked), crl-2 (adds alice), crl-3 (adds 400 more: several records),
# crl-late (issued after bob-short expired), crl-other-ca.
from checks import raises_in
import gc
import os
import sys

from e2ee.protocol.session import (PeerExpired, PeerRefused, PeerRevoked, SessionError, SessionManager,
                                   UncertifiedSession, UntrustedIdentity)
from e2ee.protocol import certificate as C, envelope, ratchet, trust as T
from e2ee.protocol.keys import KeyAgreementError
from e2ee.protocol.trust import MissingCertificate, TrustStore, WrongPeer

TYPED = (envelope.DecodeError, ratchet.RatchetError, KeyAgreementError, SessionError, C.CertificateError)
raises = raises_in(TYPED)
KEY = bytes(range(32))
ROOT = CASES = None


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def case(name):
    with open(CASES + "/" + name + ".bin", "rb") as f:
        return f.read()


def number(name):
    return int.from_bytes(case(name), "big")


def manager(name, with_trust=True):
    directory = ROOT + "/" + name
    return SessionManager.open(directory, KEY, trust=TrustStore(directory, KEY) if with_trust else None)


# Every file under a device directory (sessions, keys, trust) with its bytes, to compare.
def snapshot(name):
    out = {}
    base = ROOT + "/" + name
    for kind in os.listdir(base):
        for entry in os.listdir(base + "/" + kind):
            with open(base + "/" + kind + "/" + entry, "rb") as f:
                out[kind + "/" + entry] = f.read()
    return out


# fn(*args) must raise `error` and leave every stored file of device `name` unchanged.
def refused(name, error, fn, *args):
    before = snapshot(name)
    raises(error, fn, *args)
    check(snapshot(name) == before, "stored state changed by a refused %s" % error.__name__)


# A certificate with one signature bit flipped (BadSignature).
def tampered(data):
    out = bytearray(data)
    out[-10] ^= 1
    return bytes(out)


def identity(m):
    return (m.keystore.ik_pub, m.keystore.is_pub)


def with_certificate(wire, cert):
    msg = envelope.decode(wire)
    msg.sender_certificate = cert
    return bytes(msg.encode())


def check_pinned():
    check(T.MAX_CA_KEYS == 4, "MAX_CA_KEYS")
    check(envelope.MAX_SENDER_CERTIFICATE == C.MAX_SIGNED_CERTIFICATE, "MAX_SENDER_CERTIFICATE")
    for cls in (WrongPeer, MissingCertificate):
        check(issubclass(cls, C.CertificateError), cls.__name__)
    for cls in (PeerRevoked, PeerExpired, UncertifiedSession):
        check(issubclass(cls, PeerRefused) and issubclass(cls, SessionError), cls.__name__)


def check_trust_store(alice, bob, mallory, now):
    fresh = alice.trust
    check(fresh.version == 0 and fresh.certificate is None and fresh.ca_keys() == [], "empty trust store")
    raises(C.UnknownIssuer, fresh.verify_peer, "bob", case("bob"), now)  # no CA key trusted yet
    raises(MissingCertificate, fresh.own_certificate)
    raises(C.UnknownIssuer, fresh.update_revocation_list, case("crl-1"))
    ca = case("ca-keys")
    keys = [ca[i:i + 32] for i in range(0, len(ca), 32)]
    raises(C.Malformed, fresh.set_ca_keys, [])
    raises(C.Malformed, fresh.set_ca_keys, [keys[0], keys[0]])
    raises(C.Malformed, fresh.set_ca_keys, [keys[0][:31]])
    raises(C.Malformed, fresh.set_ca_keys, keys * 5)
    for m in (alice, bob, mallory):
        m.trust.set_ca_keys(keys)
        check(m.trust.ca_keys() == keys, "CA keys")
    # The own certificate must be valid and certify this device's keys.
    refused("alice", WrongPeer, alice.trust.set_certificate, case("bob"), now, identity(alice))
    refused("alice", C.Expired, alice.trust.set_certificate, case("bob-expired"), now)
    check(alice.trust.set_certificate(case("alice"), now, identity(alice)).device_id == "alice", "own cert")
    check(alice.trust.certificate == alice.trust.own_certificate() == case("alice"), "stored")
    bob.trust.set_certificate(case("bob"), now, identity(bob))
    mallory.trust.set_certificate(case("mallory"), now, identity(mallory))
    # verify_peer: the device id and keys the caller expects.
    cert = bob.trust.verify_peer("alice", case("alice"), now, identity(alice))
    check(cert.serial == case("alice-serial") and cert.time_checked, "verify_peer")
    raises(WrongPeer, bob.trust.verify_peer, "carol", case("alice"), now)
    raises(WrongPeer, bob.trust.verify_peer, "alice", case("alice"), now, identity(bob))
    raises(MissingCertificate, bob.trust.verify_peer, "alice", b"", now)
    check("TrustStore" in repr(bob.trust), "repr")
    # A trust store whose own certificate is for other keys cannot be used with this key store.
    raises(WrongPeer, SessionManager, ROOT + "/mallory", KEY, mallory.keystore, None, alice.trust)


def check_start(alice, bob, now):
    bundle = bob.bundle()
    for name, error in (("bob-as-carol", WrongPeer), ("bob-other-keys", WrongPeer),
                        ("bob-unknown-ca", C.UnknownIssuer), ("bob-expired", C.Expired)):
        refused("alice", error, alice.start, "bob", bundle, case(name), now)
    refused("alice", MissingCertificate, alice.start, "bob", bundle, None, now)
    refused("alice", C.BadSignature, alice.start, "bob", bundle, tampered(case("bob")), now)
    check(alice.trust.update_revocation_list(case("crl-1")) == 1, "crl-1")
    check(bob.trust.update_revocation_list(case("crl-1")) == 1, "crl-1 bob")
    refused("alice", C.Revoked, alice.start, "bob", bundle, case("bob-revoked"), now)
    check(not alice.has_session("bob"), "a refused start stored a session")
    # Without a trust store a certificate cannot be checked, so it is refused, not ignored.
    raises(SessionError, manager("alice", False).start, "bob", bundle, case("bob"))


def check_prekey_messages(alice, bob, mallory, now):
    opk = bob.keystore.one_time_prekey_ids()[0]
    alice.start("bob", bob.bundle(opk), case("bob"), now)
    check(alice.peer_certificate("bob") == (case("bob-serial"), number("bob-not-after")), "recorded cert")
    check(alice.session_bytes("bob")[0] == 0x42, "certified record format")
    first = alice.encrypt("bob", b"hello bob", now)
    check(bytes(envelope.decode(first).sender_certificate) == case("alice"), "own certificate sent")
    # The responder refuses before any key agreement, and nothing is stored or burned.
    for cert, error in ((b"", MissingCertificate), (case("mallory"), WrongPeer), (case("bob"), WrongPeer),
                        (case("alice-other-keys"), WrongPeer), (case("alice-unknown-ca"), C.UnknownIssuer),
                        (tampered(case("alice")), C.BadSignature)):
        refused("bob", error, bob.decrypt, "alice", with_certificate(first, cert), now)
    mallory.start("bob", bob.bundle(), case("bob"), now)
    refused("bob", WrongPeer, bob.decrypt, "alice", mallory.encrypt("bob", b"I am alice"), now)
    check(opk in bob.keystore.one_time_prekey_ids() and not bob.has_session("alice"), "nothing stored")
    check(bytes(bob.decrypt("alice", first, now)) == b"hello bob", "certified first message")
    check(bob.peer_certificate("alice") == (case("alice-serial"), number("alice-not-after")), "bob records")
    check(opk not in bob.keystore.one_time_prekey_ids(), "one-time prekey used")
    check(bytes(bob.decrypt("alice", alice.encrypt("bob", b"again"))) == b"again", "repeated prekey msg")
    reply = bob.encrypt("alice", b"hi alice")
    check(isinstance(envelope.decode(reply), envelope.RatchetMessage), "reply")
    check(bytes(alice.decrypt("bob", reply)) == b"hi alice", "reply decrypts")


def check_revocation(alice, bob, now):
    late = alice.encrypt("bob", b"late")
    reply = bob.encrypt("alice", b"before the list")
    check(bob.trust.update_revocation_list(case("crl-2")) == 2, "crl-2")
    check(bob.trust.is_revoked(case("alice-serial")), "alice listed")
    check(not bob.trust.is_revoked(case("bob-serial")), "bob not listed")
    refused("bob", PeerRevoked, bob.encrypt, "alice", b"to a revoked peer")
    refused("bob", PeerRevoked, bob.decrypt, "alice", late)
    refused("bob", PeerRevoked, bob.decrypt, "alice", late, now)
    # Alice holds no list naming bob: she still reads him.
    check(bytes(alice.decrypt("bob", reply)) == b"before the list", "alice reads bob")
    # A new session from a revoked peer is refused by its certificate.
    alice.start("bob", bob.bundle(), case("bob"), now)
    refused("bob", C.Revoked, bob.decrypt, "alice", alice.encrypt("bob", b"new session"))
    # Rollback and foreign lists are refused; the stored list stays.
    for name, error in (("crl-1", C.RolledBack), ("crl-2", C.RolledBack), ("crl-other-ca", C.UnknownIssuer)):
        refused("bob", error, bob.trust.update_revocation_list, case(name))
    check(bob.trust.version == 2, "version kept")


def check_reboot():
    bob = manager("bob")
    check(bob.trust.version == 2 and bob.trust.certificate == case("bob"), "trust after reboot")
    check(bob.trust.ca_keys()[0] == case("ca-keys")[:32], "CA keys after reboot")
    refused("bob", PeerRevoked, bob.encrypt, "alice", b"after reboot")
    refused("bob", C.RolledBack, bob.trust.update_revocation_list, case("crl-2"))
    # A list larger than one record (several chunks), replacing a one-chunk list, then a reboot.
    big = case("crl-3")
    check(len(big) > 4096, "crl-3 size")
    check(bob.trust.update_revocation_list(big) == 3, "crl-3")
    big = bob = None
    gc.collect()
    bob = manager("bob")
    check(bob.trust.version == 3 and bob.trust.is_revoked(case("alice-serial")), "crl-3 after reboot")
    chunks = [n for n in os.listdir(ROOT + "/bob/trust") if n.startswith("crl-")]
    check(len(chunks) == 2, "stale chunks removed: %r" % chunks)
    refused("bob", PeerRevoked, bob.encrypt, "alice", b"after the larger list")


def check_expiry_and_renewal(now):
    alice = manager("alice")
    bob = manager("bob", False)  # bob without trust: alice's side is under test
    alice.start("bob", bob.bundle(), case("bob-short"), now)
    alice.encrypt("bob", b"in time", now)
    refused("alice", PeerExpired, alice.encrypt, "bob", b"too late", number("bob-short-not-after"))
    # A renewed certificate for the same keys replaces the recorded one; other keys do not.
    refused("alice", WrongPeer, alice.update_peer_certificate, "bob", case("bob-other-keys"), now)
    alice.update_peer_certificate("bob", case("bob-renewed"), now)
    renewed = (case("bob-renewed-serial"), number("bob-renewed-not-after"))
    check(alice.peer_certificate("bob") == renewed, "renewed")
    alice.encrypt("bob", b"renewed", number("bob-short-not-after"))
    # Without a clock: a list signed after not_after says the certificate expired.
    alice.start("bob", bob.bundle(), case("bob-short"), now)
    check(alice.trust.update_revocation_list(case("crl-late")) == 4, "crl-late")
    refused("alice", PeerExpired, alice.encrypt, "bob", b"expired by the list")
    refused("alice", C.Expired, alice.start, "bob", bob.bundle(), case("bob-short"))
    # Sessions started without a trust store are refused by a manager with one, and a manager
    # without one keeps certified records as they are.
    plain = manager("alice", False)
    plain.start("dave", bob.bundle())
    check(plain.session_bytes("dave")[0] == 0x41 and plain.peer_certificate("dave") is None, "uncertified")
    refused("alice", UncertifiedSession, alice.encrypt, "dave", b"x")
    plain.encrypt("bob", b"plain")
    check(plain.session_bytes("bob")[0] == 0x42, "certified record kept by a manager without trust")


def main():
    global ROOT, CASES
    ROOT, CASES = sys.argv[1], sys.argv[2]
    now = number("now")
    check_pinned()
    alice, bob, mallory = manager("alice"), manager("bob"), manager("mallory")
    check_trust_store(alice, bob, mallory, now)
    check_start(alice, bob, now)
    check_prekey_messages(alice, bob, mallory, now)
    check_revocation(alice, bob, now)
    alice = bob = mallory = None  # as after a reboot: the large list below needs the heap
    gc.collect()
    check_reboot()
    gc.collect()
    check_expiry_and_renewal(now)
    print("ok trust")


main()
