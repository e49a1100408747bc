# ChaCha20-Poly1305 AEAD (RFC 8439 §2.8), viper backend for MicroPython.
# All arithmetic is on 32-bit words and gives the same bits on 32-bit boards (ESP32, RP2040)
# and on 64-bit ports: every sum, product and left shift either fits in 32 bits unsigned or is
# masked with `mask` = 0xFFFFFFFF. Values that can reach bit 31 are `uint`, so `>>` is logical.
# No literal above 2^30 appears inside viper code (on 32-bit ports such a literal would be a
# big-int object, which viper cannot mix with machine ints): the ChaCha constants come from
# the `_state` array and the mask is passed in as an argument.
# Scratch state lives at module level and is reused: the functions are not re-entrant, and
# seal_into/open_into allocate nothing on the heap.
import micropython
from array import array
from micropython import const

_TAG_SIZE = const(16)
_MASK32 = 0xFFFFFFFF  # not const(): a big int on 32-bit ports; viper receives it as uint

# RFC 8439 §2.3: ChaCha20 input state. Words 0-3 are "expand 32-byte k", 4-11 the key,
# 12 the block counter, 13-15 the nonce.
_state = array("I", [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574] + [0] * 12)
_keystream = array("I", [0] * 16)  # one ChaCha20 block as 16 words
# Poly1305 state, radix 2^13: accumulator h in [0:10], clamped r in [10:20], s in [20:28]
# as eight 16-bit words.
_poly = array("I", [0] * 28)
_last_block = bytearray(16)  # a short final block, zero-padded
_lengths = bytearray(16)  # le64(len(ad)) || le64(len(ciphertext))
_otk = bytearray(32)  # Poly1305 one-time key (RFC 8439 §2.6)
_zeros = bytes(32)
_tag = bytearray(_TAG_SIZE)  # computed tag when opening


# RFC 8439 §2.3: load key and nonce (little-endian words) into the input state.
@micropython.viper
def _chacha20_setup(st: ptr32, key: ptr8, nonce: ptr8):
    for i in range(8):
        j = i << 2
        st[4 + i] = (
            uint(key[j]) | (uint(key[j + 1]) << 8) | (uint(key[j + 2]) << 16) | (uint(key[j + 3]) << 24)
        )
    for i in range(3):
        j = i << 2
        st[13 + i] = (
            uint(nonce[j])
            | (uint(nonce[j + 1]) << 8)
            | (uint(nonce[j + 2]) << 16)
            | (uint(nonce[j + 3]) << 24)
        )


# RFC 8439 §2.3 (block function) and §2.4 (encryption): dst[i] = src[i] ^ keystream[i]
# for i < length, keystream blocks numbered from `counter`. dst may be src (same offsets).
# `mask` is always _MASK32; as the first argument it stays in a register (viper keeps its
# first three locals in registers), which makes the rounds about 8% faster.
@micropython.viper
def _chacha20_xor(mask: uint, st: ptr32, counter: int, src: ptr8, dst: ptr8, length: int):
    ks = ptr32(_keystream)
    pos = 0
    while pos < length:
        st[12] = counter
        x0 = uint(st[0])
        x1 = uint(st[1])
        x2 = uint(st[2])
        x3 = uint(st[3])
        x4 = uint(st[4])
        x5 = uint(st[5])
        x6 = uint(st[6])
        x7 = uint(st[7])
        x8 = uint(st[8])
        x9 = uint(st[9])
        x10 = uint(st[10])
        x11 = uint(st[11])
        x12 = uint(st[12])
        x13 = uint(st[13])
        x14 = uint(st[14])
        x15 = uint(st[15])
        # RFC 8439 §2.3: 20 rounds = 10 x (4 column + 4 diagonal quarter rounds, §2.1)
        for _ in range(10):
            # QUARTERROUND(0, 4, 8, 12)
            x0 = (x0 + x4) & mask
            x12 ^= x0
            x12 = ((x12 << 16) | (x12 >> 16)) & mask
            x8 = (x8 + x12) & mask
            x4 ^= x8
            x4 = ((x4 << 12) | (x4 >> 20)) & mask
            x0 = (x0 + x4) & mask
            x12 ^= x0
            x12 = ((x12 << 8) | (x12 >> 24)) & mask
            x8 = (x8 + x12) & mask
            x4 ^= x8
            x4 = ((x4 << 7) | (x4 >> 25)) & mask
            # QUARTERROUND(1, 5, 9, 13)
            x1 = (x1 + x5) & mask
            x13 ^= x1
            x13 = ((x13 << 16) | (x13 >> 16)) & mask
            x9 = (x9 + x13) & mask
            x5 ^= x9
            x5 = ((x5 << 12) | (x5 >> 20)) & mask
            x1 = (x1 + x5) & mask
            x13 ^= x1
            x13 = ((x13 << 8) | (x13 >> 24)) & mask
            x9 = (x9 + x13) & mask
            x5 ^= x9
            x5 = ((x5 << 7) | (x5 >> 25)) & mask
            # QUARTERROUND(2, 6, 10, 14)
            x2 = (x2 + x6) & mask
            x14 ^= x2
            x14 = ((x14 << 16) | (x14 >> 16)) & mask
            x10 = (x10 + x14) & mask
            x6 ^= x10
            x6 = ((x6 << 12) | (x6 >> 20)) & mask
            x2 = (x2 + x6) & mask
            x14 ^= x2
            x14 = ((x14 << 8) | (x14 >> 24)) & mask
            x10 = (x10 + x14) & mask
            x6 ^= x10
            x6 = ((x6 << 7) | (x6 >> 25)) & mask
            # QUARTERROUND(3, 7, 11, 15)
            x3 = (x3 + x7) & mask
            x15 ^= x3
            x15 = ((x15 << 16) | (x15 >> 16)) & mask
            x11 = (x11 + x15) & mask
            x7 ^= x11
            x7 = ((x7 << 12) | (x7 >> 20)) & mask
            x3 = (x3 + x7) & mask
            x15 ^= x3
            x15 = ((x15 << 8) | (x15 >> 24)) & mask
            x11 = (x11 + x15) & mask
            x7 ^= x11
            x7 = ((x7 << 7) | (x7 >> 25)) & mask
            # QUARTERROUND(0, 5, 10, 15)
            x0 = (x0 + x5) & mask
            x15 ^= x0
            x15 = ((x15 << 16) | (x15 >> 16)) & mask
            x10 = (x10 + x15) & mask
            x5 ^= x10
            x5 = ((x5 << 12) | (x5 >> 20)) & mask
            x0 = (x0 + x5) & mask
            x15 ^= x0
            x15 = ((x15 << 8) | (x15 >> 24)) & mask
            x10 = (x10 + x15) & mask
            x5 ^= x10
            x5 = ((x5 << 7) | (x5 >> 25)) & mask
            # QUARTERROUND(1, 6, 11, 12)
            x1 = (x1 + x6) & mask
            x12 ^= x1
            x12 = ((x12 << 16) | (x12 >> 16)) & mask
            x11 = (x11 + x12) & mask
            x6 ^= x11
            x6 = ((x6 << 12) | (x6 >> 20)) & mask
            x1 = (x1 + x6) & mask
            x12 ^= x1
            x12 = ((x12 << 8) | (x12 >> 24)) & mask
            x11 = (x11 + x12) & mask
            x6 ^= x11
            x6 = ((x6 << 7) | (x6 >> 25)) & mask
            # QUARTERROUND(2, 7, 8, 13)
            x2 = (x2 + x7) & mask
            x13 ^= x2
            x13 = ((x13 << 16) | (x13 >> 16)) & mask
            x8 = (x8 + x13) & mask
            x7 ^= x8
            x7 = ((x7 << 12) | (x7 >> 20)) & mask
            x2 = (x2 + x7) & mask
            x13 ^= x2
            x13 = ((x13 << 8) | (x13 >> 24)) & mask
            x8 = (x8 + x13) & mask
            x7 ^= x8
            x7 = ((x7 << 7) | (x7 >> 25)) & mask
            # QUARTERROUND(3, 4, 9, 14)
            x3 = (x3 + x4) & mask
            x14 ^= x3
            x14 = ((x14 << 16) | (x14 >> 16)) & mask
            x9 = (x9 + x14) & mask
            x4 ^= x9
            x4 = ((x4 << 12) | (x4 >> 20)) & mask
            x3 = (x3 + x4) & mask
            x14 ^= x3
            x14 = ((x14 << 8) | (x14 >> 24)) & mask
            x9 = (x9 + x14) & mask
            x4 ^= x9
            x4 = ((x4 << 7) | (x4 >> 25)) & mask
        ks[0] = (x0 + uint(st[0])) & mask
        ks[1] = (x1 + uint(st[1])) & mask
        ks[2] = (x2 + uint(st[2])) & mask
        ks[3] = (x3 + uint(st[3])) & mask
        ks[4] = (x4 + uint(st[4])) & mask
        ks[5] = (x5 + uint(st[5])) & mask
        ks[6] = (x6 + uint(st[6])) & mask
        ks[7] = (x7 + uint(st[7])) & mask
        ks[8] = (x8 + uint(st[8])) & mask
        ks[9] = (x9 + uint(st[9])) & mask
        ks[10] = (x10 + uint(st[10])) & mask
        ks[11] = (x11 + uint(st[11])) & mask
        ks[12] = (x12 + uint(st[12])) & mask
        ks[13] = (x13 + uint(st[13])) & mask
        ks[14] = (x14 + uint(st[14])) & mask
        ks[15] = (x15 + uint(st[15])) & mask
        # Serialize little-endian and XOR; a ptr8 store keeps the low 8 bits.
        n = length - pos
        if n >= 64:
            for w in range(16):
                k = uint(ks[w])
                b = pos + (w << 2)
                dst[b] = src[b] ^ k
                dst[b + 1] = src[b + 1] ^ (k >> 8)
                dst[b + 2] = src[b + 2] ^ (k >> 16)
                dst[b + 3] = src[b + 3] ^ (k >> 24)
        else:
            for i in range(n):
                dst[pos + i] = src[pos + i] ^ (uint(ks[i >> 2]) >> ((i & 3) << 3))
        counter += 1
        pos += 64


# RFC 8439 §2.5.1: r (clamped) and s from the 32-byte one-time key; h = 0.
# Limb i of r holds bits 13i..13i+12; the masks apply the clamp.
@micropython.viper
def _poly1305_init(poly: ptr32, key: ptr8):
    t0 = uint(key[0]) | (uint(key[1]) << 8)
    t1 = uint(key[2]) | (uint(key[3]) << 8)
    t2 = uint(key[4]) | (uint(key[5]) << 8)
    t3 = uint(key[6]) | (uint(key[7]) << 8)
    t4 = uint(key[8]) | (uint(key[9]) << 8)
    t5 = uint(key[10]) | (uint(key[11]) << 8)
    t6 = uint(key[12]) | (uint(key[13]) << 8)
    t7 = uint(key[14]) | (uint(key[15]) << 8)
    poly[10] = t0 & 0x1FFF
    poly[11] = ((t0 >> 13) | (t1 << 3)) & 0x1FFF
    poly[12] = ((t1 >> 10) | (t2 << 6)) & 0x1F03
    poly[13] = ((t2 >> 7) | (t3 << 9)) & 0x1FFF
    poly[14] = ((t3 >> 4) | (t4 << 12)) & 0x00FF
    poly[15] = (t4 >> 1) & 0x1FFE
    poly[16] = ((t4 >> 14) | (t5 << 2)) & 0x1FFF
    poly[17] = ((t5 >> 11) | (t6 << 5)) & 0x1F81
    poly[18] = ((t6 >> 8) | (t7 << 8)) & 0x1FFF
    poly[19] = (t7 >> 5) & 0x007F
    for i in range(10):
        poly[i] = 0
    for i in range(8):
        poly[20 + i] = uint(key[16 + 2 * i]) | (uint(key[17 + 2 * i]) << 8)


# RFC 8439 §2.5: h = (h + block) * r mod p for each 16-byte block of data[0:length].
# A short last block is zero-padded to 16 bytes and keeps its 2^128 bit (the AEAD
# padding of §2.8) or, when `plain` is true, gets a 0x01 byte after the data and no
# 2^128 bit (plain Poly1305 of §2.5). Limbs are 13 bits (poly1305-donna-16 layout):
# h limbs < 2^15, 5*r limbs < 2^16, so a row of five products plus carries stays
# below 2^32 and each row is carried half-way.
@micropython.viper
def _poly1305_blocks(poly: ptr32, data: ptr8, length: int, plain: int):
    r0 = uint(poly[10])
    r1 = uint(poly[11])
    r2 = uint(poly[12])
    r3 = uint(poly[13])
    r4 = uint(poly[14])
    r5 = uint(poly[15])
    r6 = uint(poly[16])
    r7 = uint(poly[17])
    r8 = uint(poly[18])
    r9 = uint(poly[19])
    s1 = r1 * 5
    s2 = r2 * 5
    s3 = r3 * 5
    s4 = r4 * 5
    s5 = r5 * 5
    s6 = r6 * 5
    s7 = r7 * 5
    s8 = r8 * 5
    s9 = r9 * 5
    h0 = uint(poly[0])
    h1 = uint(poly[1])
    h2 = uint(poly[2])
    h3 = uint(poly[3])
    h4 = uint(poly[4])
    h5 = uint(poly[5])
    h6 = uint(poly[6])
    h7 = uint(poly[7])
    h8 = uint(poly[8])
    h9 = uint(poly[9])
    full = length >> 4
    tail = length & 15
    count = full
    if tail:
        count += 1
    hibit = uint(1 << 11)  # 2^128 sits at bit 11 of limb 9
    m = data
    off = 0
    k = 0
    while k < count:
        if k == full:
            pad = ptr8(_last_block)
            for i in range(16):
                pad[i] = 0
            for i in range(tail):
                pad[i] = data[off + i]
            if plain:
                pad[tail] = 1
                hibit = uint(0)
            m = pad
            off = 0
        t0 = uint(m[off]) | (uint(m[off + 1]) << 8)
        t1 = uint(m[off + 2]) | (uint(m[off + 3]) << 8)
        t2 = uint(m[off + 4]) | (uint(m[off + 5]) << 8)
        t3 = uint(m[off + 6]) | (uint(m[off + 7]) << 8)
        t4 = uint(m[off + 8]) | (uint(m[off + 9]) << 8)
        t5 = uint(m[off + 10]) | (uint(m[off + 11]) << 8)
        t6 = uint(m[off + 12]) | (uint(m[off + 13]) << 8)
        t7 = uint(m[off + 14]) | (uint(m[off + 15]) << 8)
        h0 += t0 & 0x1FFF
        h1 += ((t0 >> 13) | (t1 << 3)) & 0x1FFF
        h2 += ((t1 >> 10) | (t2 << 6)) & 0x1FFF
        h3 += ((t2 >> 7) | (t3 << 9)) & 0x1FFF
        h4 += ((t3 >> 4) | (t4 << 12)) & 0x1FFF
        h5 += (t4 >> 1) & 0x1FFF
        h6 += ((t4 >> 14) | (t5 << 2)) & 0x1FFF
        h7 += ((t5 >> 11) | (t6 << 5)) & 0x1FFF
        h8 += ((t6 >> 8) | (t7 << 8)) & 0x1FFF
        h9 += (t7 >> 5) | hibit
        # h * r mod p: limb i gets h[j] * r[i-j], or h[j] * 5 * r[i+10-j] when the
        # product wraps past 2^130 (2^130 = 5 mod p).
        d0 = h0 * r0 + h1 * s9 + h2 * s8 + h3 * s7 + h4 * s6
        c = d0 >> 13
        d0 = (d0 & 0x1FFF) + h5 * s5 + h6 * s4 + h7 * s3 + h8 * s2 + h9 * s1
        c += d0 >> 13
        d0 &= 0x1FFF
        d1 = c + h0 * r1 + h1 * r0 + h2 * s9 + h3 * s8 + h4 * s7
        c = d1 >> 13
        d1 = (d1 & 0x1FFF) + h5 * s6 + h6 * s5 + h7 * s4 + h8 * s3 + h9 * s2
        c += d1 >> 13
        d1 &= 0x1FFF
        d2 = c + h0 * r2 + h1 * r1 + h2 * r0 + h3 * s9 + h4 * s8
        c = d2 >> 13
        d2 = (d2 & 0x1FFF) + h5 * s7 + h6 * s6 + h7 * s5 + h8 * s4 + h9 * s3
        c += d2 >> 13
        d2 &= 0x1FFF
        d3 = c + h0 * r3 + h1 * r2 + h2 * r1 + h3 * r0 + h4 * s9
        c = d3 >> 13
        d3 = (d3 & 0x1FFF) + h5 * s8 + h6 * s7 + h7 * s6 + h8 * s5 + h9 * s4
        c += d3 >> 13
        d3 &= 0x1FFF
        d4 = c + h0 * r4 + h1 * r3 + h2 * r2 + h3 * r1 + h4 * r0
        c = d4 >> 13
        d4 = (d4 & 0x1FFF) + h5 * s9 + h6 * s8 + h7 * s7 + h8 * s6 + h9 * s5
        c += d4 >> 13
        d4 &= 0x1FFF
        d5 = c + h0 * r5 + h1 * r4 + h2 * r3 + h3 * r2 + h4 * r1
        c = d5 >> 13
        d5 = (d5 & 0x1FFF) + h5 * r0 + h6 * s9 + h7 * s8 + h8 * s7 + h9 * s6
        c += d5 >> 13
        d5 &= 0x1FFF
        d6 = c + h0 * r6 + h1 * r5 + h2 * r4 + h3 * r3 + h4 * r2
        c = d6 >> 13
        d6 = (d6 & 0x1FFF) + h5 * r1 + h6 * r0 + h7 * s9 + h8 * s8 + h9 * s7
        c += d6 >> 13
        d6 &= 0x1FFF
        d7 = c + h0 * r7 + h1 * r6 + h2 * r5 + h3 * r4 + h4 * r3
        c = d7 >> 13
        d7 = (d7 & 0x1FFF) + h5 * r2 + h6 * r1 + h7 * r0 + h8 * s9 + h9 * s8
        c += d7 >> 13
        d7 &= 0x1FFF
        d8 = c + h0 * r8 + h1 * r7 + h2 * r6 + h3 * r5 + h4 * r4
        c = d8 >> 13
        d8 = (d8 & 0x1FFF) + h5 * r3 + h6 * r2 + h7 * r1 + h8 * r0 + h9 * s9
        c += d8 >> 13
        d8 &= 0x1FFF
        d9 = c + h0 * r9 + h1 * r8 + h2 * r7 + h3 * r6 + h4 * r5
        c = d9 >> 13
        d9 = (d9 & 0x1FFF) + h5 * r4 + h6 * r3 + h7 * r2 + h8 * r1 + h9 * r0
        c += d9 >> 13
        d9 &= 0x1FFF
        c = (c << 2) + c
        c += d0
        h0 = c & 0x1FFF
        h1 = d1 + (c >> 13)
        h2 = d2
        h3 = d3
        h4 = d4
        h5 = d5
        h6 = d6
        h7 = d7
        h8 = d8
        h9 = d9
        off += 16
        k += 1
    poly[0] = h0
    poly[1] = h1
    poly[2] = h2
    poly[3] = h3
    poly[4] = h4
    poly[5] = h5
    poly[6] = h6
    poly[7] = h7
    poly[8] = h8
    poly[9] = h9


# RFC 8439 §2.5: tag = (h mod p + s) mod 2^128, written little-endian to out[off:off+16].
@micropython.viper
def _poly1305_finish(poly: ptr32, out: ptr8, off: int):
    h0 = uint(poly[0])
    h1 = uint(poly[1])
    h2 = uint(poly[2])
    h3 = uint(poly[3])
    h4 = uint(poly[4])
    h5 = uint(poly[5])
    h6 = uint(poly[6])
    h7 = uint(poly[7])
    h8 = uint(poly[8])
    h9 = uint(poly[9])
    # Two full carry passes (carry out of limb 9 re-enters limb 0 times 5): afterwards
    # every limb is < 2^13 and h < 2^130.
    for _ in range(2):
        c = h0 >> 13
        h0 &= 0x1FFF
        h1 += c
        c = h1 >> 13
        h1 &= 0x1FFF
        h2 += c
        c = h2 >> 13
        h2 &= 0x1FFF
        h3 += c
        c = h3 >> 13
        h3 &= 0x1FFF
        h4 += c
        c = h4 >> 13
        h4 &= 0x1FFF
        h5 += c
        c = h5 >> 13
        h5 &= 0x1FFF
        h6 += c
        c = h6 >> 13
        h6 &= 0x1FFF
        h7 += c
        c = h7 >> 13
        h7 &= 0x1FFF
        h8 += c
        c = h8 >> 13
        h8 &= 0x1FFF
        h9 += c
        c = h9 >> 13
        h9 &= 0x1FFF
        h0 += (c << 2) + c
    # g = h + 5 - 2^130; the carry out of limb 9 is 1 exactly when h >= p.
    g0 = h0 + 5
    c = g0 >> 13
    g0 &= 0x1FFF
    g1 = h1 + c
    c = g1 >> 13
    g1 &= 0x1FFF
    g2 = h2 + c
    c = g2 >> 13
    g2 &= 0x1FFF
    g3 = h3 + c
    c = g3 >> 13
    g3 &= 0x1FFF
    g4 = h4 + c
    c = g4 >> 13
    g4 &= 0x1FFF
    g5 = h5 + c
    c = g5 >> 13
    g5 &= 0x1FFF
    g6 = h6 + c
    c = g6 >> 13
    g6 &= 0x1FFF
    g7 = h7 + c
    c = g7 >> 13
    g7 &= 0x1FFF
    g8 = h8 + c
    c = g8 >> 13
    g8 &= 0x1FFF
    g9 = h9 + c
    c = g9 >> 13
    g9 &= 0x1FFF
    # Constant-time select: h = g when c == 1 (select covers all 13 limb bits), else h.
    select = c * 0x1FFF
    h0 ^= (h0 ^ g0) & select
    h1 ^= (h1 ^ g1) & select
    h2 ^= (h2 ^ g2) & select
    h3 ^= (h3 ^ g3) & select
    h4 ^= (h4 ^ g4) & select
    h5 ^= (h5 ^ g5) & select
    h6 ^= (h6 ^ g6) & select
    h7 ^= (h7 ^ g7) & select
    h8 ^= (h8 ^ g8) & select
    h9 ^= (h9 ^ g9) & select
    # h mod 2^128 as eight 16-bit words, plus s with carries (each sum < 2^17).
    f = ((h0 | (h1 << 13)) & 0xFFFF) + uint(poly[20])
    out[off] = f
    out[off + 1] = f >> 8
    f = (((h1 >> 3) | (h2 << 10)) & 0xFFFF) + uint(poly[21]) + (f >> 16)
    out[off + 2] = f
    out[off + 3] = f >> 8
    f = (((h2 >> 6) | (h3 << 7)) & 0xFFFF) + uint(poly[22]) + (f >> 16)
    out[off + 4] = f
    out[off + 5] = f >> 8
    f = (((h3 >> 9) | (h4 << 4)) & 0xFFFF) + uint(poly[23]) + (f >> 16)
    out[off + 6] = f
    out[off + 7] = f >> 8
    f = (((h4 >> 12) | (h5 << 1) | (h6 << 14)) & 0xFFFF) + uint(poly[24]) + (f >> 16)
    out[off + 8] = f
    out[off + 9] = f >> 8
    f = (((h6 >> 2) | (h7 << 11)) & 0xFFFF) + uint(poly[25]) + (f >> 16)
    out[off + 10] = f
    out[off + 11] = f >> 8
    f = (((h7 >> 5) | (h8 << 8)) & 0xFFFF) + uint(poly[26]) + (f >> 16)
    out[off + 12] = f
    out[off + 13] = f >> 8
    f = (((h8 >> 8) | (h9 << 5)) & 0xFFFF) + uint(poly[27]) + (f >> 16)
    out[off + 14] = f
    out[off + 15] = f >> 8


# RFC 8439 §2.8: the final Poly1305 block, le64(ad_len) || le64(ct_len).
# (x >> 16) >> 16 is 0 on 32-bit ports, where a single shift by 32 is undefined.
@micropython.viper
def _put_lengths(block: ptr8, ad_len: int, ct_len: int):
    hi_ad = (ad_len >> 16) >> 16
    hi_ct = (ct_len >> 16) >> 16
    for i in range(4):
        block[i] = ad_len >> (i << 3)
        block[4 + i] = hi_ad >> (i << 3)
        block[8 + i] = ct_len >> (i << 3)
        block[12 + i] = hi_ct >> (i << 3)


# OR of a[i] ^ b[i] over 16 bytes: zero exactly when the tags match; no early exit.
@micropython.viper
def _tag_diff(a: ptr8, b: ptr8) -> int:
    diff = 0
    for i in range(_TAG_SIZE):
        diff |= a[i] ^ b[i]
    return diff


# RFC 8439 §2.6 + §2.8: one-time key from block 0, then the tag over
# ad || pad16 || ciphertext || pad16 || le64(len(ad)) || le64(len(ciphertext)).
def _aead_tag(ad, ciphertext, ct_len, out, off):
    poly = _poly
    _chacha20_xor(_MASK32, _state, 0, _zeros, _otk, 32)
    _poly1305_init(poly, _otk)
    _poly1305_blocks(poly, ad, len(ad), 0)
    _poly1305_blocks(poly, ciphertext, ct_len, 0)
    _put_lengths(_lengths, len(ad), ct_len)
    _poly1305_blocks(poly, _lengths, 16, 0)
    _poly1305_finish(poly, out, off)


# Clears the key words, keystream, Poly1305 state and one-time key left in module scratch.
@micropython.viper
def _wipe(st: ptr32, ks: ptr32, poly: ptr32, otk: ptr8):
    for i in range(4, 16):
        st[i] = 0
    for i in range(16):
        ks[i] = 0
    for i in range(28):
        poly[i] = 0
    for i in range(32):
        otk[i] = 0


# RFC 8439 §2.8: out = ChaCha20(key, nonce, counter 1) ^ plaintext || tag.
def seal_into(key, nonce, plaintext, ad, out):
    n = len(plaintext)
    _chacha20_setup(_state, key, nonce)
    _chacha20_xor(_MASK32, _state, 1, plaintext, out, n)
    _aead_tag(ad, out, n, out, n)
    _wipe(_state, _keystream, _poly, _otk)


# RFC 8439 §2.8: verify the tag in constant time, then decrypt into out. On a mismatch
# returns False and leaves out untouched.
def open_into(key, nonce, ciphertext, tag, ad, out):
    n = len(ciphertext)
    _chacha20_setup(_state, key, nonce)
    _aead_tag(ad, ciphertext, n, _tag, 0)
    if _tag_diff(_tag, tag) != 0:
        _wipe(_state, _keystream, _poly, _otk)
        return False
    _chacha20_xor(_MASK32, _state, 1, ciphertext, out, n)
    _wipe(_state, _keystream, _poly, _otk)
    return True


# Building blocks for the RFC 8439 §2.4 and §2.5 known-answer tests (hazmat: not for protocol
# code). dst = src ^ ChaCha20(key, nonce) from block `counter`; out[0:16] = Poly1305(key, msg).
def chacha20_xor(key, nonce, counter, src, dst):
    _chacha20_setup(_state, key, nonce)
    _chacha20_xor(_MASK32, _state, counter, src, dst, len(src))
    _wipe(_state, _keystream, _poly, _otk)


def poly1305_into(key, msg, out):
    _poly1305_init(_poly, key)
    _poly1305_blocks(_poly, msg, len(msg), 1)
    _poly1305_finish(_poly, out, 0)
    _wipe(_state, _keystream, _poly, _otk)
