# X25519 (RFC 7748 §5) for the viper backend: the Montgomery ladder over fe25519's
# 13-bit-limb field arithmetic. The ladder runs in viper over one preallocated workspace;
# the scalar bits only ever reach the field code as the CSWAP mask (no secret-dependent
# branch or index). Not reentrant: one module-level workspace.
from micropython import const

from e2ee.crypto._viper import fe25519 as fe

_execute = fe.execute

# Workspace slots (fe.FIRST_SLOT and up): ladder state, temporaries and the swap bit.
_X1 = const(2)
_X2 = const(3)
_Z2 = const(4)
_X3 = const(5)
_Z3 = const(6)
_A = const(7)
_AA = const(8)
_B = const(9)
_BB = const(10)
_E = const(11)
_C = const(12)
_D = const(13)
_DA = const(14)
_CB = const(15)
_SWAP = const(16)  # limb 0: the current conditional-swap bit
_SLOTS = const(17)

_ws = fe.workspace(_SLOTS)
_scalar = bytearray(32)  # the clamped copy of k, wiped after use
_out = bytearray(32)
_U9 = b"\x09" + bytes(31)  # RFC 7748 §4.1: the base point u = 9

# RFC 7748 §5: one ladder step for bit k_t, after the swap bit was set to swap ^ k_t.
_STEP = fe.program(
    (fe.CSWAP, _X2, _X3, _SWAP),
    (fe.CSWAP, _Z2, _Z3, _SWAP),
    (fe.ADD, _A, _X2, _Z2),  # A = x_2 + z_2
    (fe.SQR, _AA, _A, 1),  # AA = A^2
    (fe.SUB, _B, _X2, _Z2),  # B = x_2 - z_2
    (fe.SQR, _BB, _B, 1),  # BB = B^2
    (fe.SUB, _E, _AA, _BB),  # E = AA - BB
    (fe.ADD, _C, _X3, _Z3),  # C = x_3 + z_3
    (fe.SUB, _D, _X3, _Z3),  # D = x_3 - z_3
    (fe.MUL, _DA, _D, _A),  # DA = D * A
    (fe.MUL, _CB, _C, _B),  # CB = C * B
    (fe.ADD, _X3, _DA, _CB),
    (fe.SQR, _X3, _X3, 1),  # x_3 = (DA + CB)^2
    (fe.SUB, _Z3, _DA, _CB),
    (fe.SQR, _Z3, _Z3, 1),
    (fe.MUL, _Z3, _X1, _Z3),  # z_3 = x_1 * (DA - CB)^2
    (fe.MUL, _X2, _AA, _BB),  # x_2 = AA * BB
    (fe.MUL_A24, _Z2, _E, 0),
    (fe.ADD, _Z2, _AA, _Z2),
    (fe.MUL, _Z2, _E, _Z2),  # z_2 = E * (AA + a24 * E)
)

# RFC 7748 §5: x_3 = u.
_START = fe.program((fe.COPY, _X3, _X1, 0))

# RFC 7748 §5: the final conditional swap, then x_2 * z_2^(p - 2), fully reduced.
_FINISH = (
    fe.program((fe.CSWAP, _X2, _X3, _SWAP), (fe.CSWAP, _Z2, _Z3, _SWAP))
    + fe.invert_program(_Z2, _Z2, _A, _B, _C, _D)
    + fe.program((fe.MUL, _X2, _X2, _Z2), (fe.FREEZE, _X2, _X2, 0))
)


# RFC 7748 §5: for t = 254 down to 0, swap ^= k_t, conditional swaps, ladder step,
# swap = k_t; the swap bit is stored in the workspace for the CSWAP instructions.
@micropython.viper
def _ladder(ws, k: ptr8, step) -> int:
    w = ptr32(ws)
    swap = 0
    t = 254
    while t >= 0:
        bit = (k[t >> 3] >> (t & 7)) & 1
        w[_SWAP * 20] = swap ^ bit
        swap = bit
        _execute(0, ws, ws, step, 0)
        t -= 1
    return swap


# RFC 7748 §5: decodeScalar25519 (clamping), decodeUCoordinate (top bit masked, values
# >= p accepted and reduced), the ladder, encodeUCoordinate. An all-zero result is
# returned as is (the interface layer rejects it).
def x25519(k, u):
    ws = _ws
    s = _scalar
    s[:] = k
    s[0] &= 248
    s[31] = (s[31] & 127) | 64
    fe.unpack(ws, _X1, u)
    fe.set_small(ws, _X2, 1)
    fe.set_small(ws, _Z2, 0)
    _execute(0, ws, ws, _START, 0)
    fe.set_small(ws, _Z3, 1)
    swap = _ladder(ws, s, _STEP)
    for i in range(32):
        s[i] = 0
    fe.set_small(ws, _SWAP, swap)
    _execute(0, ws, ws, _FINISH, 0)
    fe.pack(_out, ws, _X2)
    fe.wipe(ws, 0, _SLOTS)
    out = bytes(_out)
    for i in range(32):
        _out[i] = 0
    return out


# RFC 7748 §6.1: X25519(k, 9), the public key for private key k.
def x25519_base(k):
    return x25519(k, _U9)
