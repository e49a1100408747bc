# Ed25519 (RFC 8032 §5.1) for the viper backend: points in extended twisted Edwards
# coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, xy = T/Z, over fe25519's field programs.
#
# [s]B for secret s (public key, signing nonce): radix-16 signed digits, Horner with a
# constant-time lookup in a table of 0..8 B (fe.select) and a masked conditional negation;
# branches and indices depend only on the digit position. Verification (public data) is
# variable time: Straus/Shamir over width-4 NAFs of S and k with odd multiples of B and A.
# One module-level workspace: not reentrant.
from micropython import const

from e2ee.crypto import ed25519_scalar as _scalar
from e2ee.crypto._viper import fe25519 as fe
from e2ee.crypto._viper.sha512 import SHA512 as _SHA512
from e2ee.crypto._viper.sha512 import sha512 as _sha512

_execute = fe.execute
_select = fe.select
_REL = const(128)  # fe.REL: slot byte _REL + i is slot base + i

# Workspace slots. Constants:
_ZERO = const(2)
_ONE = const(3)
_D = const(4)  # d = -121665/121666
_D2 = const(5)  # 2d
_SQRT_M1 = const(6)  # sqrt(-1) = 2^((p-1)/4)
# The accumulator point P:
_X = const(7)
_Y = const(8)
_Z = const(9)
_T = const(10)
# The operand Q, read through base-relative slots _REL+0..3: (Y+X, Y-X, 2dT, 2Z); table
# entries of B omit 2Z (Z = 1: "affine Niels" form), those of A keep it.
_Q = const(11)
_NEG_T = const(15)  # -2dT of Q, for the conditional negation
_SIGN = const(16)  # limb 0: 1 when the current digit is negative
# Temporaries:
_TA = const(17)
_TB = const(18)
_TC = const(19)
_TD = const(20)
_TE = const(21)
_TF = const(22)
_TG = const(23)
_TH = const(24)
# Tables: j*B for j = 0..8 (3 slots each), and A, 3A, 5A, 7A (4 slots each). The A table
# doubles as scratch while decoding and while it is being filled.
_B_TABLE = const(25)
_A_TABLE = const(52)
_SLOTS = const(68)

_ws = fe.workspace(_SLOTS)
_digits_s = bytearray(256)  # NAF of S or radix-16 digits, stored as digit + 8
_digits_k = bytearray(256)  # NAF of k, stored as digit + 8
_enc = bytearray(32)
_secret = bytearray(32)  # clamped secret scalar, wiped after use

_MUL, _SQR, _ADD, _SUB, _COPY, _CSWAP, _FREEZE = (
    fe.MUL, fe.SQR, fe.ADD, fe.SUB, fe.COPY, fe.CSWAP, fe.FREEZE)
_prog = fe.program


# RFC 8032 §5.1.4 doubling: P = 2P. T3 = E*H only when `with_t` (the next step is an
# addition, which reads T; doubling does not).
def _double_program(with_t):
    ops = [
        (_SQR, _TA, _X, 1),  # A = X1^2
        (_SQR, _TB, _Y, 1),  # B = Y1^2
        (_SQR, _TC, _Z, 1),
        (_ADD, _TC, _TC, _TC),  # C = 2 * Z1^2
        (_ADD, _TH, _TA, _TB),  # H = A + B
        (_ADD, _TE, _X, _Y),
        (_SQR, _TE, _TE, 1),
        (_SUB, _TE, _TH, _TE),  # E = H - (X1 + Y1)^2
        (_SUB, _TG, _TA, _TB),  # G = A - B
        (_ADD, _TF, _TC, _TG),  # F = C + G
        (_MUL, _X, _TE, _TF),  # X3 = E * F
        (_MUL, _Y, _TG, _TH),  # Y3 = G * H
        (_MUL, _Z, _TF, _TG),  # Z3 = F * G
    ]
    if with_t:
        ops.append((_MUL, _T, _TE, _TH))  # T3 = E * H
    return _prog(*ops)


# RFC 8032 §5.1.4 addition, P = P + Q or P - Q with Q at base-relative slots
# (Y2+X2, Y2-X2, 2d*T2[, 2*Z2]); `affine` when Z2 = 1 (no 2*Z2 slot). -Q swaps Y+X with
# Y-X and negates T, so subtraction swaps the roles of those slots and of F and G.
def _add_program(subtract, affine, with_t, q=_REL):
    plus, minus = (q + 1, q) if subtract else (q, q + 1)
    f_op, g_op = (_ADD, _SUB) if subtract else (_SUB, _ADD)
    ops = [
        (_SUB, _TE, _Y, _X),
        (_MUL, _TA, _TE, minus),  # A = (Y1 - X1) * (Y2 - X2)
        (_ADD, _TF, _Y, _X),
        (_MUL, _TB, _TF, plus),  # B = (Y1 + X1) * (Y2 + X2)
        (_MUL, _TC, _T, q + 2),  # C = T1 * 2 * d * T2
        (_ADD, _TD, _Z, _Z) if affine else (_MUL, _TD, _Z, q + 3),  # D = Z1 * 2 * Z2
        (_SUB, _TE, _TB, _TA),  # E = B - A
        (f_op, _TF, _TD, _TC),  # F = D - C
        (g_op, _TG, _TD, _TC),  # G = D + C
        (_ADD, _TH, _TB, _TA),  # H = B + A
        (_MUL, _X, _TE, _TF),  # X3 = E * F
        (_MUL, _Y, _TG, _TH),  # Y3 = G * H
        (_MUL, _Z, _TF, _TG),  # Z3 = F * G
    ]
    if with_t:
        ops.append((_MUL, _T, _TE, _TH))  # T3 = E * H
    return _prog(*ops)


_DBL = _double_program(False)
_DBL_T = _double_program(True)
_DBL4_T = _DBL + _DBL + _DBL + _DBL_T  # P = 16P, T kept
# Verification: [S]B with B-table entries (affine), -[k]A with A-table entries.
_ADD_B = _add_program(False, True, False)
_ADD_B_T = _add_program(False, True, True)
_SUB_B = _add_program(True, True, False)
_SUB_B_T = _add_program(True, True, True)
_ADD_A = _add_program(False, False, False)
_SUB_A = _add_program(True, False, False)

# Signing: Q = (-1)^sign * Q (masked), then P = P + Q.
_NEG_ADD_B = _prog(
    (_CSWAP, _Q, _Q + 1, _SIGN),
    (_SUB, _NEG_T, _ZERO, _Q + 2),
    (_CSWAP, _Q + 2, _NEG_T, _SIGN),
) + _ADD_B

# The identity (0, 1, 1, 0).
_IDENTITY = _prog((_COPY, _X, _ZERO, 0), (_COPY, _Y, _ONE, 0), (_COPY, _Z, _ONE, 0), (_COPY, _T, _ZERO, 0))


# P in the form (Y+X, Y-X, 2dT, 2Z) at slots q..q+3.
def _to_cached(q):
    return _prog((_ADD, q, _Y, _X), (_SUB, q + 1, _Y, _X), (_MUL, q + 2, _T, _D2), (_ADD, q + 3, _Z, _Z))


# A, 3A, 5A, 7A (cached) from P = A: Q = 2A, then P = P + Q three times. X, Y, Z, T are
# consecutive slots.
_MAKE_A_TABLE = (
    _to_cached(_A_TABLE)
    + _prog(*((_COPY, _A_TABLE + 12 + i, _X + i, 0) for i in range(4)))  # keep A in entry 3
    + _DBL_T
    + _to_cached(_Q)
    + _prog(*((_COPY, _X + i, _A_TABLE + 12 + i, 0) for i in range(4)))
    + _add_program(False, False, True, _Q) + _to_cached(_A_TABLE + 4)
    + _add_program(False, False, True, _Q) + _to_cached(_A_TABLE + 8)
    + _add_program(False, False, True, _Q) + _to_cached(_A_TABLE + 12)
)

# P with Z = 1, in the form (y+x, y-x, 2dxy) at base-relative slots.
_TO_AFFINE_NIELS = fe.invert_program(_TE, _Z, _TA, _TB, _TC, _TD) + _prog(
    (_MUL, _TF, _X, _TE),  # x
    (_MUL, _TG, _Y, _TE),  # y
    (_ADD, _REL, _TG, _TF),
    (_SUB, _REL + 1, _TG, _TF),
    (_MUL, _TH, _TF, _TG),
    (_MUL, _REL + 2, _TH, _D2),
)

# RFC 8032 §5.1.2 encoding, first part: x = X/Z, y = Y/Z, fully reduced (in X and Y).
_AFFINE = fe.invert_program(_TE, _Z, _TA, _TB, _TC, _TD) + _prog(
    (_MUL, _X, _X, _TE),
    (_MUL, _Y, _Y, _TE),
    (_FREEZE, _X, _X, 0),
    (_FREEZE, _Y, _Y, 0),
)

# RFC 8032 §5.1.3 decoding steps 2-3, y in Y: u = y^2 - 1, v = d y^2 + 1,
# x = u v^3 (u v^7)^((p-5)/8) in X; TF = v x^2 - u and TG = v x^2 + u, fully reduced.
_DECODE = _prog(
    (_SQR, _TA, _Y, 1),
    (_MUL, _TB, _D, _TA),
    (_SUB, _TA, _TA, _ONE),  # u
    (_ADD, _TB, _TB, _ONE),  # v
    (_SQR, _TC, _TB, 1),
    (_MUL, _TC, _TC, _TB),  # v^3
    (_SQR, _TD, _TC, 1),
    (_MUL, _TD, _TD, _TB),  # v^7
    (_MUL, _TD, _TD, _TA),  # u v^7
) + fe.pow22523_program(
    _TE, _TD, _A_TABLE, _A_TABLE + 1, _A_TABLE + 2, _A_TABLE + 3) + _prog(
    (_MUL, _TE, _TE, _TC),
    (_MUL, _X, _TE, _TA),  # x = u v^3 (u v^7)^((p-5)/8)
    (_SQR, _TE, _X, 1),
    (_MUL, _TE, _TE, _TB),  # v x^2
    (_SUB, _TF, _TE, _TA),
    (_FREEZE, _TF, _TF, 0),
    (_ADD, _TG, _TE, _TA),
    (_FREEZE, _TG, _TG, 0),
)
_TIMES_SQRT_M1 = _prog((_MUL, _X, _X, _SQRT_M1), (_FREEZE, _X, _X, 0))
_FREEZE_X = _prog((_FREEZE, _X, _X, 0))
_NEGATE_X = _prog((_SUB, _X, _ZERO, _X))
_FINISH_POINT = _prog((_MUL, _T, _X, _Y), (_COPY, _Z, _ONE, 0))


# RFC 8032 §5.1.3: decodes the 32 bytes `b` into P; False when y >= p, x^2 = (y^2 - 1) /
# (d y^2 + 1) has no root, or x = 0 with the sign bit set. Variable time (public data).
def _decode(b):
    ws = _ws
    if b[31] & 0x7F == 0x7F and b[0] >= 0xED:  # y >= p = 2^255 - 19 needs bytes 1..30 = FF
        i = 1
        while i < 31 and b[i] == 0xFF:
            i += 1
        if i == 31:
            return False
    fe.unpack(ws, _Y, b)
    fe.run(ws, _DECODE)
    if not fe.is_zero(ws, _TF):  # v x^2 != u
        if not fe.is_zero(ws, _TG):  # v x^2 != -u: no square root
            return False
        fe.run(ws, _TIMES_SQRT_M1)
    else:
        fe.run(ws, _FREEZE_X)
    sign = b[31] >> 7
    if sign and fe.is_zero(ws, _X):
        return False
    if fe.low_bit(ws, _X) != sign:
        fe.run(ws, _NEGATE_X)
    fe.run(ws, _FINISH_POINT)
    return True


# RFC 8032 §5.1.2: the 32-byte encoding of P (y, with the low bit of x as bit 255).
def _encode():
    ws = _ws
    fe.run(ws, _AFFINE)
    fe.pack(_enc, ws, _Y)
    _enc[31] |= fe.low_bit(ws, _X) << 7
    return _enc


# Radix-16 digits e[0..63] of the 32-byte scalar s (< 2^255), e[i] in -8..8 with
# s = sum e[i] 16^i, stored as e[i] + 8. Branch-free (ref10's recoding).
@micropython.viper
def _recode16(out: ptr8, s: ptr8):
    carry = 0
    i = 0
    while i < 63:
        v = ((s[i >> 1] >> ((i & 1) << 2)) & 15) + carry
        carry = (v + 8) >> 4
        out[i] = v - (carry << 4) + 8
        i += 1
    out[63] = (s[31] >> 4) + carry + 8


# [s]B for the secret 32-byte scalar s into P: Horner over the radix-16 digits, one
# constant-time table lookup and masked negation per digit.
@micropython.viper
def _mul_base(ws, e: ptr8):
    w = ptr32(ws)
    _execute(0, ws, ws, _IDENTITY, 0)
    i = 63
    while i >= 0:
        if i != 63:
            _execute(0, ws, ws, _DBL4_T, 0)
        v = int(e[i]) - 8
        neg = (v >> 31) & 1
        _select(ws, _Q, _B_TABLE, 9, 3, (v ^ (0 - neg)) + neg)
        w[_SIGN * 20] = neg
        _execute(0, ws, ws, _NEG_ADD_B, _Q)
        i -= 1


# Width-4 NAF of the 32-byte scalar s (< 2^254): out[i] = digit + 8 with digits 0 or odd
# in -7..7 and no two nonzero digits within 4 positions. Returns the top nonzero index.
@micropython.viper
def _naf4(out: ptr8, s: ptr8) -> int:
    i = 0
    while i < 256:
        out[i] = 8
        i += 1
    top = -1
    carry = 0
    i = 0
    while i < 256:
        j = i >> 3
        bits = int(s[j])
        if j < 31:
            bits |= int(s[j + 1]) << 8
        bits = bits >> (i & 7)
        if (bits & 1) == carry:
            i += 1
            continue
        window = (bits & 15) + carry  # odd
        if window >= 8:
            out[i] = window - 8  # window - 16 + 8
            carry = 1
        else:
            out[i] = window + 8
            carry = 0
        top = i
        i += 4
    return top


# [S]B - [k]A into P (Straus): A's table must be filled; NAF digits in _digits_s/_k.
@micropython.viper
def _double_scalar(ws, ds: ptr8, dk: ptr8, top: int):
    _execute(0, ws, ws, _IDENTITY, 0)
    i = top
    while i >= 0:
        a = int(ds[i]) - 8
        b = int(dk[i]) - 8
        if a == 0 and b == 0:
            _execute(0, ws, ws, _DBL, 0)
        else:
            _execute(0, ws, ws, _DBL_T, 0)
            if a > 0:
                if b != 0:
                    _execute(0, ws, ws, _ADD_B_T, _B_TABLE + 3 * a)
                else:
                    _execute(0, ws, ws, _ADD_B, _B_TABLE + 3 * a)
            elif a < 0:
                if b != 0:
                    _execute(0, ws, ws, _SUB_B_T, _B_TABLE - 3 * a)
                else:
                    _execute(0, ws, ws, _SUB_B, _B_TABLE - 3 * a)
            if b > 0:
                _execute(0, ws, ws, _SUB_A, _A_TABLE + 4 * (b >> 1))
            elif b < 0:
                _execute(0, ws, ws, _ADD_A, _A_TABLE + 4 * ((0 - b) >> 1))
        i -= 1


# The constants, the base point B (RFC 8032 §5.1: y = 4/5, x even) and its table.
def _setup():
    ws = _ws
    fe.set_small(ws, _ZERO, 0)
    fe.set_small(ws, _ONE, 1)
    fe.unpack(ws, _D, _scalar.to_bytes32(
        37095705934669439343138083508754565189542113879843219016388785533085940283555))
    fe.run(ws, _prog((_ADD, _D2, _D, _D)))
    fe.unpack(ws, _SQRT_M1, _scalar.to_bytes32(
        19681161376707505956807079304988542015446066515923890162744021073123829784752))
    fe.set_small(ws, _B_TABLE, 1)  # entry 0, the identity: (1, 1, 0)
    fe.set_small(ws, _B_TABLE + 1, 1)
    fe.set_small(ws, _B_TABLE + 2, 0)
    _decode(b"\x58" + b"\x66" * 31)
    fe.run(ws, _to_cached(_Q))
    add_b = _add_program(False, False, True, _Q)
    for j in range(1, 9):
        if j > 1:
            fe.run(ws, add_b)  # P = (j-1)B + B
        fe.run(ws, _TO_AFFINE_NIELS, _B_TABLE + 3 * j)


_setup()
del _setup, _double_program, _add_program, _to_cached, _TO_AFFINE_NIELS


# RFC 8032 §5.1.5: the secret scalar s (clamped first half of SHA-512(seed)) into _secret;
# returns the second half (the prefix).
def _expand(seed):
    h = _sha512(seed)
    s = _secret
    s[:] = h[:32]
    s[0] &= 248
    s[31] = (s[31] & 127) | 64
    return h[32:]


# Zeroes the first n bytes of buf (secret scalars and their digits).
@micropython.viper
def _wipe(buf: ptr8, n: int):
    for i in range(n):
        buf[i] = 0


# RFC 8032 §5.1.5: public key A = [s]B, encoded.
def public_key(seed):
    _expand(seed)
    _recode16(_digits_s, _secret)
    _wipe(_secret, 32)
    _mul_base(_ws, _digits_s)
    _wipe(_digits_s, 64)
    out = bytes(_encode())
    fe.wipe(_ws, _X, _B_TABLE - _X)  # the working registers; constants and tables stay
    return out


# RFC 8032 §5.1.6: signature R || S of msg under seed, whose public key is `public`.
def sign(seed, public, msg):
    prefix = _expand(seed)
    a = _scalar.from_bytes(_secret)
    _wipe(_secret, 32)
    r = _scalar.reduce64(_sha512(prefix + bytes(msg)))  # step 2
    _recode16(_digits_s, _scalar.to_bytes32(r))
    _mul_base(_ws, _digits_s)  # step 3: R = [r]B
    _wipe(_digits_s, 64)
    R = bytes(_encode())
    fe.wipe(_ws, _X, _B_TABLE - _X)  # registers held [r]B: a leaked nonce reveals the key
    k = _scalar.reduce64(_sha512(R + bytes(public) + bytes(msg)))  # step 4
    return R + _scalar.to_bytes32(_scalar.muladd(k, a, r))  # step 5: S = (r + k*s) mod L


# RFC 8032 §5.1.7, cofactorless like OpenSSL: S < L, A decodes, and the encoding of
# [S]B - [k]A equals R (which rejects R that do not decode: encodings are canonical).
# msg: a buffer, or a tuple of buffers whose concatenation is the message.
def verify(public, msg, sig):
    ws = _ws
    R = bytes(sig[:32])
    S = bytes(sig[32:])
    if not _scalar.is_canonical(S):
        return False
    if not _decode(public):
        return False
    fe.run(ws, _MAKE_A_TABLE)
    # SHA-512(R || A || M) streamed: no copy of M, nor of its parts joined (a revocation list is
    # 9 KB, twice on a heap that may not hold one such block twice)
    h = _SHA512(R)
    h.update(public)
    if type(msg) is tuple:
        for part in msg:
            h.update(part)
    else:
        h.update(msg)
    k = _scalar.reduce64(h.digest())
    top_s = _naf4(_digits_s, S)
    top_k = _naf4(_digits_k, _scalar.to_bytes32(k))
    _double_scalar(ws, _digits_s, _digits_k, max(top_s, top_k))
    enc = _encode()
    diff = 0
    for i in range(32):
        diff |= enc[i] ^ R[i]
    return diff == 0
