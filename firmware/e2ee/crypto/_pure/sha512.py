# SHA-512 (FIPS 180-4), portable pure Python for MicroPython and CPython.
# 64-bit words are plain ints masked to 64 bits (big ints on MicroPython, on purpose).

# FIPS 180-4 §4.2.3: the first 64 bits of the fractional parts of the cube roots of the
# first eighty primes.
_K = (
    0x428a2f98d728ae22, 0x7137449123ef65cd, 0xb5c0fbcfec4d3b2f, 0xe9b5dba58189dbbc,
    0x3956c25bf348b538, 0x59f111f1b605d019, 0x923f82a4af194f9b, 0xab1c5ed5da6d8118,
    0xd807aa98a3030242, 0x12835b0145706fbe, 0x243185be4ee4b28c, 0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f, 0x80deb1fe3b1696b1, 0x9bdc06a725c71235, 0xc19bf174cf692694,
    0xe49b69c19ef14ad2, 0xefbe4786384f25e3, 0x0fc19dc68b8cd5b5, 0x240ca1cc77ac9c65,
    0x2de92c6f592b0275, 0x4a7484aa6ea6e483, 0x5cb0a9dcbd41fbd4, 0x76f988da831153b5,
    0x983e5152ee66dfab, 0xa831c66d2db43210, 0xb00327c898fb213f, 0xbf597fc7beef0ee4,
    0xc6e00bf33da88fc2, 0xd5a79147930aa725, 0x06ca6351e003826f, 0x142929670a0e6e70,
    0x27b70a8546d22ffc, 0x2e1b21385c26c926, 0x4d2c6dfc5ac42aed, 0x53380d139d95b3df,
    0x650a73548baf63de, 0x766a0abb3c77b2a8, 0x81c2c92e47edaee6, 0x92722c851482353b,
    0xa2bfe8a14cf10364, 0xa81a664bbc423001, 0xc24b8b70d0f89791, 0xc76c51a30654be30,
    0xd192e819d6ef5218, 0xd69906245565a910, 0xf40e35855771202a, 0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8, 0x1e376c085141ab53, 0x2748774cdf8eeb99, 0x34b0bcb5e19b48a8,
    0x391c0cb3c5c95a63, 0x4ed8aa4ae3418acb, 0x5b9cca4f7763e373, 0x682e6ff3d6b2b8a3,
    0x748f82ee5defb2fc, 0x78a5636f43172f60, 0x84c87814a1f0ab72, 0x8cc702081a6439ec,
    0x90befffa23631e28, 0xa4506cebde82bde9, 0xbef9a3f7b2c67915, 0xc67178f2e372532b,
    0xca273eceea26619c, 0xd186b8c721c0c207, 0xeada7dd6cde0eb1e, 0xf57d4f7fee6ed178,
    0x06f067aa72176fba, 0x0a637dc5a2c898a6, 0x113f9804bef90dae, 0x1b710b35131c471b,
    0x28db77f523047d84, 0x32caab7b40c72493, 0x3c9ebe0a15c9bebc, 0x431d67c49c100d4c,
    0x4cc5d4becb3e42b6, 0x597f299cfc657e2a, 0x5fcb6fab3ad6faec, 0x6c44198c4a475817,
)

# FIPS 180-4 §5.3.5: initial hash value H(0).
_IV = (
    0x6a09e667f3bcc908, 0xbb67ae8584caa73b, 0x3c6ef372fe94f82b, 0xa54ff53a5f1d36f1,
    0x510e527fade682d1, 0x9b05688c2b3e6c1f, 0x1f83d9abfb41bd6b, 0x5be0cd19137e2179,
)

_MASK64 = 0xFFFFFFFFFFFFFFFF
_BLOCK_SIZE = 128

# Message schedule scratch, reused by every compression (FIPS 180-4 §6.4.2 step 1).
_W = [0] * 80


# FIPS 180-4 §6.4.2: process one 1024-bit block block[offset:offset + 128] into state.
def _compress(state, block, offset):
    w = _W
    m = _MASK64
    for t in range(16):
        i = offset + 8 * t
        w[t] = int.from_bytes(block[i:i + 8], "big")
    for t in range(16, 80):
        x = w[t - 15]
        # sigma0 (FIPS 180-4 §4.1.3, (4.12)): ROTR^1 ^ ROTR^8 ^ SHR^7
        s0 = ((x >> 1) | (x << 63)) ^ ((x >> 8) | (x << 56)) ^ (x >> 7)
        x = w[t - 2]
        # sigma1 (4.13): ROTR^19 ^ ROTR^61 ^ SHR^6
        s1 = ((x >> 19) | (x << 45)) ^ ((x >> 61) | (x << 3)) ^ (x >> 6)
        w[t] = (s1 + w[t - 7] + s0 + w[t - 16]) & m
    a, b, c, d, e, f, g, h = state
    k = _K
    for t in range(80):
        # Sigma1 (4.11): ROTR^14 ^ ROTR^18 ^ ROTR^41; Ch (4.8)
        s1 = ((e >> 14) | (e << 50)) ^ ((e >> 18) | (e << 46)) ^ ((e >> 41) | (e << 23))
        t1 = (h + (s1 & m) + ((e & f) ^ (~e & g)) + k[t] + w[t]) & m
        # Sigma0 (4.10): ROTR^28 ^ ROTR^34 ^ ROTR^39; Maj (4.9)
        s0 = ((a >> 28) | (a << 36)) ^ ((a >> 34) | (a << 30)) ^ ((a >> 39) | (a << 25))
        t2 = (s0 & m) + ((a & b) ^ (a & c) ^ (b & c))
        h = g
        g = f
        f = e
        e = (d + t1) & m
        d = c
        c = b
        b = a
        a = (t1 + t2) & m
    state[0] = (state[0] + a) & m
    state[1] = (state[1] + b) & m
    state[2] = (state[2] + c) & m
    state[3] = (state[3] + d) & m
    state[4] = (state[4] + e) & m
    state[5] = (state[5] + f) & m
    state[6] = (state[6] + g) & m
    state[7] = (state[7] + h) & m


# FIPS 180-4 §6.4: streaming hash object. update() any number of times, then digest()
# exactly once (digest pads in place and finalises the state).
class SHA512:
    def __init__(self, data=None):
        self._state = list(_IV)
        self._tail = bytearray(_BLOCK_SIZE)  # partial block not yet compressed
        self._tail_len = 0
        self._length = 0  # message length in bytes
        if data is not None:
            self.update(data)

    def update(self, data):
        data = memoryview(data)
        n = len(data)
        self._length += n
        pos = 0
        tail = self._tail
        if self._tail_len:
            take = min(_BLOCK_SIZE - self._tail_len, n)
            tail[self._tail_len:self._tail_len + take] = data[:take]
            self._tail_len += take
            pos = take
            if self._tail_len < _BLOCK_SIZE:
                return
            _compress(self._state, tail, 0)
            self._tail_len = 0
        # Whole blocks straight from the input, no copy.
        while n - pos >= _BLOCK_SIZE:
            _compress(self._state, data, pos)
            pos += _BLOCK_SIZE
        if pos < n:
            tail[0:n - pos] = data[pos:]
            self._tail_len = n - pos

    # FIPS 180-4 §5.1.2 padding: 0x80, zeros, then the 128-bit big-endian bit length.
    def digest(self):
        tail = self._tail
        used = self._tail_len
        tail[used] = 0x80
        for i in range(used + 1, _BLOCK_SIZE):
            tail[i] = 0
        if used >= _BLOCK_SIZE - 16:
            _compress(self._state, tail, 0)
            for i in range(_BLOCK_SIZE):
                tail[i] = 0
        tail[_BLOCK_SIZE - 16:] = (self._length * 8).to_bytes(16, "big")
        _compress(self._state, tail, 0)
        out = bytearray(64)
        for i in range(8):
            out[8 * i:8 * i + 8] = self._state[i].to_bytes(8, "big")
            self._state[i] = 0
        # Drop the schedule's big ints: they would otherwise stay alive between calls,
        # scattered over the heap (fragmentation) and holding words of the message.
        w = _W
        for t in range(80):
            w[t] = 0
        return bytes(out)


# FIPS 180-4 §6.4: SHA-512 of a whole message (bytes, bytearray or memoryview).
def sha512(data):
    return SHA512(data).digest()
