# SHA-512 (FIPS 180-4) compression in viper. Every 64-bit word is held as two 32-bit
# halves (hi, lo) in array('I') storage; all arithmetic is 32-bit with explicit carries,
# so results are bit-identical on 32-bit boards (ESP32, RP2040: 32-bit viper words) and
# on 64-bit hosts (values are masked to 32 bits before any right shift or carry split).
# MicroPython only. Not thread-safe: sha512() uses module-level state and tail buffers,
# and every compression shares the module-level schedule W (SHA512 objects keep their
# own state and tail, so they may be interleaved with each other and with sha512()).
import micropython
from array import array

# FIPS 180-4 §4.2.3: K0..K79 as (hi, lo) pairs, 160 words.
_K = array("I", (
    0x428a2f98, 0xd728ae22, 0x71374491, 0x23ef65cd,
    0xb5c0fbcf, 0xec4d3b2f, 0xe9b5dba5, 0x8189dbbc,
    0x3956c25b, 0xf348b538, 0x59f111f1, 0xb605d019,
    0x923f82a4, 0xaf194f9b, 0xab1c5ed5, 0xda6d8118,
    0xd807aa98, 0xa3030242, 0x12835b01, 0x45706fbe,
    0x243185be, 0x4ee4b28c, 0x550c7dc3, 0xd5ffb4e2,
    0x72be5d74, 0xf27b896f, 0x80deb1fe, 0x3b1696b1,
    0x9bdc06a7, 0x25c71235, 0xc19bf174, 0xcf692694,
    0xe49b69c1, 0x9ef14ad2, 0xefbe4786, 0x384f25e3,
    0x0fc19dc6, 0x8b8cd5b5, 0x240ca1cc, 0x77ac9c65,
    0x2de92c6f, 0x592b0275, 0x4a7484aa, 0x6ea6e483,
    0x5cb0a9dc, 0xbd41fbd4, 0x76f988da, 0x831153b5,
    0x983e5152, 0xee66dfab, 0xa831c66d, 0x2db43210,
    0xb00327c8, 0x98fb213f, 0xbf597fc7, 0xbeef0ee4,
    0xc6e00bf3, 0x3da88fc2, 0xd5a79147, 0x930aa725,
    0x06ca6351, 0xe003826f, 0x14292967, 0x0a0e6e70,
    0x27b70a85, 0x46d22ffc, 0x2e1b2138, 0x5c26c926,
    0x4d2c6dfc, 0x5ac42aed, 0x53380d13, 0x9d95b3df,
    0x650a7354, 0x8baf63de, 0x766a0abb, 0x3c77b2a8,
    0x81c2c92e, 0x47edaee6, 0x92722c85, 0x1482353b,
    0xa2bfe8a1, 0x4cf10364, 0xa81a664b, 0xbc423001,
    0xc24b8b70, 0xd0f89791, 0xc76c51a3, 0x0654be30,
    0xd192e819, 0xd6ef5218, 0xd6990624, 0x5565a910,
    0xf40e3585, 0x5771202a, 0x106aa070, 0x32bbd1b8,
    0x19a4c116, 0xb8d2d0c8, 0x1e376c08, 0x5141ab53,
    0x2748774c, 0xdf8eeb99, 0x34b0bcb5, 0xe19b48a8,
    0x391c0cb3, 0xc5c95a63, 0x4ed8aa4a, 0xe3418acb,
    0x5b9cca4f, 0x7763e373, 0x682e6ff3, 0xd6b2b8a3,
    0x748f82ee, 0x5defb2fc, 0x78a5636f, 0x43172f60,
    0x84c87814, 0xa1f0ab72, 0x8cc70208, 0x1a6439ec,
    0x90befffa, 0x23631e28, 0xa4506ceb, 0xde82bde9,
    0xbef9a3f7, 0xb2c67915, 0xc67178f2, 0xe372532b,
    0xca273ece, 0xea26619c, 0xd186b8c7, 0x21c0c207,
    0xeada7dd6, 0xcde0eb1e, 0xf57d4f7f, 0xee6ed178,
    0x06f067aa, 0x72176fba, 0x0a637dc5, 0xa2c898a6,
    0x113f9804, 0xbef90dae, 0x1b710b35, 0x131c471b,
    0x28db77f5, 0x23047d84, 0x32caab7b, 0x40c72493,
    0x3c9ebe0a, 0x15c9bebc, 0x431d67c4, 0x9c100d4c,
    0x4cc5d4be, 0xcb3e42b6, 0x597f299c, 0xfc657e2a,
    0x5fcb6fab, 0x3ad6faec, 0x6c44198c, 0x4a475817,
))

# FIPS 180-4 §5.3.5: H(0) as (hi, lo) pairs.
_IV = array("I", (
    0x6a09e667, 0xf3bcc908, 0xbb67ae85, 0x84caa73b, 0x3c6ef372, 0xfe94f82b, 0xa54ff53a, 0x5f1d36f1,
    0x510e527f, 0xade682d1, 0x9b05688c, 0x2b3e6c1f, 0x1f83d9ab, 0xfb41bd6b, 0x5be0cd19, 0x137e2179,
))

_W = array("I", bytes(640))  # message schedule W0..W79 as (hi, lo), 160 words
_STATE = array("I", bytes(64))  # H0..H7 as (hi, lo), 16 words
_BLOCK = bytearray(128)  # the padded final block(s)
_DIGEST = bytearray(64)


# FIPS 180-4 §6.4.2: compress `blocks` consecutive 128-byte blocks data[offset:] into
# state (16 words). Additions mod 2^64 are done as 32-bit adds of 16-bit halves of the
# low words (the carry into the high word is the bit above them); high words simply
# wrap mod 2^32.
@micropython.viper
def _compress(state: ptr32, data: ptr8, offset: int, blocks: int):
    w = ptr32(_W)
    k = ptr32(_K)
    m = uint(0xFFFFFFFF)  # uint() so this also compiles where 0xFFFFFFFF is a big int
    while blocks > 0:
        # Step 1: W0..W15 are the block's big-endian 64-bit words.
        t = 0
        p = offset
        while t < 32:
            w[t] = (data[p] << 24) | (data[p + 1] << 16) | (data[p + 2] << 8) | data[p + 3]
            t += 1
            p += 4
        # Step 1: Wt = sigma1(Wt-2) + Wt-7 + sigma0(Wt-15) + Wt-16 for 16 <= t < 80.
        while t < 160:
            xh = uint(w[t - 30])
            xl = uint(w[t - 29])
            # sigma0 (4.12): ROTR^1 ^ ROTR^8 ^ SHR^7
            s0h = ((xh >> 1) | (xl << 31)) ^ ((xh >> 8) | (xl << 24)) ^ (xh >> 7)
            s0l = (((xl >> 1) | (xh << 31)) ^ ((xl >> 8) | (xh << 24)) ^ ((xl >> 7) | (xh << 25))) & m
            xh = uint(w[t - 4])
            xl = uint(w[t - 3])
            # sigma1 (4.13): ROTR^19 ^ ROTR^61 ^ SHR^6
            s1h = ((xh >> 19) | (xl << 13)) ^ ((xl >> 29) | (xh << 3)) ^ (xh >> 6)
            s1l = (((xl >> 19) | (xh << 13)) ^ ((xh >> 29) | (xl << 3)) ^ ((xl >> 6) | (xh << 26))) & m
            w7l = uint(w[t - 13])
            w16l = uint(w[t - 31])
            lo16 = (s1l & 0xFFFF) + (w7l & 0xFFFF) + (s0l & 0xFFFF) + (w16l & 0xFFFF)
            hi16 = (s1l >> 16) + (w7l >> 16) + (s0l >> 16) + (w16l >> 16) + (lo16 >> 16)
            w[t + 1] = (hi16 << 16) | (lo16 & 0xFFFF)  # ptr32 stores keep the low 32 bits
            w[t] = s1h + uint(w[t - 14]) + s0h + uint(w[t - 32]) + (hi16 >> 16)
            t += 2

        # Step 2: working variables a..h from the state.
        ah = uint(state[0])
        al = uint(state[1])
        bh = uint(state[2])
        bl = uint(state[3])
        ch = uint(state[4])
        cl = uint(state[5])
        dh = uint(state[6])
        dl = uint(state[7])
        eh = uint(state[8])
        el = uint(state[9])
        fh = uint(state[10])
        fl = uint(state[11])
        gh = uint(state[12])
        gl = uint(state[13])
        hh = uint(state[14])
        hl = uint(state[15])

        # Step 3: eighty rounds.
        t = 0
        while t < 160:
            # Sigma1(e) (4.11): ROTR^14 ^ ROTR^18 ^ ROTR^41
            s1h = (((eh >> 14) | (el << 18)) ^ ((eh >> 18) | (el << 14)) ^ ((el >> 9) | (eh << 23))) & m
            s1l = (((el >> 14) | (eh << 18)) ^ ((el >> 18) | (eh << 14)) ^ ((eh >> 9) | (el << 23))) & m
            # Ch(e, f, g) (4.8) = g ^ (e & (f ^ g))
            choose_h = gh ^ (eh & (fh ^ gh))
            choose_l = gl ^ (el & (fl ^ gl))
            # T1 = h + Sigma1(e) + Ch(e, f, g) + Kt + Wt
            kl = uint(k[t + 1])
            wl = uint(w[t + 1])
            lo16 = (hl & 0xFFFF) + (s1l & 0xFFFF) + (choose_l & 0xFFFF) + (kl & 0xFFFF) + (wl & 0xFFFF)
            hi16 = (hl >> 16) + (s1l >> 16) + (choose_l >> 16) + (kl >> 16) + (wl >> 16) + (lo16 >> 16)
            t1l = ((hi16 << 16) | (lo16 & 0xFFFF)) & m
            t1h = (hh + s1h + choose_h + uint(k[t]) + uint(w[t]) + (hi16 >> 16)) & m
            # Sigma0(a) (4.10): ROTR^28 ^ ROTR^34 ^ ROTR^39
            s0h = (((ah >> 28) | (al << 4)) ^ ((al >> 2) | (ah << 30)) ^ ((al >> 7) | (ah << 25))) & m
            s0l = (((al >> 28) | (ah << 4)) ^ ((ah >> 2) | (al << 30)) ^ ((ah >> 7) | (al << 25))) & m
            # Maj(a, b, c) (4.9) = (a & b) | (c & (a | b))
            major_h = (ah & bh) | (ch & (ah | bh))
            major_l = (al & bl) | (cl & (al | bl))
            hh = gh
            hl = gl
            gh = fh
            gl = fl
            fh = eh
            fl = el
            # e = d + T1
            lo16 = (dl & 0xFFFF) + (t1l & 0xFFFF)
            hi16 = (dl >> 16) + (t1l >> 16) + (lo16 >> 16)
            el = ((hi16 << 16) | (lo16 & 0xFFFF)) & m
            eh = (dh + t1h + (hi16 >> 16)) & m
            dh = ch
            dl = cl
            ch = bh
            cl = bl
            bh = ah
            bl = al
            # a = T1 + T2, T2 = Sigma0(a) + Maj(a, b, c)
            lo16 = (t1l & 0xFFFF) + (s0l & 0xFFFF) + (major_l & 0xFFFF)
            hi16 = (t1l >> 16) + (s0l >> 16) + (major_l >> 16) + (lo16 >> 16)
            al = ((hi16 << 16) | (lo16 & 0xFFFF)) & m
            ah = (t1h + s0h + major_h + (hi16 >> 16)) & m
            t += 2

        # Step 4: H(i) = working variables + H(i-1). W0..W15 are free now: stage a..h there.
        w[0] = ah
        w[1] = al
        w[2] = bh
        w[3] = bl
        w[4] = ch
        w[5] = cl
        w[6] = dh
        w[7] = dl
        w[8] = eh
        w[9] = el
        w[10] = fh
        w[11] = fl
        w[12] = gh
        w[13] = gl
        w[14] = hh
        w[15] = hl
        t = 0
        while t < 16:
            xl = uint(state[t + 1])
            yl = uint(w[t + 1])
            lo16 = (xl & 0xFFFF) + (yl & 0xFFFF)
            hi16 = (xl >> 16) + (yl >> 16) + (lo16 >> 16)
            state[t + 1] = (hi16 << 16) | (lo16 & 0xFFFF)
            state[t] = uint(state[t]) + uint(w[t]) + (hi16 >> 16)
            t += 2
        offset += 128
        blocks -= 1


# FIPS 180-4 §5.3.5: state = H(0).
@micropython.viper
def _start(state: ptr32):
    iv = ptr32(_IV)
    i = 0
    while i < 16:
        state[i] = iv[i]
        i += 1


# FIPS 180-4 §5.1.2: copy the partial block data[offset:end] into block, append the
# 1 bit and zeros. Returns 1 when the 128-bit length no longer fits (rem >= 112), so the
# block must be compressed and a second, all-padding block follows; else 0.
@micropython.viper
def _pad(block: ptr8, data: ptr8, offset: int, end: int) -> int:
    rem = end - offset
    i = 0
    while i < rem:
        block[i] = data[offset + i]
        i += 1
    block[rem] = 0x80
    i = rem + 1
    while i < 128:
        block[i] = 0
        i += 1
    if rem >= 112:
        return 1
    return 0


# FIPS 180-4 §5.1.2: the message length in bits as a 128-bit big-endian integer in the
# last 16 bytes of block (length in bytes < 2^31). Bytes 112..122 are zeroed, and
# bytes 0..111 too when clear is set (the second, all-padding block).
@micropython.viper
def _put_length(block: ptr8, length: int, clear: int):
    i = 0 if clear else 112
    while i < 123:
        block[i] = 0
        i += 1
    block[123] = length >> 29
    block[124] = length >> 21
    block[125] = length >> 13
    block[126] = length >> 5
    block[127] = length << 3  # ptr8 stores keep the low 8 bits


# FIPS 180-4 §6.4.2 step 4 output: H0..H7 big-endian into out (64 bytes); then wipe the
# schedule scratch (it holds message words) and the state.
@micropython.viper
def _output(out: ptr8, state: ptr32):
    i = 0
    while i < 16:
        x = uint(state[i])
        out[4 * i] = x >> 24
        out[4 * i + 1] = x >> 16
        out[4 * i + 2] = x >> 8
        out[4 * i + 3] = x
        state[i] = 0
        i += 1
    w = ptr32(_W)
    i = 0
    while i < 160:
        w[i] = 0
        i += 1


# FIPS 180-4 §5.1.2 and §6.4.2: the final block(s) of a message of `length` bytes
# whose unprocessed tail is data[offset:end], then the digest. block is left zeroed
# (block may be data itself, with offset 0).
def _finish(state, block, data, offset, end, length):
    if _pad(block, data, offset, end):
        _compress(state, block, 0, 1)
        _put_length(block, length, 1)
    else:
        _put_length(block, length, 0)
    _compress(state, block, 0, 1)
    _put_length(block, 0, 1)  # wipe the tail (it held message bytes)
    _output(_DIGEST, state)
    return bytes(_DIGEST)


# FIPS 180-4 §6.4: SHA-512 of a whole message (bytes, bytearray or memoryview).
# Full blocks are compressed straight from the input; only the tail is copied.
def sha512(data):
    length = len(data)
    full = length >> 7
    state = _STATE
    _start(state)
    if full:
        _compress(state, data, 0, full)
    return _finish(state, _BLOCK, data, full << 7, length, length)


# FIPS 180-4 §6.4: streaming hash object with its own state and tail buffer. update()
# any number of times, then digest() exactly once.
class SHA512:
    def __init__(self, data=None):
        self._state = array("I", bytes(64))
        _start(self._state)
        self._tail = bytearray(128)
        self._tail_len = 0
        self._length = 0
        if data is not None:
            self.update(data)

    def update(self, data):
        n = len(data)
        self._length += n
        pos = 0
        used = self._tail_len
        if used:
            take = 128 - used
            if take > n:
                take = n
            _copy(self._tail, used, data, 0, take)
            used += take
            pos = take
            if used < 128:
                self._tail_len = used
                return
            _compress(self._state, self._tail, 0, 1)
            used = 0
        full = (n - pos) >> 7
        if full:
            _compress(self._state, data, pos, full)
            pos += full << 7
        if pos < n:
            _copy(self._tail, 0, data, pos, n - pos)
            used = n - pos
        self._tail_len = used

    def digest(self):
        return _finish(self._state, self._tail, self._tail, 0, self._tail_len, self._length)


# dst[dst_offset:dst_offset + n] = src[src_offset:src_offset + n] without a slice object.
@micropython.viper
def _copy(dst: ptr8, dst_offset: int, src: ptr8, src_offset: int, n: int):
    i = 0
    while i < n:
        dst[dst_offset + i] = src[src_offset + i]
        i += 1
