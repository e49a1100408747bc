# GF(2^255 - 19) arithmetic for the viper backend (RFC 7748 §4.1 / RFC 8032 §5.1 field),
# exact on 32-bit boards and identical on the 64-bit unix port.
#
# Representation: an element is 20 limbs of 13 bits (260 bits) in 20 consecutive words of
# an array('I') "workspace"; value = sum(limb[i] << 13*i), not necessarily reduced mod p.
# Invariant between operations: every limb <= 2^13 + 2 (the bounds below allow 2^13 + 64).
# Then every product is < 2^26.01 and every column sum of 20 products is < 1.37e9 < 2^31,
# so no intermediate ever needs more than 31 bits unsigned: the viper code gives the same
# results with 32-bit and 64-bit machine words. Reduction uses 2^260 = 32 * 2^255 =
# 32 * 19 = 608 (mod p).
#
# Field operations run inside one viper function, execute(), as a small program: a bytes
# object of 4-byte instructions (opcode, destination slot, source slot, source slot or
# count). This keeps every operation free of allocation and of Python call overhead, and
# all pointers stay inside viper. Slot s is the element at words 20*s .. 20*s+19 of the
# workspace; slots 0 and 1 are the 40-word product scratch, so user slots start at 2.
# A slot byte >= 128 means "slot byte - 128 + base" (base is an execute() argument): one
# program can then operate on any entry of a table of points.
#
# Nothing here branches on or indexes by element values: CSWAP and FREEZE use masks.
import array

from micropython import const

LIMBS = const(20)  # 13-bit limbs per element
FIRST_SLOT = const(2)  # slots 0 and 1 are the multiply scratch
REL = const(128)  # slot byte REL + i addresses slot base + i

# Opcodes: (op, d, a, b) -> slot d receives ...
MUL = const(0)  # a * b
SQR = const(1)  # a^(2^b): b >= 1 successive squarings
ADD = const(2)  # a + b
SUB = const(3)  # a - b
MUL_A24 = const(4)  # a * 121665 (RFC 7748 §5: a24 = (486662 - 2) / 4)
COPY = const(5)  # a
CSWAP = const(6)  # swaps slots d and a when limb 0 of slot b is 1, else nothing (mask)
FREEZE = const(7)  # a fully reduced: 0 <= value < p, every limb < 2^13


# A workspace with room for `slots` elements (slot numbers 0 .. slots-1).
def workspace(slots):
    return array.array("I", bytes(4 * LIMBS * slots))


# Zeroes slots first .. first+count-1, so no secret-derived value outlives the call using them.
@micropython.viper
def wipe(ws, first: int, count: int):
    w = ptr32(ws)
    i = first * LIMBS
    end = (first + count) * LIMBS
    while i < end:
        w[i] = 0
        i += 1


# Assembles instructions (4-tuples) into a program for execute().
def program(*instructions):
    out = bytearray()
    for ins in instructions:
        out.extend(bytes(ins))
    return bytes(out)


# Runs program `program` over workspace `ws` (an array('I')): execute(0, ws, ws, program,
# base). The first two parameters only reserve the two machine registers that hold the
# hot values of the inner loops (viper keeps its first locals in registers): pass 0, ws.
@micropython.viper
def execute(acc: int, row: ptr32, ws: ptr32, program, base: int):
    prog = ptr8(program)
    n = int(len(program))
    t = ws
    pc = 0
    while pc < n:
        op = prog[pc]
        d = prog[pc + 1]
        s = prog[pc + 2]
        u = prog[pc + 3]
        if d >= REL:
            d += base - REL
        if s >= REL:
            s += base - REL
        if op != SQR and u >= REL:
            u += base - REL
        r = ptr32(int(ws) + d * 80)
        a = ptr32(int(ws) + s * 80)
        row = ptr32(int(ws) + u * 80)
        if op <= SQR:
            # r := a * b, or a squared u times
            reps = 1
            if op == SQR:
                reps = u
                row = a
            while reps > 0:
                # columns 0..18 accumulate from 0; higher ones are first assigned
                t[0] = 0
                t[1] = 0
                t[2] = 0
                t[3] = 0
                t[4] = 0
                t[5] = 0
                t[6] = 0
                t[7] = 0
                t[8] = 0
                t[9] = 0
                t[10] = 0
                t[11] = 0
                t[12] = 0
                t[13] = 0
                t[14] = 0
                t[15] = 0
                t[16] = 0
                t[17] = 0
                t[18] = 0
                if op == MUL:
                    # schoolbook, two rows per pass: t[i + j] += a[i] * b[j]; `acc` holds the
                    # address of t[i] and `row` points at b, the two register locals
                    i = 0
                    while i < 20:
                        ai = a[i]
                        aj = a[i + 1]
                        acc = int(t) + 4 * i
                        ptr32(acc)[0] = ai * row[0] + ptr32(acc)[0]
                        ptr32(acc)[1] = ai * row[1] + aj * row[0] + ptr32(acc)[1]
                        ptr32(acc)[2] = ai * row[2] + aj * row[1] + ptr32(acc)[2]
                        ptr32(acc)[3] = ai * row[3] + aj * row[2] + ptr32(acc)[3]
                        ptr32(acc)[4] = ai * row[4] + aj * row[3] + ptr32(acc)[4]
                        ptr32(acc)[5] = ai * row[5] + aj * row[4] + ptr32(acc)[5]
                        ptr32(acc)[6] = ai * row[6] + aj * row[5] + ptr32(acc)[6]
                        ptr32(acc)[7] = ai * row[7] + aj * row[6] + ptr32(acc)[7]
                        ptr32(acc)[8] = ai * row[8] + aj * row[7] + ptr32(acc)[8]
                        ptr32(acc)[9] = ai * row[9] + aj * row[8] + ptr32(acc)[9]
                        ptr32(acc)[10] = ai * row[10] + aj * row[9] + ptr32(acc)[10]
                        ptr32(acc)[11] = ai * row[11] + aj * row[10] + ptr32(acc)[11]
                        ptr32(acc)[12] = ai * row[12] + aj * row[11] + ptr32(acc)[12]
                        ptr32(acc)[13] = ai * row[13] + aj * row[12] + ptr32(acc)[13]
                        ptr32(acc)[14] = ai * row[14] + aj * row[13] + ptr32(acc)[14]
                        ptr32(acc)[15] = ai * row[15] + aj * row[14] + ptr32(acc)[15]
                        ptr32(acc)[16] = ai * row[16] + aj * row[15] + ptr32(acc)[16]
                        ptr32(acc)[17] = ai * row[17] + aj * row[16] + ptr32(acc)[17]
                        ptr32(acc)[18] = ai * row[18] + aj * row[17] + ptr32(acc)[18]
                        ptr32(acc)[19] = ai * row[19] + aj * row[18]
                        ptr32(acc)[20] = aj * row[19]
                        i += 2
                else:
                    # a^2 = sum a[i]^2 x^2i + sum_{i<j} 2 a[i] a[j] x^(i+j), rows i and i+1 per pass
                    # (i even): t[2i + m] += 2a[i] * a[i+m] + 2a[i+1] * a[i+m-1]. Pass i reaches
                    # t[20 + i], so later passes are shorter (the guards); its last two columns,
                    # t[19 + i] and t[20 + i], are new; pass 0 adds to the zeroed t[0..18].
                    xa = row
                    i = 0
                    while i < 18:
                        ai = xa[i]
                        aj = xa[i + 1]
                        acc = int(t) + 8 * i
                        row = ptr32(int(xa) + 4 * i)
                        ptr32(acc)[0] = ai * ai + ptr32(acc)[0]
                        ai += ai
                        ptr32(acc)[1] = ai * row[1] + ptr32(acc)[1]
                        ptr32(acc)[2] = ai * row[2] + aj * aj + ptr32(acc)[2]
                        aj += aj
                        if i <= 14:
                            ptr32(acc)[3] = ai * row[3] + aj * row[2] + ptr32(acc)[3]
                            ptr32(acc)[4] = ai * row[4] + aj * row[3] + ptr32(acc)[4]
                        if i <= 12:
                            ptr32(acc)[5] = ai * row[5] + aj * row[4] + ptr32(acc)[5]
                            ptr32(acc)[6] = ai * row[6] + aj * row[5] + ptr32(acc)[6]
                        if i <= 10:
                            ptr32(acc)[7] = ai * row[7] + aj * row[6] + ptr32(acc)[7]
                            ptr32(acc)[8] = ai * row[8] + aj * row[7] + ptr32(acc)[8]
                        if i <= 8:
                            ptr32(acc)[9] = ai * row[9] + aj * row[8] + ptr32(acc)[9]
                            ptr32(acc)[10] = ai * row[10] + aj * row[9] + ptr32(acc)[10]
                        if i <= 6:
                            ptr32(acc)[11] = ai * row[11] + aj * row[10] + ptr32(acc)[11]
                            ptr32(acc)[12] = ai * row[12] + aj * row[11] + ptr32(acc)[12]
                        if i <= 4:
                            ptr32(acc)[13] = ai * row[13] + aj * row[12] + ptr32(acc)[13]
                            ptr32(acc)[14] = ai * row[14] + aj * row[13] + ptr32(acc)[14]
                        if i <= 2:
                            ptr32(acc)[15] = ai * row[15] + aj * row[14] + ptr32(acc)[15]
                            ptr32(acc)[16] = ai * row[16] + aj * row[15] + ptr32(acc)[16]
                        if i <= 0:
                            ptr32(acc)[17] = ai * row[17] + aj * row[16] + ptr32(acc)[17]
                            ptr32(acc)[18] = ai * row[18] + aj * row[17] + ptr32(acc)[18]
                        t[19 + i] = ai * xa[19] + aj * xa[18]
                        t[20 + i] = aj * xa[19]
                        i += 2
                    ai = xa[18]
                    aj = xa[19]
                    t[36] = t[36] + ai * ai
                    t[37] = (ai + ai) * aj
                    t[38] = aj * aj
                # Reduce the column sums t[0..38] (each < 1.37e9) to r. With x = 2^13, x^20 = 2^260
                # = 608 (mod p); column 20+k splits as lo + hi*x (lo < 2^13, hi < 2^18), so r's
                # column k gets 608 * (lo of column 20+k + hi of column 19+k), < 1.2e8: the sum
                # with the carry stays < 2^31. The carry out of limb 19 (< 2^18) comes back as
                # 608 * carry into limbs 0, 1, 2. `row` walks t three columns at a time.
                acc = t[0] + (t[20] & 0x1FFF) * 608
                r[0] = acc & 0x1FFF
                row = ptr32(int(t) + 4)
                i = 1
                while i < 19:
                    acc = row[0] + ((row[20] & 0x1FFF) + (row[19] >> 13)) * 608 + (acc >> 13)
                    r[i] = acc & 0x1FFF
                    acc = row[1] + ((row[21] & 0x1FFF) + (row[20] >> 13)) * 608 + (acc >> 13)
                    r[i + 1] = acc & 0x1FFF
                    acc = row[2] + ((row[22] & 0x1FFF) + (row[21] >> 13)) * 608 + (acc >> 13)
                    r[i + 2] = acc & 0x1FFF
                    row = ptr32(int(row) + 12)
                    i += 3
                acc = t[19] + (t[38] >> 13) * 608 + (acc >> 13)
                r[19] = acc & 0x1FFF
                acc = r[0] + (acc >> 13) * 608
                r[0] = acc & 0x1FFF
                acc = r[1] + (acc >> 13)
                r[1] = acc & 0x1FFF
                r[2] = r[2] + (acc >> 13)
                row = r
                reps -= 1
        elif op == ADD:
            acc = a[0] + row[0]
            r[0] = acc & 0x1FFF
            i = 1
            while i < 20:
                acc = a[i] + row[i] + (acc >> 13)
                r[i] = acc & 0x1FFF
                i += 1
            acc = r[0] + (acc >> 13) * 608
            r[0] = acc & 0x1FFF
            r[1] = r[1] + (acc >> 13)
        elif op == SUB:
            # a + 2 * (2^260 - 608) - b: 2^260 - 608 = 32p has limbs 8191 except 7584 in
            # limb 0; twice that exceeds every limb of b, so no limb goes negative
            acc = a[0] + 15168 - row[0]
            r[0] = acc & 0x1FFF
            i = 1
            while i < 20:
                acc = a[i] + 16382 - row[i] + (acc >> 13)
                r[i] = acc & 0x1FFF
                i += 1
            acc = r[0] + (acc >> 13) * 608
            r[0] = acc & 0x1FFF
            r[1] = r[1] + (acc >> 13)
        elif op == MUL_A24:
            acc = a[0] * 121665
            r[0] = acc & 0x1FFF
            i = 1
            while i < 20:
                acc = a[i] * 121665 + (acc >> 13)
                r[i] = acc & 0x1FFF
                i += 1
            acc = r[0] + (acc >> 13) * 608
            r[0] = acc & 0x1FFF
            acc = r[1] + (acc >> 13)
            r[1] = acc & 0x1FFF
            r[2] = r[2] + (acc >> 13)
        elif op == COPY:
            for i in range(20):
                r[i] = a[i]
        elif op == CSWAP:
            acc = 0 - (row[0] & 1)  # the mask: all ones or 0
            # `row` walks r; a's limb is at the same offset from a as row's from r
            end = uint(r) + 80  # unsigned compares: addresses may have bit 31 set
            i = int(a) - int(r)
            row = r
            while uint(row) < end:
                j = (row[0] ^ ptr32(int(row) + i)[0]) & acc
                row[0] = row[0] ^ j
                ptr32(int(row) + i)[0] = ptr32(int(row) + i)[0] ^ j
                row = ptr32(int(row) + 4)
        elif op == FREEZE:
            # carry to 13-bit limbs, fold bits >= 255 (2^255 = 19) twice: value < 2^255
            acc = a[0]
            r[0] = acc & 0x1FFF
            i = 1
            while i < 20:
                acc = a[i] + (acc >> 13)
                r[i] = acc & 0x1FFF
                i += 1
            x = (r[19] >> 8) + ((acc >> 13) << 5)
            j = 0
            while j < 2:
                r[19] = r[19] & 0xFF
                acc = r[0] + x * 19
                r[0] = acc & 0x1FFF
                i = 1
                while i < 20:
                    acc = r[i] + (acc >> 13)
                    r[i] = acc & 0x1FFF
                    i += 1
                x = r[19] >> 8
                j += 1
            # value - p = value + 19 - 2^255: keep it when it is >= 0 (bit 255 set)
            acc = r[0] + 19
            t[0] = acc & 0x1FFF
            i = 1
            while i < 20:
                acc = r[i] + (acc >> 13)
                t[i] = acc & 0x1FFF
                i += 1
            mask = 0 - (t[19] >> 8)
            t[19] = t[19] & 0xFF
            for i in range(20):
                r[i] = r[i] ^ ((r[i] ^ t[i]) & mask)
        pc += 4


# Runs `program` over `ws` (see execute()).
def run(ws, program, base=0):
    execute(0, ws, ws, program, base)


# RFC 7748 §5 decodeUCoordinate / RFC 8032 §5.1.3 step 1: the 32 little-endian bytes of
# `src` with the top bit (bit 255) masked, into slot `d`. The value may be >= p.
@micropython.viper
def unpack(ws: ptr32, d: int, src: ptr8):
    r = ptr32(int(ws) + d * 80)
    acc = 0
    bits = 0
    i = 0
    k = 0
    while i < 32:
        byte = src[i]
        if i == 31:
            byte &= 0x7F
        acc |= byte << bits
        bits += 8
        if bits >= 13:
            r[k] = acc & 0x1FFF
            acc >>= 13
            bits -= 13
            k += 1
        i += 1
    r[19] = acc


# RFC 7748 §5 encodeUCoordinate / RFC 8032 §5.1.2: slot `d`, which must be FREEZE'd
# (0 <= value < p, limbs < 2^13), as 32 little-endian bytes into `out`.
@micropython.viper
def pack(out: ptr8, ws: ptr32, d: int):
    r = ptr32(int(ws) + d * 80)
    acc = 0
    bits = 0
    k = 0
    i = 0
    while i < 20:  # 260 bits, the top 5 zero: exactly 32 bytes
        acc |= r[i] << bits
        bits += 13
        while bits >= 8:
            out[k] = acc & 0xFF
            acc >>= 8
            bits -= 8
            k += 1
        i += 1


# Slot `d` := the small integer v (0 <= v < 2^13).
@micropython.viper
def set_small(ws: ptr32, d: int, v: int):
    r = ptr32(int(ws) + d * 80)
    for i in range(20):
        r[i] = 0
    r[0] = v


# 1 when FREEZE'd slot `d` is zero, else 0 (reads all limbs, no early exit).
@micropython.viper
def is_zero(ws: ptr32, d: int) -> int:
    r = ptr32(int(ws) + d * 80)
    acc = 0
    for i in range(20):
        acc |= r[i]
    return 1 if acc == 0 else 0


# Bit 0 of FREEZE'd slot `d` (RFC 8032 §5.1.2: the sign of x).
@micropython.viper
def low_bit(ws: ptr32, d: int) -> int:
    return ws[d * 20] & 1


# Constant-time table lookup: slots d .. d+width-1 := the width slots of entry `index`
# of the table of `count` entries starting at slot `table`. Reads every entry and
# selects with masks: the memory access pattern does not depend on `index`.
@micropython.viper
def select(ws: ptr32, d: int, table: int, count: int, width: int, index: int):
    words = width * 20
    r = ptr32(int(ws) + d * 80)
    for i in range(words):
        r[i] = 0
    j = 0
    while j < count:
        x = j ^ index
        mask = (((x | (0 - x)) >> 31) & 1) - 1  # all ones when j == index, else 0
        e = ptr32(int(ws) + (table + j * width) * 80)
        end = uint(e) + 4 * words
        x = int(r) - int(e)
        while uint(e) < end:  # e walks the entry, r's word at the same offset
            ptr32(int(e) + x)[0] = ptr32(int(e) + x)[0] | (e[0] & mask)
            e = ptr32(int(e) + 4)
        j += 1


# Addition chain shared by invert and pow22523 (ref10's): leaves z^(2^250 - 1) in t0 and
# z^11 in t1; t2, t3 are clobbered. Returns the instructions.
def _chain_250(z, t0, t1, t2, t3):
    return (
        (SQR, t0, z, 1),  # z^2
        (SQR, t1, t0, 2),  # z^8
        (MUL, t1, z, t1),  # z^9
        (MUL, t0, t0, t1),  # z^11
        (SQR, t2, t0, 1),  # z^22
        (MUL, t1, t1, t2),  # z^(2^5 - 1)
        (SQR, t2, t1, 5),
        (MUL, t1, t2, t1),  # z^(2^10 - 1)
        (SQR, t2, t1, 10),
        (MUL, t2, t2, t1),  # z^(2^20 - 1)
        (SQR, t3, t2, 20),
        (MUL, t2, t3, t2),  # z^(2^40 - 1)
        (SQR, t2, t2, 10),
        (MUL, t1, t2, t1),  # z^(2^50 - 1)
        (SQR, t2, t1, 50),
        (MUL, t2, t2, t1),  # z^(2^100 - 1)
        (SQR, t3, t2, 100),
        (MUL, t2, t3, t2),  # z^(2^200 - 1)
        (SQR, t2, t2, 50),
        (MUL, t2, t2, t1),  # z^(2^250 - 1) in t2
        (COPY, t1, t0, 0),  # z^11 in t1
        (COPY, t0, t2, 0),
    )


# Program: d := z^(p - 2) = 1/z (Fermat; 0 for z = 0). Uses t0..t3 (distinct from z, d).
def invert_program(d, z, t0, t1, t2, t3):
    return program(*_chain_250(z, t0, t1, t2, t3), (SQR, t0, t0, 5), (MUL, d, t0, t1))


# Program: d := z^((p - 5) / 8) = z^(2^252 - 3) (RFC 8032 §5.1.3 step 3). Uses t0..t3.
def pow22523_program(d, z, t0, t1, t2, t3):
    return program(*_chain_250(z, t0, t1, t2, t3), (SQR, t0, t0, 2), (MUL, d, t0, z))
