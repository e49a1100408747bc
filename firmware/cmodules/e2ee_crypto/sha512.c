// SHA-512, FIPS 180-4. Section numbers refer to that standard.
#include "sha512.h"

#include "monocypher.h" // crypto_wipe

// §4.2.3: the first 64 bits of the fractional parts of the cube roots of the first 80 primes.
static const uint64_t K[80] = {
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
};

// §5.3.5: initial hash value H(0).
static const uint64_t H0[8] = {
    0x6a09e667f3bcc908, 0xbb67ae8584caa73b, 0x3c6ef372fe94f82b, 0xa54ff53a5f1d36f1,
    0x510e527fade682d1, 0x9b05688c2b3e6c1f, 0x1f83d9abfb41bd6b, 0x5be0cd19137e2179,
};

// §3.2 / §4.1.3: rotation right and the SHA-384/512 functions.
#define ROTR(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
#define CH(x, y, z) (((x) & (y)) ^ (~(x) & (z)))
#define MAJ(x, y, z) (((x) & (y)) ^ ((x) & (z)) ^ ((y) & (z)))
#define BIG_SIGMA0(x) (ROTR(x, 28) ^ ROTR(x, 34) ^ ROTR(x, 39))
#define BIG_SIGMA1(x) (ROTR(x, 14) ^ ROTR(x, 18) ^ ROTR(x, 41))
#define SMALL_SIGMA0(x) (ROTR(x, 1) ^ ROTR(x, 8) ^ ((x) >> 7))
#define SMALL_SIGMA1(x) (ROTR(x, 19) ^ ROTR(x, 61) ^ ((x) >> 6))

static uint64_t load64_be(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

static void store64_be(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

// §6.4.2: one block. The message schedule W is kept as a rolling window of 16 words
// (W[t] for t >= 16 overwrites W[t - 16]) to keep the stack small on boards.
static void compress(uint64_t hash[8], const uint8_t block[E2EE_SHA512_BLOCK_SIZE]) {
    uint64_t w[16];
    uint64_t a = hash[0], b = hash[1], c = hash[2], d = hash[3];
    uint64_t e = hash[4], f = hash[5], g = hash[6], h = hash[7];
    for (int t = 0; t < 80; t++) {
        uint64_t wt;
        if (t < 16) {
            wt = load64_be(block + 8 * t);
        } else {
            wt = SMALL_SIGMA1(w[(t - 2) & 15]) + w[(t - 7) & 15] + SMALL_SIGMA0(w[(t - 15) & 15])
                 + w[t & 15];
        }
        w[t & 15] = wt;
        uint64_t t1 = h + BIG_SIGMA1(e) + CH(e, f, g) + K[t] + wt;
        uint64_t t2 = BIG_SIGMA0(a) + MAJ(a, b, c);
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    hash[0] += a;
    hash[1] += b;
    hash[2] += c;
    hash[3] += d;
    hash[4] += e;
    hash[5] += f;
    hash[6] += g;
    hash[7] += h;
    crypto_wipe(w, sizeof(w));
}

void e2ee_sha512_init(e2ee_sha512_ctx *ctx) {
    for (int i = 0; i < 8; i++) {
        ctx->hash[i] = H0[i];
    }
    ctx->length = 0;
}

void e2ee_sha512_update(e2ee_sha512_ctx *ctx, const uint8_t *data, size_t len) {
    size_t used = (size_t)(ctx->length % E2EE_SHA512_BLOCK_SIZE);
    ctx->length += len;
    while (len > 0) {
        size_t take = E2EE_SHA512_BLOCK_SIZE - used;
        if (take > len) {
            take = len;
        }
        for (size_t i = 0; i < take; i++) {
            ctx->block[used + i] = data[i];
        }
        used += take;
        data += take;
        len -= take;
        if (used == E2EE_SHA512_BLOCK_SIZE) {
            compress(ctx->hash, ctx->block);
            used = 0;
        }
    }
}

// §5.1.2 padding: a 1 bit, zeros up to 112 mod 128 bytes, then the message length in bits
// as a 128-bit big-endian integer. §6.4.2: the digest is H(N) big-endian.
void e2ee_sha512_final(e2ee_sha512_ctx *ctx, uint8_t digest[E2EE_SHA512_SIZE]) {
    size_t used = (size_t)(ctx->length % E2EE_SHA512_BLOCK_SIZE);
    ctx->block[used++] = 0x80;
    if (used > 112) {
        while (used < E2EE_SHA512_BLOCK_SIZE) {
            ctx->block[used++] = 0;
        }
        compress(ctx->hash, ctx->block);
        used = 0;
    }
    while (used < 112) {
        ctx->block[used++] = 0;
    }
    store64_be(ctx->block + 112, ctx->length >> 61); // high 64 bits of the bit length
    store64_be(ctx->block + 120, ctx->length << 3);
    compress(ctx->hash, ctx->block);
    for (int i = 0; i < 8; i++) {
        store64_be(digest + 8 * i, ctx->hash[i]);
    }
    crypto_wipe(ctx, sizeof(*ctx));
}

void e2ee_sha512_digest(const e2ee_sha512_ctx *ctx, uint8_t digest[E2EE_SHA512_SIZE]) {
    e2ee_sha512_ctx copy = *ctx;
    e2ee_sha512_final(&copy, digest); // wipes the copy
}

void e2ee_sha512(uint8_t digest[E2EE_SHA512_SIZE], const uint8_t *data, size_t len) {
    e2ee_sha512_ctx ctx;
    e2ee_sha512_init(&ctx);
    e2ee_sha512_update(&ctx, data, len);
    e2ee_sha512_final(&ctx, digest);
}
