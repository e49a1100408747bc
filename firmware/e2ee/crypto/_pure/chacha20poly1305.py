# ChaCha20-Poly1305 AEAD (RFC 8439 §2.8), portable pure-Python backend.
# Runs on MicroPython and CPython. ChaCha20 works on plain small ints: each 32-bit word is
# kept as two 16-bit halves, so nothing exceeds 2^30 and no big int is allocated even on
# 32-bit ports (31-bit small ints). Poly1305 uses big ints on purpose (h = (h + n) * r % p).
# Scratch state lives at module level, so the functions are not re-entrant (one caller at
# a time, as on a single-threaded board).
try:
    from micropython import const
except ImportError:
    const = lambda x: x

_TAG_SIZE = const(16)
_MASK16 = const(0xFFFF)

# RFC 8439 §2.3: the four constant words "expand 32-byte k" as (low, high) 16-bit halves.
_SIGMA = (0x7865, 0x6170, 0x646E, 0x3320, 0x2D32, 0x7962, 0x6574, 0x6B20)
# RFC 8439 §2.5.1: Poly1305 prime and the clamp applied to r.
_P1305 = (1 << 130) - 5
_CLAMP = 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
_MASK128 = (1 << 128) - 1

# ChaCha20 input state (constants, key, block counter, nonce) and working state;
# word i is held as x[2i] = low 16 bits, x[2i+1] = high 16 bits.
_state = [0] * 32
_work = [0] * 32
_keystream = bytearray(64)  # one serialized ChaCha20 block
_otk = bytearray(32)  # Poly1305 one-time key
_tag = bytearray(_TAG_SIZE)  # computed tag when opening


# RFC 8439 §2.1: the quarter round on words a, b, c, d of the working state:
#   a += b; d ^= a; d <<<= 16;  c += d; b ^= c; b <<<= 12;
#   a += b; d ^= a; d <<<= 8;   c += d; b ^= c; b <<<= 7.
# Additions carry from the low to the high half; rotations by n < 16 move bits across
# the halves; <<< 16 swaps them.
def _quarter_round(x, a, b, c, d):
    a *= 2
    b *= 2
    c *= 2
    d *= 2
    al = x[a]
    ah = x[a + 1]
    bl = x[b]
    bh = x[b + 1]
    cl = x[c]
    ch = x[c + 1]
    dl = x[d]
    dh = x[d + 1]
    al += bl
    ah = (ah + bh + (al >> 16)) & _MASK16
    al &= _MASK16
    dh, dl = dl ^ al, dh ^ ah
    cl += dl
    ch = (ch + dh + (cl >> 16)) & _MASK16
    cl &= _MASK16
    bl ^= cl
    bh ^= ch
    bl, bh = ((bl << 12) | (bh >> 4)) & _MASK16, ((bh << 12) | (bl >> 4)) & _MASK16
    al += bl
    ah = (ah + bh + (al >> 16)) & _MASK16
    al &= _MASK16
    dl ^= al
    dh ^= ah
    dl, dh = ((dl << 8) | (dh >> 8)) & _MASK16, ((dh << 8) | (dl >> 8)) & _MASK16
    cl += dl
    ch = (ch + dh + (cl >> 16)) & _MASK16
    cl &= _MASK16
    bl ^= cl
    bh ^= ch
    bl, bh = ((bl << 7) | (bh >> 9)) & _MASK16, ((bh << 7) | (bl >> 9)) & _MASK16
    x[a] = al
    x[a + 1] = ah
    x[b] = bl
    x[b + 1] = bh
    x[c] = cl
    x[c + 1] = ch
    x[d] = dl
    x[d + 1] = dh


# RFC 8439 §2.3: load key and nonce (little-endian words) into the input state.
def _chacha20_setup(key, nonce):
    st = _state
    for i in range(8):
        st[i] = _SIGMA[i]
    for i in range(16):
        st[8 + i] = key[2 * i] | (key[2 * i + 1] << 8)
    for i in range(6):
        st[26 + i] = nonce[2 * i] | (nonce[2 * i + 1] << 8)


# RFC 8439 §2.3: the ChaCha20 block function; serializes block `counter` into _keystream.
def _chacha20_block(counter):
    st = _state
    x = _work
    st[24] = counter & _MASK16
    st[25] = (counter >> 16) & _MASK16
    for i in range(32):
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
    ks = _keystream
    for i in range(16):
        lo = x[2 * i] + st[2 * i]
        hi = x[2 * i + 1] + st[2 * i + 1] + (lo >> 16)
        ks[4 * i] = lo & 0xFF
        ks[4 * i + 1] = (lo >> 8) & 0xFF
        ks[4 * i + 2] = hi & 0xFF
        ks[4 * i + 3] = (hi >> 8) & 0xFF


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


# RFC 8439 §2.5: one-shot Poly1305 of msg under a 32-byte one-time key; returns the
# 16-byte tag (used by the known-answer tests of §2.5.2 and Appendix A.3).
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


# Clears the key words, working state, keystream and one-time key left in module scratch.
def _wipe():
    for i in range(8, 32):
        _state[i] = 0
    for i in range(32):
        _work[i] = 0
        _otk[i] = 0
    for i in range(64):
        _keystream[i] = 0


# RFC 8439 §2.8: out = ChaCha20(key, nonce, counter 1) ^ plaintext || tag.
def seal_into(key, nonce, plaintext, ad, out):
    n = len(plaintext)
    _chacha20_setup(key, nonce)
    ciphertext = memoryview(out)[0:n]
    _chacha20_xor(1, plaintext, ciphertext)
    _aead_tag(ad, ciphertext, out, n)
    _wipe()


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
        _wipe()
        return False
    _chacha20_xor(1, ciphertext, out)
    _wipe()
    return True


# Building blocks for the RFC 8439 §2.4 and §2.5 known-answer tests (hazmat: not for protocol
# code). dst = src ^ ChaCha20(key, nonce) from block `counter`; out[0:16] = Poly1305(key, msg).
def chacha20_xor(key, nonce, counter, src, dst):
    _chacha20_setup(key, nonce)
    _chacha20_xor(counter, src, dst)
    _wipe()


def poly1305_into(key, msg, out):
    out[0:_TAG_SIZE] = _poly1305_mac(key, msg)
