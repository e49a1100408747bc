# X25519 (RFC 7748 §5), portable pure Python: field elements are plain ints mod p
# (big ints on purpose). Runs on MicroPython and CPython.

# RFC 7748 §4.1: p = 2^255 - 19.
_P = (1 << 255) - 19
# RFC 7748 §5: a24 = (486662 - 2) / 4.
_A24 = 121665


# Raise z to the power 2^n mod p (n squarings).
def _sqr_n(z, n):
    p = _P
    for _ in range(n):
        z = z * z % p
    return z


# z^(2^250 - 1) and z^11 mod p, the shared prefix of the two exponentiations below
# (the addition chain of the curve25519/ref10 reference code).
def _pow2_250_1(z):
    p = _P
    z2 = z * z % p
    z9 = _sqr_n(z2, 2) * z % p
    z11 = z9 * z2 % p
    z_5_0 = z11 * z11 % p * z9 % p  # z^(2^5 - 1)
    z_10_0 = _sqr_n(z_5_0, 5) * z_5_0 % p
    z_20_0 = _sqr_n(z_10_0, 10) * z_10_0 % p
    z_40_0 = _sqr_n(z_20_0, 20) * z_20_0 % p
    z_50_0 = _sqr_n(z_40_0, 10) * z_10_0 % p
    z_100_0 = _sqr_n(z_50_0, 50) * z_50_0 % p
    z_200_0 = _sqr_n(z_100_0, 100) * z_100_0 % p
    z_250_0 = _sqr_n(z_200_0, 50) * z_50_0 % p
    return z_250_0, z11


# RFC 7748 §5: z^(p - 2) mod p = 1/z (0 maps to 0). Fixed sequence of 254 squarings
# and 11 multiplications, independent of z.
def _invert(z):
    z_250_0, z11 = _pow2_250_1(z)
    return _sqr_n(z_250_0, 5) * z11 % _P


# z^((p - 5) / 8) = z^(2^252 - 3) mod p, used for square roots (RFC 8032 §5.1.3 step 2).
def _pow_p58(z):
    z_250_0, _ = _pow2_250_1(z)
    return _sqr_n(z_250_0, 2) * z % _P


# RFC 7748 §5: decodeScalar25519 (clamping).
def _decode_scalar(k):
    k = bytearray(k)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return int.from_bytes(k, "little")


# RFC 7748 §5: decodeUCoordinate; the top bit is masked and u >= p is accepted and
# reduced (non-canonical values are processed as u mod p).
def _decode_u(u):
    return (int.from_bytes(bytes(u), "little") & ((1 << 255) - 1)) % _P


# RFC 7748 §5: the Montgomery ladder over the x-coordinate, with cswap done by an
# arithmetic mask (mask is 0 or -1) instead of a branch on the scalar bit.
def _ladder(k, x1):
    p = _P
    a24 = _A24
    x2 = 1
    z2 = 0
    x3 = x1
    z3 = 1
    swap = 0
    for t in range(254, -1, -1):
        k_t = (k >> t) & 1
        swap ^= k_t
        mask = -swap
        dummy = mask & (x2 ^ x3)
        x2 ^= dummy
        x3 ^= dummy
        dummy = mask & (z2 ^ z3)
        z2 ^= dummy
        z3 ^= dummy
        swap = k_t

        a = x2 + z2
        aa = a * a % p
        b = x2 - z2
        bb = b * b % p
        e = aa - bb
        c = x3 + z3
        d = x3 - z3
        da = d * a % p
        cb = c * b % p
        x3 = da + cb
        x3 = x3 * x3 % p
        z3 = da - cb
        z3 = x1 * (z3 * z3 % p) % p
        x2 = aa * bb % p
        z2 = e * (aa + a24 * e) % p

    mask = -swap
    dummy = mask & (x2 ^ x3)
    x2 ^= dummy
    dummy = mask & (z2 ^ z3)
    z2 ^= dummy
    return x2 * _invert(z2) % p


# RFC 7748 §5: X25519(k, u), 32-byte little-endian in and out. The all-zero output
# (small-order u) is returned as is; the interface layer rejects it.
def x25519(k, u):
    return _ladder(_decode_scalar(k), _decode_u(u)).to_bytes(32, "little")


# RFC 7748 §6.1: X25519(k, 9), the public key for private key k.
def x25519_base(k):
    return _ladder(_decode_scalar(k), 9).to_bytes(32, "little")
