# ChaCha20-Poly1305 AEAD (RFC 8439 §2.8), portable pure-Python backend.
# Runs on MicroPython and CPython. ChaCha20 works on plain 32-bit ints; Poly1305 uses big
# ints on purpose (h = (h + n) * r % p). Scratch state lives at module level, so the
# functions are not re-entrant (one caller at a time, as on a single-threaded board).
import struct

try:
    from micropython import const
except ImportError:
    const = lambda x: x

_TAG_SIZE = const(16)

# RFC 8439 §2.3: the four constant words "expand 32-byte k".
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)
_MASK32 = 0xFFFFFFFF
# RFC 8439 §2.5.1: Poly1305 prime and the clamp applied to r.
_P1305 = (1 << 130) - 5
_CLAMP = 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
_MASK128 = (1 << 128) - 1

_state = [0] * 16  # ChaCha20 input state: constants, key, block counter, nonce
_work = [0] * 16  # ChaCha20 working state
_keystream = bytearray(64)  # one serialized ChaCha20 block
_otk = bytearray(32)  # Poly1305 one-time key
_tag = bytearray(_TAG_SIZE)  # computed tag when opening


# RFC 8439 §2.1: the quarter round on four words of the working state.
def _quarter_round(x, a, b, c, d):
    xa = (x[a] + x[b]) & _MASK32
    xd = x[d] ^ xa
    xd = ((xd << 16) | (xd >> 16)) & _MASK32
    xc = (x[c] + xd) & _MASK32
    xb = x[b] ^ xc
    xb = ((xb << 12) | (xb >> 20)) & _MASK32
    xa = (xa + xb) & _MASK32
    xd ^= xa
    xd = ((xd << 8) | (xd >> 24)) & _MASK32
    xc = (xc + xd) & _MASK32
    xb ^= xc
    x[a] = xa
    x[b] = ((xb << 7) | (xb >> 25)) & _MASK32
    x[c] = xc
    x[d] = xd


# RFC 8439 §2.3: load key and nonce into the input state (counter set per block).
def _chacha20_setup(key, nonce):
    st = _state
    for i in range(4):
        st[i] = _SIGMA[i]
    for i in range(8):
        st[4 + i] = struct.unpack_from("<I", key, 4 * i)[0]
    for i in range(3):
        st[13 + i] = struct.unpack_from("<I", nonce, 4 * i)[0]


# RFC 8439 §2.3: the ChaCha20 block function; serializes block `counter` into _keystream.
def _chacha20_block(counter):
    st = _state
    x = _work
    st[12] = counter & _MASK32
    for i in range(16):
        x[i] = st[i]
    for _ in range(10):
        _quarter_round(x, 0, 4, 8, 12)
        _quarter_round(x, 1, 5, 9, 13)
        _quarter_round(x, 2, 6, 10, 14)
        _quarter_round(x, 3, 7, 11, 15)
        _quarter_round(x, 0, 5, 10, 15)
        _quarter_round(x, 1, 6, 11, 12)
        _quarter_round(x, 2, 7, 8, 13)
        _quarter_round(x, 3, 4, 9, 14)
    for i in range(16):
        struct.pack_into("<I", _keystream, 4 * i, (x[i] + st[i]) & _MASK32)


# RFC 8439 §2.4: dst[i] = src[i] ^ keystream[i] for i < len(src), blocks from `counter`.
# dst may be src itself (same offsets).
def _chacha20_xor(counter, src, dst):
    ks = _keystream
    n = len(src)
    pos = 0
    while pos < n:
        _chacha20_block(counter)
        counter += 1
        m = n - pos
        if m > 64:
            m = 64
        for i in range(m):
            dst[pos + i] = src[pos + i] ^ ks[i]
        pos += 64


# RFC 8439 §2.5: absorb `data` into accumulator `acc` 16 bytes at a time. A short last
# block gets its 2^(8*len) bit (plain Poly1305), or with `pad16` is zero-padded to 16
# bytes as the AEAD construction of §2.8 requires (so its high bit is 2^128).
def _poly1305_update(acc, r, data, pad16):
    view = memoryview(data)
    n = len(view)
    pos = 0
    while pos < n:
        end = pos + 16
        if end > n:
            end = n
        block = int.from_bytes(view[pos:end], "little")
        if pad16:
            block += 1 << 128
        else:
            block += 1 << (8 * (end - pos))
        acc = (acc + block) * r % _P1305
        pos = end
    return acc


# RFC 8439 §2.5.1: clamped r from the first half of a one-time key.
def _poly1305_r(otk):
    return int.from_bytes(otk[0:16], "little") & _CLAMP


# RFC 8439 §2.5.1: tag = (acc + s) mod 2^128, written little-endian into out[off:off+16].
def _poly1305_tag(acc, otk, out, off):
    s = int.from_bytes(otk[16:32], "little")
    out[off : off + _TAG_SIZE] = ((acc + s) & _MASK128).to_bytes(_TAG_SIZE, "little")


# RFC 8439 §2.5: one-shot Poly1305 MAC of msg (16 bytes) under a 32-byte one-time key.
def _poly1305_mac(otk, msg):
    out = bytearray(_TAG_SIZE)
    _poly1305_tag(_poly1305_update(0, _poly1305_r(otk), msg, False), otk, out, 0)
    return out


# RFC 8439 §2.6 + §2.8: one-time key from block 0, then the tag over
# ad || pad16 || ciphertext || pad16 || le64(len(ad)) || le64(len(ciphertext)).
def _aead_tag(ad, ciphertext, out, off):
    _chacha20_block(0)
    otk = _otk
    otk[:] = memoryview(_keystream)[0:32]
    r = _poly1305_r(otk)
    acc = _poly1305_update(0, r, ad, True)
    acc = _poly1305_update(acc, r, ciphertext, True)
    lengths = len(ad) | (len(ciphertext) << 64) | (1 << 128)
    acc = (acc + lengths) * r % _P1305
    _poly1305_tag(acc, otk, out, off)


# RFC 8439 §2.8: out = ChaCha20(key, nonce, counter 1) ^ plaintext || tag.
def seal_into(key, nonce, plaintext, ad, out):
    n = len(plaintext)
    _chacha20_setup(key, nonce)
    ciphertext = memoryview(out)[0:n]
    _chacha20_xor(1, plaintext, ciphertext)
    _aead_tag(ad, ciphertext, out, n)


# RFC 8439 §2.8: verify the tag in constant time, then decrypt into out. On a mismatch
# returns False and leaves out untouched.
def open_into(key, nonce, ciphertext, tag, ad, out):
    _chacha20_setup(key, nonce)
    expected = _tag
    _aead_tag(ad, ciphertext, expected, 0)
    diff = 0
    for i in range(_TAG_SIZE):
        diff |= expected[i] ^ tag[i]
    if diff != 0:
        return False
    _chacha20_xor(1, ciphertext, out)
    return True
