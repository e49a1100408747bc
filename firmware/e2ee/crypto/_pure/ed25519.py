# Ed25519 (RFC 8032 §5.1), portable pure Python: field elements are plain ints mod p
# (big ints on purpose), points in extended homogeneous coordinates (X, Y, Z, T) with
# x = X/Z, y = Y/Z, x*y = T/Z. Runs on MicroPython and CPython.
from e2ee.crypto import ed25519_scalar as _scalar
from e2ee.crypto._pure import sha512 as _sha512
from e2ee.crypto._pure.x25519 import _invert, _pow_p58

# RFC 8032 §5.1: p = 2^255 - 19, d = -121665/121666 mod p.
_P = (1 << 255) - 19
_D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
_D2 = 16295367250680780974490674513165176452449235426866156013048779062215315747161  # 2*d
# sqrt(-1) mod p = 2^((p-1)/4) (RFC 8032 §5.1.3 step 3).
_SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752

# RFC 8032 §5.1: the base point B = (x, 4/5).
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960
_B = (_BX, _BY, 1, _BX * _BY % _P)

# The neutral element (0, 1).
_IDENTITY = (0, 1, 1, 0)


# RFC 8032 §5.1.4: point addition for a = -1 (complete; also valid for doubling).
def _add(p1, p2):
    p = _P
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % p
    b = (y1 + x1) * (y2 + x2) % p
    c = t1 * _D2 % p * t2 % p
    d = 2 * z1 * z2 % p
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % p, g * h % p, f * g % p, e * h % p)


# RFC 8032 §5.1.4: point doubling (dbl-2008-hwcd).
def _double(p1):
    p = _P
    x1, y1, z1, _ = p1
    a = x1 * x1 % p
    b = y1 * y1 % p
    c = 2 * z1 * z1 % p
    h = a + b
    e = x1 + y1
    e = h - e * e % p
    g = a - b
    f = c + g
    return (e * f % p, g * h % p, f * g % p, e * h % p)


# Swap points q and r when swap is 1, via an arithmetic mask (no branch on swap).
# Coordinates are reduced (0 <= v < p), so XOR with the mask is well defined.
def _cswap(q, r, swap):
    mask = -swap
    x = mask & (q[0] ^ r[0])
    y = mask & (q[1] ^ r[1])
    z = mask & (q[2] ^ r[2])
    t = mask & (q[3] ^ r[3])
    return ((q[0] ^ x, q[1] ^ y, q[2] ^ z, q[3] ^ t),
            (r[0] ^ x, r[1] ^ y, r[2] ^ z, r[3] ^ t))


# [k]P for a secret scalar 0 <= k < 2^255: Montgomery ladder over all 255 bits, the
# same sequence of additions and doublings for every k.
def _scalar_mult(k, point):
    r0 = _IDENTITY
    r1 = point
    swap = 0
    for t in range(254, -1, -1):
        bit = (k >> t) & 1
        swap ^= bit
        r0, r1 = _cswap(r0, r1, swap)
        swap = bit
        r1 = _add(r0, r1)
        r0 = _double(r0)
    r0, r1 = _cswap(r0, r1, swap)
    return r0


# [s]B + [k]Q for public scalars 0 <= s, k < L < 2^253 (verification only):
# Straus/Shamir interleaving, variable time.
def _double_scalar_mult(s, k, q):
    table = (None, _B, q, _add(_B, q))
    acc = _IDENTITY
    for t in range(252, -1, -1):
        acc = _double(acc)
        index = ((s >> t) & 1) | (((k >> t) & 1) << 1)
        if index:
            acc = _add(acc, table[index])
    return acc


# RFC 8032 §5.1.2: encode y with the low bit of x in bit 255.
def _encode(point):
    p = _P
    x, y, z, _ = point
    z_inv = _invert(z)
    x = x * z_inv % p
    y = y * z_inv % p
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


# RFC 8032 §5.1.3: decode a point, or None when y >= p, x^2 has no square root, or
# x == 0 with the sign bit set.
def _decode(s):
    p = _P
    y = int.from_bytes(bytes(s), "little")
    x_0 = y >> 255
    y &= (1 << 255) - 1
    if y >= p:
        return None
    yy = y * y % p
    u = (yy - 1) % p
    v = (_D * yy + 1) % p
    v3 = v * v % p * v % p
    x = u * v3 % p * _pow_p58(u * v3 % p * v3 % p * v % p) % p  # u v^3 (u v^7)^((p-5)/8)
    vxx = v * x % p * x % p
    if vxx != u:
        if vxx != (p - u) % p:
            return None
        x = x * _SQRT_M1 % p
    if x == 0 and x_0 == 1:
        return None
    if (x & 1) != x_0:
        x = p - x
    return (x, y, 1, x * y % p)


# RFC 8032 §5.1.5 step 2: clamp the first half of SHA-512(seed) into the scalar s.
def _secret_scalar(h):
    a = bytearray(h[:32])
    a[0] &= 248
    a[31] &= 127
    a[31] |= 64
    return int.from_bytes(a, "little")


# SHA-512 over the concatenation of the parts, without copying them together.
def _hash(*parts):
    h = _sha512.SHA512()
    for part in parts:
        h.update(part)
    return h.digest()


# RFC 8032 §5.1.5: public key A = [s]B from a 32-byte seed.
def public_key(seed):
    h = _sha512.sha512(seed)
    return _encode(_scalar_mult(_secret_scalar(h), _B))


# RFC 8032 §5.1.6: 64-byte signature R || S of msg under (seed, public).
def sign(seed, public, msg):
    h = _sha512.sha512(seed)
    s = _secret_scalar(h)
    r = _scalar.reduce64(_hash(memoryview(h)[32:], msg))
    r_enc = _encode(_scalar_mult(r, _B))
    k = _scalar.reduce64(_hash(r_enc, public, msg))
    return r_enc + _scalar.to_bytes32(_scalar.muladd(k, s, r))


# RFC 8032 §5.1.7, cofactorless like OpenSSL: S < L, A decodes, and the encoding of
# [S]B - [k]A equals the R bytes (an R that does not decode can never match).
# msg: a buffer, or a tuple of buffers whose concatenation is the message (hashed part by part).
def verify(public, msg, sig):
    sig = memoryview(sig)
    r_enc = sig[:32]
    s_enc = sig[32:]
    if not _scalar.is_canonical(s_enc):
        return False
    a = _decode(public)
    if a is None:
        return False
    k = _scalar.reduce64(_hash(r_enc, public, *msg) if type(msg) is tuple else _hash(r_enc, public, msg))
    minus_a = ((_P - a[0]) % _P, a[1], a[2], (_P - a[3]) % _P)
    check = _double_scalar_mult(_scalar.from_bytes(s_enc), k, minus_a)
    return _encode(check) == bytes(r_enc)
