# X3DH key agreement (docs/protocol.md §2; Signal X3DH spec §3 with a separate Ed25519
# identity signing key, decision D10).
#
#   initiate(keystore, bundle)  Alice, from Bob's published PrekeyBundle
#       -> (SK, AD, EK_A.pub, spk_id, opk_id)
#   respond(keystore, IK_A.pub, IS_A.pub, EK_A.pub, spk_id, opk_id)  Bob, on a prekey message
#       -> (SK, AD, opk_id to delete after the first message decrypted, or None)
#
# SK is 32 bytes (the Double Ratchet root key, §3); AD is IK_A || IS_A || IK_B || IS_B (128 bytes).
from e2ee import crypto
from e2ee.crypto import errors as crypto_errors
from e2ee.protocol.public_key import canonical_ed25519, canonical_x25519
from e2ee.protocol.keys import (
    KEY_SIZE,
    LAST_RESORT_ID,
    KeyAgreementError,
    KeyPair,
    UnknownOneTimePrekey,
    UnknownPrekey,
    UnknownSignedPrekey,
    spk_signature_message,
)

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

__all__ = (
    "initiate", "respond", "KeyAgreementError", "BadSignedPrekey", "WeakSharedSecret",
    "InvalidPublicKey", "UnknownPrekey", "UnknownSignedPrekey", "UnknownOneTimePrekey",
)

_INFO = b"e2ee-iot X3DH v1"  # §2 step 4: HKDF info, domain separation of this protocol version
_SALT = bytes(32)  # §2 step 4: HKDF salt, HashLen zero bytes (X3DH spec §2.2)
_F_SIZE = const(32)  # §2 step 4: 0xFF * 32 prefix, X3DH spec §2.2 for X25519
SK_SIZE = const(32)  # §2 step 4: SK, the first root key
AD_SIZE = const(128)  # §2 step 5: four 32-byte public keys


# The bundle's signed-prekey signature does not verify with its IS (§2 step 1).
class BadSignedPrekey(KeyAgreementError):
    pass


# A DH output was all zero: a small-order public key in the bundle or prekey message (§2 step 3).
class WeakSharedSecret(KeyAgreementError):
    pass


# A public key in a prekey message that is not 32 bytes or not canonical (finding 7).
class InvalidPublicKey(KeyAgreementError):
    pass


# Alice's side. `bundle` is Bob's PrekeyBundle; `ephemeral` (32 bytes) replaces the random EK_A
# in known-answer tests only; `rng` (n -> bytes) replaces crypto.random_bytes.
# Raises BadSignedPrekey before any key is generated, WeakSharedSecret for small-order keys.
def initiate(keystore, bundle, ephemeral=None, rng=None):
    msg = spk_signature_message(bundle.ik_pub, bundle.spk_id, bundle.spk_pub)
    try:
        crypto.ed25519_verify(bundle.is_pub, msg, bundle.spk_sig)
    except crypto_errors.InvalidSignature:
        raise BadSignedPrekey("signature of signed prekey %d does not verify" % bundle.spk_id)
    ek = KeyPair(ephemeral) if ephemeral is not None else KeyPair.generate(rng)
    ikm = _ikm_buffer(bundle.opk_pub is not None)
    try:
        _put_dh(ikm, 1, keystore.dh_identity, bundle.spk_pub)
        _put_dh(ikm, 2, ek.dh, bundle.ik_pub)
        _put_dh(ikm, 3, ek.dh, bundle.spk_pub)
        if bundle.opk_pub is not None:
            _put_dh(ikm, 4, ek.dh, bundle.opk_pub)
        sk = crypto.hkdf_sha256(ikm, _SALT, _INFO, SK_SIZE)
    finally:
        # §2 step 6: EK_A and the DH outputs are not kept.
        _wipe(ikm)
        ek.wipe()
    ad = _ad(keystore.ik_pub, keystore.is_pub, bundle.ik_pub, bundle.is_pub)
    return sk, ad, ek.public, bundle.spk_id, bundle.opk_id


# Bob's side, on a prekey message from the initiator with identity (ik_a, is_a) and base key
# (EK_A.pub). opk_id None or 0 means no one-time prekey was used.
# Returns (SK, AD, delete_opk_id). The one-time prekey is NOT deleted here: the caller deletes
# it with keystore.remove_one_time_prekey(delete_opk_id) only after the first message of the
# session decrypted (§2, §5), so a forged prekey message cannot burn it. delete_opk_id is None
# when no OPK was used or it was the last-resort prekey, which is never deleted.
# Raises UnknownSignedPrekey / UnknownOneTimePrekey, InvalidPublicKey, WeakSharedSecret.
def respond(keystore, ik_a, is_a, base_key, spk_id, opk_id=None):
    for what, key, canonical in (("IK_A", ik_a, canonical_x25519), ("IS_A", is_a, canonical_ed25519),
                                 ("base key", base_key, canonical_x25519)):
        if not isinstance(key, (bytes, bytearray, memoryview)) or len(key) != KEY_SIZE:
            raise InvalidPublicKey("%s must be %d bytes" % (what, KEY_SIZE))
        if not canonical(key):  # finding 7: another encoding of a key passes byte comparisons
            raise InvalidPublicKey("%s is not a canonical public key encoding" % what)
    if opk_id == 0:
        opk_id = None
    # Unknown ids fail before any DH is computed.
    if not keystore.has_signed_prekey(spk_id):
        raise UnknownSignedPrekey("no signed prekey with id %d" % spk_id)
    if opk_id is not None and not keystore.has_one_time_prekey(opk_id):
        raise UnknownOneTimePrekey("no one-time prekey with id %d" % opk_id)
    ikm = _ikm_buffer(opk_id is not None)
    try:
        _put_dh(ikm, 1, lambda pub: keystore.dh_signed_prekey(spk_id, pub), ik_a)
        _put_dh(ikm, 2, keystore.dh_identity, base_key)
        _put_dh(ikm, 3, lambda pub: keystore.dh_signed_prekey(spk_id, pub), base_key)
        if opk_id is not None:
            _put_dh(ikm, 4, lambda pub: keystore.dh_one_time_prekey(opk_id, pub), base_key)
        sk = crypto.hkdf_sha256(ikm, _SALT, _INFO, SK_SIZE)
    finally:
        _wipe(ikm)
    ad = _ad(ik_a, is_a, keystore.ik_pub, keystore.is_pub)
    return sk, ad, None if opk_id == LAST_RESORT_ID else opk_id


# 0xFF * 32 followed by room for three or four DH outputs (§2 step 4).
def _ikm_buffer(with_opk):
    ikm = bytearray(_F_SIZE + (4 if with_opk else 3) * KEY_SIZE)
    for i in range(_F_SIZE):
        ikm[i] = 0xFF
    return ikm


# Writes DH number `n` (1..4) = dh(pub) into its slot of the ikm buffer; a small-order `pub`
# becomes WeakSharedSecret of this module (the message names the DH, not key bytes).
def _put_dh(ikm, n, dh, pub):
    try:
        out = dh(pub)
    except crypto_errors.WeakSharedSecret:
        raise WeakSharedSecret("X3DH DH%d is all zero (small-order public key)" % n)
    start = _F_SIZE + (n - 1) * KEY_SIZE
    ikm[start:start + KEY_SIZE] = out


def _wipe(buf):
    for i in range(len(buf)):
        buf[i] = 0


# AD = IK_A || IS_A || IK_B || IS_B (§2 step 5), initiator first.
def _ad(ik_a, is_a, ik_b, is_b):
    ad = bytearray(AD_SIZE)
    ad[0:32] = ik_a
    ad[32:64] = is_a
    ad[64:96] = ik_b
    ad[96:128] = is_b
    return bytes(ad)
