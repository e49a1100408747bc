# HMAC-SHA256 (RFC 2104, FIPS 198-1) and HKDF-SHA256 (RFC 5869) over hashlib.sha256,
# which every MicroPython port we target and CPython provide.
try:
    from micropython import const
except ImportError:
    def const(x):
        return x

import hashlib

_BLOCK = const(64)  # SHA-256 block size in bytes (FIPS 180-4 §1)
_HASH_LEN = const(32)  # SHA-256 output size in bytes
HKDF_MAX_LENGTH = const(8160)  # 255 * HashLen (RFC 5869 §2.3)


# Inner and outer pads (RFC 2104 §2) as 512-bit ints: XOR of a whole block in one C call.
_IPAD_BLOCK = b"\x36" * _BLOCK  # the pads of the all-zero key (salt None, RFC 5869 §2.2)
_OPAD_BLOCK = b"\x5c" * _BLOCK
_IPAD = int.from_bytes(_IPAD_BLOCK, "big")
_OPAD = int.from_bytes(_OPAD_BLOCK, "big")


# A key as the 512-bit int of its zero-padded block; longer keys are hashed first (RFC 2104 §2).
def _key_block(key):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    return int.from_bytes(key, "big") << (8 * (_BLOCK - len(key))) if key else 0


# RFC 2104 §2: H(K ^ opad, H(K ^ ipad, text)) with text = a || b.
def _mac(k, a, b=None):
    inner = hashlib.sha256((k ^ _IPAD).to_bytes(_BLOCK, "big") if k else _IPAD_BLOCK)
    inner.update(a)
    if b is not None:
        inner.update(b)
    outer = hashlib.sha256((k ^ _OPAD).to_bytes(_BLOCK, "big") if k else _OPAD_BLOCK)
    outer.update(inner.digest())
    return outer.digest()


def hmac_sha256(key, data):
    return _mac(_key_block(key), data)


# RFC 5869 §2.2 extract and §2.3 expand. A missing salt is HashLen zero bytes, which as an
# HMAC key is the same block as the empty key. The caller checks 0 <= length <= HKDF_MAX_LENGTH.
def hkdf_sha256(ikm, salt, info, length):
    prk = _key_block(_mac(_key_block(salt or b""), ikm))
    block = _mac(prk, info, b"\x01")
    if length <= _HASH_LEN:
        return block[:length]
    okm = bytearray(length)
    done = 0
    counter = 1
    while True:
        take = min(_HASH_LEN, length - done)
        okm[done : done + take] = block[:take]
        done += take
        if done == length:
            return okm
        counter += 1
        block = _mac(prk, block + info, bytes((counter,)))
