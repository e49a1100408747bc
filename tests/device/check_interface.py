# Behaviour of the crypto interface on bad input; runs on MicroPython and CPython.
# Usage: check_interface.py <backend>   (prints "ok <backend>" when every check passed)
# checks first: it is compiled from source at import, and compiling it after the SDK modules
# are loaded fragments the 120 KB heap enough that the large buffers below may not fit.
from checks import raises_in
import sys

from e2ee import crypto
from e2ee.crypto.errors import (
    BackendUnavailable,
    CryptoError,
    InvalidLength,
    InvalidSignature,
    InvalidTag,
    WeakSharedSecret,
)


raises = raises_in(CryptoError)


def check(c):
    key = bytes(range(32))
    nonce = bytes(range(12))
    sealed = c.aead_encrypt(key, nonce, b"attack at dawn", b"hdr")
    assert bytes(c.aead_decrypt(key, nonce, sealed, b"hdr")) == b"attack at dawn"
    # Wrong key, nonce and output lengths.
    raises(InvalidLength, c.aead_encrypt, key[:31], nonce, b"x")
    raises(InvalidLength, c.aead_encrypt, key, nonce + b"\x00", b"x")
    raises(InvalidLength, c.aead_decrypt, key, nonce[:8], sealed)
    raises(InvalidLength, c.aead_encrypt_into, key, nonce, b"x", None, bytearray(16))
    raises(InvalidLength, c.aead_encrypt, "k" * 32, nonce, b"x")
    # Wrong tag, flipped ciphertext bit, wrong AD, truncated and empty ciphertext.
    bad = bytearray(sealed)
    bad[-1] ^= 1
    raises(InvalidTag, c.aead_decrypt, key, nonce, bad, b"hdr")
    bad = bytearray(sealed)
    bad[0] ^= 0x80
    raises(InvalidTag, c.aead_decrypt, key, nonce, bad, b"hdr")
    raises(InvalidTag, c.aead_decrypt, key, nonce, sealed, b"hdx")
    raises(InvalidTag, c.aead_decrypt, key, nonce, sealed, None)
    raises(InvalidTag, c.aead_decrypt, key, nonce, sealed[:-1], b"hdr")
    raises(InvalidTag, c.aead_decrypt, key, nonce, sealed[:15], b"hdr")
    raises(InvalidTag, c.aead_decrypt, key, nonce, b"", b"hdr")
    # A failed open writes nothing and the error names no key bytes.
    msg = raises(InvalidTag, c.aead_decrypt, key, nonce, bad, b"hdr")
    assert "0001020304" not in msg
    # Decryption into a caller's buffer: its length, in place, and nothing written on a bad tag.
    raises(InvalidLength, c.aead_decrypt_into, key, nonce, sealed, b"hdr", bytearray(len(sealed) - 15))
    raises(InvalidTag, c.aead_decrypt_into, key, nonce, sealed[:15], b"hdr", bytearray(0))
    buf = bytearray(sealed)
    c.aead_decrypt_into(key, nonce, buf, b"hdr", memoryview(buf)[:len(buf) - 16])
    assert bytes(buf[:-16]) == b"attack at dawn"
    bad = bytearray(sealed)
    bad[-1] ^= 1
    out = bytearray(b"\xa5" * (len(bad) - 16))
    raises(InvalidTag, c.aead_decrypt_into, key, nonce, bad, b"hdr", out)
    assert out == bytearray(b"\xa5" * len(out))
    inplace = bytearray(bad)
    raises(InvalidTag, c.aead_decrypt_into, key, nonce, inplace, b"hdr", memoryview(inplace)[:len(inplace) - 16])
    assert inplace == bad
    # None AD is the empty AD.
    assert bytes(c.aead_encrypt(key, nonce, b"m", None)) == bytes(c.aead_encrypt(key, nonce, b"m", b""))
    # Zero-length plaintext seals to a bare tag.
    assert len(c.aead_encrypt(key, nonce, b"")) == 16

    # X25519: lengths, small-order peer key (all-zero result), agreement.
    a, b = bytes([1] * 32), bytes([2] * 32)
    raises(InvalidLength, c.x25519, a[:31], b)
    raises(InvalidLength, c.x25519, a, b + b"\x00")
    raises(InvalidLength, c.x25519_base, a[:16])
    raises(WeakSharedSecret, c.x25519, a, bytes(32))
    raises(WeakSharedSecret, c.x25519, a, b"\x01" + bytes(31))
    assert bytes(c.x25519(a, c.x25519_base(b))) == bytes(c.x25519(b, c.x25519_base(a)))

    # Ed25519: lengths, tampered message and signature, wrong key.
    seed = bytes(range(100, 132))
    pub = c.ed25519_public_key(seed)
    sig = c.ed25519_sign(seed, b"firmware v1")
    assert bytes(c.ed25519_sign(seed, b"firmware v1", pub)) == bytes(sig)
    c.ed25519_verify(pub, b"firmware v1", sig)
    raises(InvalidSignature, c.ed25519_verify, pub, b"firmware v2", sig)
    raises(InvalidSignature, c.ed25519_verify, pub, b"firmware v1", sig[:63])
    raises(InvalidSignature, c.ed25519_verify, pub, b"firmware v1", bytes(64))
    raises(InvalidSignature, c.ed25519_verify, c.ed25519_public_key(a), b"firmware v1", sig)
    flipped = bytearray(sig)
    flipped[40] ^= 4
    raises(InvalidSignature, c.ed25519_verify, pub, b"firmware v1", flipped)
    raises(InvalidLength, c.ed25519_verify, pub[:31], b"m", sig)
    # the message as parts: their concatenation is what is verified
    c.ed25519_verify(pub, (b"firm", memoryview(b"ware v1")), sig)
    c.ed25519_verify(pub, (b"", b"firmware v1", b""), sig)
    raises(InvalidSignature, c.ed25519_verify, pub, (b"firmware v1", b"\x00"), sig)
    raises(InvalidSignature, c.ed25519_verify, pub, (b"firmware", b" v2"), sig)
    raises(InvalidLength, c.ed25519_verify, pub, (b"firmware v1", None), sig)
    raises(InvalidLength, c.ed25519_public_key, seed[:31])
    raises(InvalidLength, c.ed25519_sign, seed, b"m", pub[:5])

    # HKDF bounds (RFC 5869 §2.3), HMAC, SHA-512 sizes, constant-time compare, randomness.
    raises(InvalidLength, c.hkdf_sha256, b"ikm", None, b"", 8161)
    raises(InvalidLength, c.hkdf_sha256, b"ikm", None, b"", -1)
    # The 8160-byte maximum itself runs on MicroPython in the Wycheproof HKDF suite (larger heap):
    # an 8 KB block is rarely contiguous in a 120 KB heap that loaded .mpy files.
    longest = 8160 if sys.implementation.name != "micropython" else 2000
    assert len(c.hkdf_sha256(b"ikm", None, b"", longest)) == longest
    assert c.hkdf_sha256(b"ikm", None, b"i", 42) == c.hkdf_sha256(b"ikm", bytes(32), b"i", 42)
    assert len(c.hmac_sha256(b"k" * 100, b"m")) == 32
    assert len(c.sha512(b"")) == 64
    assert c.ct_equal(b"abc", b"abc") and not c.ct_equal(b"abc", b"abd")
    assert not c.ct_equal(b"abc", b"ab")
    r = c.random_bytes(32)
    assert len(r) == 32 and r != c.random_bytes(32)
    assert "Suite" in repr(c)


def main(name):
    suite = crypto.default if name == "default" else crypto.load(name)
    suite.resolve()  # load every backend module first, as firmware does at boot: a compact heap
    check(suite)
    raises(BackendUnavailable, crypto.load, "nonexistent")
    print("ok", name, suite.name)


main(sys.argv[1])
