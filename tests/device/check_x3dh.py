# X3DH and prekey material (docs/protocol.md §1-§2) on MicroPython and CPython.
# Usage:
#   check_x3dh.py                       behaviour checks; prints "ok x3dh <backend>"
#   check_x3dh.py vectors <file>        known answers of docs/vectors/x3dh.txt; prints "ok vectors <n>"
#   check_x3dh.py publish <dir> <opk>   responder: new keystore in <dir>/bob.keystore, bundle with
#                                       <opk> = none | one | last in <dir>/bundle
#   check_x3dh.py initiate <dir>        initiator: reads <dir>/bundle, writes <dir>/message,
#                                       prints "sk=<hex> ad=<hex>"
#   check_x3dh.py respond <dir>         responder: reads keystore and message, prints the same
# Cross-runtime files use the vector line format (tests/vectors/README.md).
# checks first: it is compiled from source at import, and compiling it after the SDK modules
# are loaded fragments the 120 KB heap enough that the large buffers below may not fit.
from checks import raises
import gc
import sys
from binascii import hexlify, unhexlify

import vectorfile
from e2ee import crypto
from e2ee.protocol import keys, x3dh
from e2ee.protocol.keys import (
    LAST_RESORT_ID,
    IdentityKeys,
    InvalidBundle,
    KeyFormatError,
    KeyPair,
    KeyStore,
    OneTimePrekey,
    PrekeyBundle,
    SignedPrekey,
)
from e2ee.protocol.x3dh import (
    BadSignedPrekey,
    InvalidPublicKey,
    KeyAgreementError,
    UnknownOneTimePrekey,
    UnknownSignedPrekey,
    WeakSharedSecret,
)

SMALL_ORDER = (bytes(32), b"\x01" + bytes(31))  # u = 0 and u = 1 (RFC 7748 §6.1, Wycheproof)


def h(b):
    return hexlify(bytes(b)).decode()


# Deterministic "rng" for generate(): returns the given 32-byte values in order.
def fixed_rng(*values):
    values = list(values)

    def rng(n):
        return values.pop(0)[:n]

    return rng


def agree(alice, bob, opk_id):
    sk, ad, ek, spk_id, used_opk = x3dh.initiate(alice, bob.bundle(opk_id))
    assert len(sk) == 32 and len(ad) == 128 and spk_id == bob.spk_id and used_opk == opk_id
    assert ad == alice.ik_pub + alice.is_pub + bob.ik_pub + bob.is_pub
    sk_b, ad_b, delete = x3dh.respond(bob, alice.ik_pub, alice.is_pub, ek, spk_id, used_opk)
    assert bytes(sk_b) == bytes(sk) and ad_b == ad
    return sk, ek, delete


def check_agreement(alice, bob):
    opk_id = bob.one_time_prekey_ids()[0]
    sk1, ek1, delete = agree(alice, bob, opk_id)
    # respond() leaves the OPK in place; the caller deletes it after the first decrypt.
    assert delete == opk_id and bob.has_one_time_prekey(opk_id)
    assert bob.remove_one_time_prekey(delete) and not bob.has_one_time_prekey(opk_id)
    assert not bob.remove_one_time_prekey(delete)
    sk2, ek2, delete = agree(alice, bob, None)
    assert delete is None and sk2 != sk1 and ek2 != ek1
    # The last-resort prekey works, is reported as "delete nothing", and survives removal.
    sk3, _, delete = agree(alice, bob, LAST_RESORT_ID)
    assert delete is None and not bob.remove_one_time_prekey(LAST_RESORT_ID)
    agree(alice, bob, LAST_RESORT_ID)
    # Rotating the last-resort prekey changes its public half, under the same id.
    before = bob.last_resort_pub
    sk, _, ek, spk_id, _ = x3dh.initiate(alice, bob.bundle(LAST_RESORT_ID))
    bob.rotate_last_resort_prekey()
    assert bob.last_resort_pub != before and bob.has_one_time_prekey(LAST_RESORT_ID)
    stale = x3dh.respond(bob, alice.ik_pub, alice.is_pub, ek, spk_id, LAST_RESORT_ID)[0]
    assert bytes(stale) != bytes(sk)
    agree(alice, bob, LAST_RESORT_ID)
    # opk_id 0 on the wire means "none".
    sk, _, ek, spk_id, _ = x3dh.initiate(alice, bob.bundle())
    assert bytes(x3dh.respond(bob, alice.ik_pub, alice.is_pub, ek, spk_id, 0)[0]) == bytes(sk)
    # A signed prekey still works after one rotation, not after two.
    old = bob.spk_id
    sk, _, ek, spk_id, _ = x3dh.initiate(alice, bob.bundle())
    bob.rotate_signed_prekey()
    assert bob.spk_id != old
    assert bytes(x3dh.respond(bob, alice.ik_pub, alice.is_pub, ek, spk_id)[0]) == bytes(sk)
    agree(alice, bob, None)
    bob.rotate_signed_prekey()
    raises(UnknownSignedPrekey, x3dh.respond, bob, alice.ik_pub, alice.is_pub, ek, spk_id)


def signed_bundle(bob, ik_pub, spk_id, spk_pub, opk_id=None, opk_pub=None):
    sig = bob.sign(keys.spk_signature_message(ik_pub, spk_id, spk_pub))
    return PrekeyBundle(ik_pub, bob.is_pub, spk_id, spk_pub, sig, opk_id, opk_pub)


def check_rejections(alice, bob):
    good = bob.bundle(bob.one_time_prekey_ids()[0])
    raw = good.to_bytes()
    # Flipping any bit of IK, IS, spk_id, SPK or the signature breaks the SPK signature.
    for offset in (1, 32, 33, 64, 65, 68, 69, 100, 101, 164):
        bad = bytearray(raw)
        bad[offset] ^= 0x40
        try:
            bundle = PrekeyBundle.from_bytes(bad)
        except InvalidBundle:
            continue  # not reachable for these offsets, kept for clarity
        msg = raises(BadSignedPrekey, x3dh.initiate, alice, bundle)
        assert "signed prekey" in msg
    # The OPK fields are not signed (as in Signal): a swapped OPK gives a different SK,
    # an unknown opk_id is refused by the responder.
    bad = bytearray(raw)
    bad[-1] ^= 1
    sk, _, ek, spk_id, opk_id = x3dh.initiate(alice, PrekeyBundle.from_bytes(bad))
    sk_b = x3dh.respond(bob, alice.ik_pub, alice.is_pub, ek, spk_id, opk_id)[0]
    assert bytes(sk_b) != bytes(sk)
    raises(UnknownOneTimePrekey, x3dh.respond, bob, alice.ik_pub, alice.is_pub, ek, spk_id, 4242)
    raises(UnknownSignedPrekey, x3dh.respond, bob, alice.ik_pub, alice.is_pub, ek, 4242, opk_id)
    raises(UnknownSignedPrekey, bob.dh_signed_prekey, 4242, ek)
    raises(UnknownOneTimePrekey, bob.dh_one_time_prekey, 4242, ek)
    # Every typed error is a KeyAgreementError.
    for error in (BadSignedPrekey, UnknownOneTimePrekey, UnknownSignedPrekey, WeakSharedSecret,
                  InvalidPublicKey):
        assert issubclass(error, KeyAgreementError)
    # A bundle signed by another identity.
    sig = alice.sign(keys.spk_signature_message(good.ik_pub, good.spk_id, good.spk_pub))
    raises(BadSignedPrekey, x3dh.initiate, alice, PrekeyBundle(
        good.ik_pub, good.is_pub, good.spk_id, good.spk_pub, sig))
    # Small-order keys (validly signed where signed) -> WeakSharedSecret naming the DH.
    for weak in SMALL_ORDER:
        spk = good.spk_pub
        assert "DH1" in raises(WeakSharedSecret, x3dh.initiate, alice, signed_bundle(bob, good.ik_pub, 7, weak))
        assert "DH2" in raises(WeakSharedSecret, x3dh.initiate, alice, signed_bundle(bob, weak, 7, spk))
        assert "DH4" in raises(WeakSharedSecret, x3dh.initiate, alice, signed_bundle(bob, good.ik_pub, 7, spk, 9, weak))
        _, _, ek, spk_id, opk_id = x3dh.initiate(alice, good)
        assert "DH1" in raises(WeakSharedSecret, x3dh.respond, bob, weak, alice.is_pub, ek, spk_id, opk_id)
        assert "DH2" in raises(WeakSharedSecret, x3dh.respond, bob, alice.ik_pub, alice.is_pub, weak, spk_id)
    # Malformed public keys in a prekey message.
    _, _, ek, spk_id, opk_id = x3dh.initiate(alice, good)
    raises(InvalidPublicKey, x3dh.respond, bob, alice.ik_pub[:31], alice.is_pub, ek, spk_id)
    raises(InvalidPublicKey, x3dh.respond, bob, alice.ik_pub, alice.is_pub + b"\x00", ek, spk_id)
    raises(InvalidPublicKey, x3dh.respond, bob, alice.ik_pub, alice.is_pub, None, spk_id)
    # A bad prekey message consumed nothing.
    assert bob.has_one_time_prekey(opk_id)


def check_bundle_format(bob):
    b = bob.bundle(bob.one_time_prekey_ids()[0])
    raw = b.to_bytes()
    assert len(raw) == 201 and raw[0] == 0x21 and len(bob.bundle().to_bytes()) == 165
    assert PrekeyBundle.from_bytes(raw) == b and PrekeyBundle.from_bytes(bytearray(raw)) == b
    assert PrekeyBundle.from_bytes(bob.bundle().to_bytes()).opk_id is None
    assert PrekeyBundle.from_bytes(bob.bundle(LAST_RESORT_ID).to_bytes()).opk_id == LAST_RESORT_ID
    raises(InvalidBundle, PrekeyBundle.from_bytes, raw[:-1])
    raises(InvalidBundle, PrekeyBundle.from_bytes, raw[:164])
    raises(InvalidBundle, PrekeyBundle.from_bytes, raw + b"\x00")
    raises(InvalidBundle, PrekeyBundle.from_bytes, b"")
    raises(InvalidBundle, PrekeyBundle.from_bytes, b"\x22" + raw[1:])
    raises(InvalidBundle, PrekeyBundle.from_bytes, "x" * 165)
    zero_opk = bytearray(raw)
    zero_opk[165:169] = bytes(4)
    raises(InvalidBundle, PrekeyBundle.from_bytes, zero_opk)
    args = [b.ik_pub, b.is_pub, b.spk_id, b.spk_pub, b.spk_sig]
    for i, bad in ((0, b.ik_pub[:31]), (1, b.is_pub + b"\x00"), (2, -1), (2, 1 << 32), (2, "1"),
                   (3, None), (4, b.spk_sig[:63])):
        wrong = list(args)
        wrong[i] = bad
        raises(InvalidBundle, PrekeyBundle, *wrong)
    raises(InvalidBundle, PrekeyBundle, *(args + [5, None]))
    raises(InvalidBundle, PrekeyBundle, *(args + [None, b.opk_pub]))
    raises(InvalidBundle, PrekeyBundle, *(args + [0, b.opk_pub]))
    raises(InvalidBundle, PrekeyBundle, *(args + [5, b.opk_pub[:16]]))
    assert issubclass(InvalidBundle, KeyFormatError)


def check_storage(alice, bob):
    raw = bob.to_bytes()
    n_opk = len(bob.one_time_prekey_ids())
    assert raw[0] == 0x14 and len(raw) == 129 + 9 + 132 * 2 + 2 + 68 * (n_opk + 1)
    copy = KeyStore.from_bytes(raw)
    assert copy.to_bytes() == raw and copy.identity == bob.identity
    assert copy.fingerprint() == bob.fingerprint() and copy.spk_id == bob.spk_id
    assert copy.one_time_prekey_ids() == bob.one_time_prekey_ids()
    # The restored store answers prekey messages made against the original.
    opk_id = bob.one_time_prekey_ids()[0]
    sk, ad, ek, spk_id, _ = x3dh.initiate(alice, bob.bundle(opk_id))
    assert bytes(x3dh.respond(copy, alice.ik_pub, alice.is_pub, ek, spk_id, opk_id)[0]) == bytes(sk)
    for cut in (0, 1, 100, 140, len(raw) - 1):
        raises(KeyFormatError, KeyStore.from_bytes, raw[:cut])
    raises(KeyFormatError, KeyStore.from_bytes, raw + b"\x00")
    raises(KeyFormatError, KeyStore.from_bytes, b"\x13" + raw[1:])
    raises(KeyFormatError, KeyStore.from_bytes, None)
    bad = bytearray(raw)
    bad[-68:-64] = bytes(4)  # last-resort record with id 0
    raises(KeyFormatError, KeyStore.from_bytes, bad)
    bad = bytearray(raw)
    bad[137] = 0  # no signed prekey
    raises(KeyFormatError, KeyStore.from_bytes, bad)
    # Individual records round-trip and refuse each other's format bytes.
    ident = IdentityKeys.generate()
    assert IdentityKeys.from_bytes(ident.to_bytes()).to_bytes() == ident.to_bytes()
    spk = SignedPrekey.generate(ident, 77)
    assert SignedPrekey.from_bytes(spk.to_bytes()).to_bytes() == spk.to_bytes()
    opk = OneTimePrekey.generate(5)
    assert OneTimePrekey.from_bytes(opk.to_bytes()).to_bytes() == opk.to_bytes()
    assert len(ident.to_bytes()) == 129 and len(spk.to_bytes()) == 133 and len(opk.to_bytes()) == 69
    raises(KeyFormatError, SignedPrekey.from_bytes, opk.to_bytes())
    raises(KeyFormatError, OneTimePrekey.from_bytes, b"\x12" + opk.to_bytes()[1:])
    raises(KeyFormatError, IdentityKeys.from_bytes, ident.to_bytes()[:-1])
    raises(KeyFormatError, OneTimePrekey, 0, KeyPair.generate())
    raises(KeyFormatError, KeyPair, bytes(31))
    # The SPK signature is §1's message under IS.
    crypto.ed25519_verify(ident.is_pub, keys.spk_signature_message(ident.ik_pub, 77, spk.public), spk.signature)
    # OPK ids count up from 1 and the store is capped.
    fresh = KeyStore.generate(3)
    assert fresh.one_time_prekey_ids() == [1, 2, 3]
    assert [i for i, _ in fresh.one_time_prekey_publics()] == [1, 2, 3]
    assert keys.MAX_ONE_TIME_PREKEYS == 100 and keys.MAX_SIGNED_PREKEYS == 2
    # Deterministic generation from a fixed rng.
    r = [bytes([i]) * 32 for i in range(1, 5)]
    s1, s2 = KeyStore.generate(0, fixed_rng(*r)), KeyStore.generate(0, fixed_rng(*r))
    assert s1.to_bytes() == s2.to_bytes()


# repr() and str() of everything holding a private key, and error messages, show no key bytes.
def check_no_key_bytes(alice, bob):
    raw = bob.to_bytes()
    secrets = [raw[i:i + 8] for i in range(1, len(raw) - 8, 8)]  # every 8-byte window of the record
    ident = IdentityKeys.generate()
    pair_private = bytes(range(200, 232))
    secrets.append(pair_private[:8])
    secrets.append(pair_private[24:])
    objs = [alice, bob, bob.bundle(), ident, KeyPair(pair_private), OneTimePrekey.generate(3),
            SignedPrekey.generate(ident, 1)]
    for k in (ident.to_bytes(), objs[5].to_bytes(), objs[6].to_bytes()):
        secrets += [k[i:i + 8] for i in range(1, len(k) - 8, 8)]
    texts = []
    for o in objs:
        texts.append(repr(o))
        texts.append(str(o))
    texts.append(raises(BadSignedPrekey, x3dh.initiate, alice, PrekeyBundle(
        bob.ik_pub, bob.is_pub, bob.spk_id, bob.bundle().spk_pub, bytes(64))))
    texts.append(raises(WeakSharedSecret, x3dh.respond, bob, bytes(32), alice.is_pub, bytes(32), bob.spk_id))
    for text in texts:
        low = text.lower()
        for s in secrets:
            assert h(s) not in low, text
            assert repr(bytes(s))[2:-1] not in text, text
    assert "fingerprint=" + h(bob.fingerprint()) in repr(bob)


def check_fingerprint(bob):
    fp = bob.fingerprint()
    expect = crypto.sha512(b"e2ee-iot fingerprint v1" + bob.ik_pub + bob.is_pub)[:16]
    assert len(fp) == 16 and bytes(fp) == bytes(expect)
    assert bob.bundle().fingerprint() == fp and len(bob.identity) == 64


def behaviour():
    crypto.default.resolve()
    alice = KeyStore.generate(2)
    bob = KeyStore.generate(3)
    check_agreement(alice, bob)
    check_rejections(alice, bob)
    check_bundle_format(bob)
    check_storage(alice, bob)
    check_no_key_bytes(alice, bob)
    check_fingerprint(bob)
    print("ok x3dh", crypto.default.name)


# --- known answers (docs/vectors/x3dh.txt) ---

def store_from(identity_dh, identity_sign, spk_id, spk, opk_id, opk):
    ident = IdentityKeys(KeyPair(identity_dh), identity_sign)
    pair = KeyPair(spk)
    signed = SignedPrekey(spk_id, pair, ident.sign(keys.spk_signature_message(ident.ik_pub, spk_id, pair.public)))
    opks = {}
    last = OneTimePrekey(LAST_RESORT_ID, KeyPair(bytes([0x55]) * 32))
    if opk_id == LAST_RESORT_ID:
        last = OneTimePrekey(LAST_RESORT_ID, KeyPair(opk))
    elif opk_id:
        opks[opk_id] = OneTimePrekey(opk_id, KeyPair(opk))
    return KeyStore(ident, [signed], opks, last, spk_id + 1, 1)


# Checks one x3dh.txt record (both sides, or the refused bundle of a result=invalid record).
def check_vector(rec):
    spk_id = vectorfile.as_int(rec["spk_id"])
    opk_id = vectorfile.as_int(rec["opk_id"]) or None
    alice = store_from(rec["ik_a"], rec["is_a"], 1, bytes([0x66]) * 32, None, None)
    bob = store_from(rec["ik_b"], rec["is_b"], spk_id, rec["spk"], opk_id, rec["opk"])
    assert alice.ik_pub == rec["ik_a_pub"] and alice.is_pub == rec["is_a_pub"], rec["id"]
    assert bob.ik_pub == rec["ik_b_pub"] and bob.is_pub == rec["is_b_pub"], rec["id"]
    assert bob.fingerprint() == rec["fingerprint_b"], rec["id"]
    bundle = bob.bundle(opk_id)
    assert bundle.spk_pub == rec["spk_pub"] and bundle.spk_sig == rec["spk_sig"], rec["id"]
    assert bundle.to_bytes() == rec["bundle"], rec["id"]
    bundle = PrekeyBundle.from_bytes(rec["bundle"])
    if rec["result"] == "invalid":
        bad = bytearray(rec["bundle"])
        bad[164] ^= 1  # last byte of the signature
        raises(BadSignedPrekey, x3dh.initiate, alice, PrekeyBundle.from_bytes(bad), rec["ek"])
        return
    sk, ad, ek, used_spk, used_opk = x3dh.initiate(alice, bundle, rec["ek"])
    assert ek == rec["ek_pub"] and used_spk == spk_id and used_opk == opk_id, rec["id"]
    assert bytes(sk) == rec["sk"] and ad == rec["ad"], rec["id"]
    sk_b, ad_b, _ = x3dh.respond(bob, alice.ik_pub, alice.is_pub, rec["ek_pub"], spk_id, opk_id)
    assert bytes(sk_b) == rec["sk"] and ad_b == rec["ad"], rec["id"]


def vectors(path):
    n = 0
    for rec in vectorfile.records(path):
        check_vector(rec)
        n += 1
        rec = None
        gc.collect()  # one record at a time: the next line (1.6 KB) needs a free block
    print("ok vectors", n)


# --- cross-runtime exchange ---

def u32(n):
    return n.to_bytes(4, "big")


def publish(d, which):
    bob = KeyStore.generate(2)
    opk_id = {"none": None, "one": bob.one_time_prekey_ids()[1], "last": LAST_RESORT_ID}[which]
    with open(d + "/bob.keystore", "w") as f:
        f.write(h(bob.to_bytes()))
    with open(d + "/bundle", "w") as f:
        f.write(h(bob.bundle(opk_id).to_bytes()))
    print("published", which)


def initiate(d):
    with open(d + "/bundle") as f:
        bundle = PrekeyBundle.from_bytes(unhexlify(f.read().strip()))
    alice = KeyStore.generate(0)
    sk, ad, ek, spk_id, opk_id = x3dh.initiate(alice, bundle)
    vectorfile.write(d + "/message", "prekey message", [{
        "ik_a": alice.ik_pub, "is_a": alice.is_pub, "base_key": ek,
        "spk_id": u32(spk_id), "opk_id": u32(opk_id or 0)}])
    print("sk=%s ad=%s" % (h(sk), h(ad)))


def respond(d):
    with open(d + "/bob.keystore") as f:
        bob = KeyStore.from_bytes(unhexlify(f.read().strip()))
    for m in vectorfile.records(d + "/message"):
        opk_id = vectorfile.as_int(m["opk_id"])
        sk, ad, delete = x3dh.respond(bob, m["ik_a"], m["is_a"], m["base_key"],
                                      vectorfile.as_int(m["spk_id"]), opk_id)
        assert opk_id == 0 or bob.has_one_time_prekey(opk_id)
        assert delete == (opk_id if opk_id not in (0, LAST_RESORT_ID) else None)
        print("sk=%s ad=%s" % (h(sk), h(ad)))


def main(argv):
    if len(argv) < 2:
        behaviour()
    elif argv[1] == "vectors":
        vectors(argv[2])
    elif argv[1] == "publish":
        publish(argv[2], argv[3])
    elif argv[1] == "initiate":
        initiate(argv[2])
    elif argv[1] == "respond":
        respond(argv[2])
    else:
        raise SystemExit("unknown mode " + argv[1])


main(sys.argv)
