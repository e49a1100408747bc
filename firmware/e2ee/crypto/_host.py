# CPython backend: `cryptography` (OpenSSL) for X25519, Ed25519, ChaCha20-Poly1305 and HKDF;
# hashlib/hmac for SHA-512 and HMAC. Same contract as the MicroPython backends.
import hashlib
import hmac

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519 as _x25519
from cryptography.hazmat.primitives import poly1305
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw


def sha512(data):
    return hashlib.sha512(data).digest()


sha512_hasher = hashlib.sha512


def hmac_sha256(key, data):
    return hmac.digest(bytes(key), bytes(data), "sha256")


def hkdf_sha256(ikm, salt, info, length):
    if length == 0:
        return b""
    return HKDF(hashes.SHA256(), length, None if salt is None else bytes(salt), bytes(info)).derive(
        bytes(ikm)
    )


def aead_seal_into(key, nonce, plaintext, ad, out):
    out[:] = ChaCha20Poly1305(bytes(key)).encrypt(bytes(nonce), bytes(plaintext), bytes(ad))


def aead_open_into(key, nonce, ciphertext, tag, ad, out):
    try:
        out[:] = ChaCha20Poly1305(bytes(key)).decrypt(
            bytes(nonce), bytes(ciphertext) + bytes(tag), bytes(ad)
        )
    except InvalidTag:
        return False
    return True


# RFC 7748 §5. OpenSSL refuses the all-zero result; the contract returns it raw and the
# interface layer rejects it, so every backend reports the same error.
def x25519(k, u):
    peer = _x25519.X25519PublicKey.from_public_bytes(bytes(u))
    try:
        return _x25519.X25519PrivateKey.from_private_bytes(bytes(k)).exchange(peer)
    except ValueError:
        return bytes(32)


def x25519_base(k):
    key = _x25519.X25519PrivateKey.from_private_bytes(bytes(k))
    return key.public_key().public_bytes(_RAW, _RAW_PUBLIC)


def ed25519_public_key(seed):
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(seed))
    return key.public_key().public_bytes(_RAW, _RAW_PUBLIC)


def ed25519_sign(seed, public, message):
    return ed25519.Ed25519PrivateKey.from_private_bytes(bytes(seed)).sign(bytes(message))


_P = 2**255 - 19


# RFC 8032 §5.1.3 decoding of A, which OpenSSL relaxes: y must be < p (step 1), and x = 0 (that
# is y = 1 or y = p - 1) with the sign bit set fails (step 4). R needs no check here: OpenSSL
# compares R's bytes with a canonical encoding, which such bytes never equal.
def _canonical_point(b):
    y = int.from_bytes(b, "little") & ((1 << 255) - 1)
    return y < _P and not (b[31] & 0x80 and y in (1, _P - 1))


def ed25519_verify(public, message, signature):
    if not _canonical_point(public):
        return False
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(bytes(public))
        key.verify(bytes(signature), bytes(message))
    except (InvalidSignature, ValueError):
        return False
    return True


# Building blocks for the RFC 8439 §2.4 and §2.5 known-answer tests (hazmat, as in the
# MicroPython backends). OpenSSL's ChaCha20 takes le32(counter) || nonce as its 16-byte nonce.
def chacha20_xor(key, nonce, counter, src, dst):
    nonce16 = counter.to_bytes(4, "little") + bytes(nonce)
    dst[:] = Cipher(algorithms.ChaCha20(bytes(key), nonce16), None).encryptor().update(bytes(src))


def poly1305_into(key, msg, out):
    out[0:16] = poly1305.Poly1305.generate_tag(bytes(key), bytes(msg))
