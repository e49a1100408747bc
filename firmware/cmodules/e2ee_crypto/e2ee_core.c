// The crypto core: RFC 7748, RFC 8439 and RFC 8032 shaped over Monocypher's public API.
#include "e2ee_core.h"

#include "monocypher.h"
#include "monocypher_unit.h"

int e2ee_core_api_version(void) {
    return E2EE_CORE_API_VERSION;
}

size_t e2ee_sha512_ctx_size(void) {
    return sizeof(e2ee_sha512_ctx);
}

// ---- X25519 (RFC 7748) ----

// §5: clamps the scalar, ignores the top bit of u, accepts non-canonical u (Monocypher).
void e2ee_x25519(uint8_t shared[32], const uint8_t private_key[32], const uint8_t public_key[32]) {
    crypto_x25519(shared, private_key, public_key);
}

void e2ee_x25519_base(uint8_t public_key[32], const uint8_t private_key[32]) {
    crypto_x25519_public_key(public_key, private_key);
}

// ---- ChaCha20-Poly1305 (RFC 8439) ----

// §2.4: the block counter is 32 bits; a message starting at `counter` may use the blocks up
// to 2^32 - 1 (Monocypher would carry into the nonce instead).
static int chacha20_fits(uint64_t counter, size_t len) {
    uint64_t blocks = ((uint64_t)len + 63) / 64;
    return counter <= UINT32_MAX && blocks <= (uint64_t)UINT32_MAX + 1 - counter;
}

// §2.6: the one-time Poly1305 key is the first 32 bytes of block 0.
static void poly1305_key_gen(uint8_t otk[32], const uint8_t key[32], const uint8_t nonce[12]) {
    crypto_chacha20_ietf(otk, NULL, 32, key, nonce, 0);
}

// §2.8: tag = Poly1305(otk, ad || pad16(ad) || ct || pad16(ct) || le64(|ad|) || le64(|ct|)).
static void aead_tag(uint8_t tag[16], const uint8_t otk[32], const uint8_t *ad, size_t ad_len,
    const uint8_t *ciphertext, size_t len) {
    static const uint8_t zeros[15] = {0};
    uint8_t lengths[16];
    uint64_t n = ad_len;
    for (int i = 0; i < 8; i++, n >>= 8) {
        lengths[i] = (uint8_t)n;
    }
    n = len;
    for (int i = 8; i < 16; i++, n >>= 8) {
        lengths[i] = (uint8_t)n;
    }
    crypto_poly1305_ctx ctx;
    crypto_poly1305_init(&ctx, otk);
    crypto_poly1305_update(&ctx, ad, ad_len);
    crypto_poly1305_update(&ctx, zeros, (16 - ad_len % 16) % 16);
    crypto_poly1305_update(&ctx, ciphertext, len);
    crypto_poly1305_update(&ctx, zeros, (16 - len % 16) % 16);
    crypto_poly1305_update(&ctx, lengths, sizeof(lengths));
    crypto_poly1305_final(&ctx, tag); // wipes ctx
}

int e2ee_aead_seal(uint8_t *out, const uint8_t key[32], const uint8_t nonce[12],
    const uint8_t *plaintext, size_t len, const uint8_t *ad, size_t ad_len) {
    if (!chacha20_fits(1, len)) {
        return -1;
    }
    uint8_t otk[32];
    poly1305_key_gen(otk, key, nonce);
    crypto_chacha20_ietf(out, plaintext, len, key, nonce, 1); // §2.8: encryption starts at block 1
    aead_tag(out + len, otk, ad, ad_len, out, len);
    crypto_wipe(otk, sizeof(otk));
    return 0;
}

int e2ee_aead_open(uint8_t *out, const uint8_t key[32], const uint8_t nonce[12],
    const uint8_t *ciphertext, size_t len, const uint8_t tag[16], const uint8_t *ad, size_t ad_len) {
    uint8_t otk[32], expected[16];
    int status = -1;
    if (chacha20_fits(1, len)) {
        poly1305_key_gen(otk, key, nonce);
        aead_tag(expected, otk, ad, ad_len, ciphertext, len);
        status = crypto_verify16(expected, tag); // constant time
        crypto_wipe(otk, sizeof(otk));
        crypto_wipe(expected, sizeof(expected));
    }
    // Decrypts only after the tag verified; on failure out is left as it was, so an in-place
    // open keeps the caller's ciphertext (the interface promises out unchanged on InvalidTag)
    // and no unauthenticated plaintext is ever written.
    if (status == 0) {
        crypto_chacha20_ietf(out, ciphertext, len, key, nonce, 1);
    }
    return status;
}

int e2ee_chacha20_xor(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[32],
    const uint8_t nonce[12], uint64_t counter) {
    if (!chacha20_fits(counter, len)) {
        return -1;
    }
    crypto_chacha20_ietf(dst, src, len, key, nonce, (uint32_t)counter);
    return 0;
}

void e2ee_poly1305(uint8_t tag[16], const uint8_t *message, size_t len, const uint8_t key[32]) {
    crypto_poly1305(tag, message, len, key);
}

// ---- Ed25519 (RFC 8032 §5.1) over Monocypher's low-level EdDSA functions and our SHA-512 ----

// SHA-512(a || b || c) mod L, the nonce and challenge hashes of §5.1.6 steps 2 and 4.
static void hash_reduce(uint8_t out[32], const uint8_t *a, size_t a_len, const uint8_t *b,
    size_t b_len, const uint8_t *c, size_t c_len) {
    uint8_t digest[E2EE_SHA512_SIZE];
    e2ee_sha512_ctx ctx;
    e2ee_sha512_init(&ctx);
    e2ee_sha512_update(&ctx, a, a_len);
    e2ee_sha512_update(&ctx, b, b_len);
    e2ee_sha512_update(&ctx, c, c_len);
    e2ee_sha512_final(&ctx, digest); // wipes ctx
    crypto_eddsa_reduce(out, digest);
    crypto_wipe(digest, sizeof(digest));
}

// §5.1.5 steps 1-2: h = SHA-512(seed); s = h[0:32] pruned; prefix = h[32:64].
static void expand_seed(uint8_t expanded[64], const uint8_t seed[32]) {
    e2ee_sha512(expanded, seed, 32);
    crypto_eddsa_trim_scalar(expanded, expanded);
}

// §5.1.5 step 3: A = [s]B.
void e2ee_ed25519_public_key(uint8_t public_key[32], const uint8_t seed[32]) {
    uint8_t expanded[64];
    expand_seed(expanded, seed);
    crypto_eddsa_scalarbase(public_key, expanded);
    crypto_wipe(expanded, sizeof(expanded));
}

void e2ee_ed25519_sign(uint8_t signature[64], const uint8_t seed[32], const uint8_t public_key[32],
    const uint8_t *message, size_t len) {
    uint8_t expanded[64], r[32], k[32], big_r[32];
    expand_seed(expanded, seed);
    hash_reduce(r, expanded + 32, 32, message, len, NULL, 0); // step 2: r = H(prefix || M)
    crypto_eddsa_scalarbase(big_r, r);                        // step 3: R = [r]B
    hash_reduce(k, big_r, 32, public_key, 32, message, len);  // step 4: k = H(R || A || M)
    crypto_eddsa_mul_add(signature + 32, k, expanded, r);     // step 5: S = (r + k * s) mod L
    for (int i = 0; i < 32; i++) {                            // step 6: R || S
        signature[i] = big_r[i];
    }
    crypto_wipe(expanded, sizeof(expanded));
    crypto_wipe(r, sizeof(r));
}

// §5.1.3 decoding steps 1 and 4, as far as bytes tell: y < p = 2^255 - 19, and x = 0 (that is
// y = 1 or y = p - 1) with the sign bit set is refused. Whether y is on the curve (step 2-3)
// is checked by decoding, in e2ee_eddsa_check_cofactorless.
static int canonical_point(const uint8_t p[32]) {
    int all_ff = (p[31] & 0x7f) == 0x7f;
    int rest_zero = (p[31] & 0x7f) == 0;
    for (int i = 1; i < 31; i++) {
        all_ff &= p[i] == 0xff;
        rest_zero &= p[i] == 0;
    }
    if (all_ff && p[0] >= 0xed) {
        return 0; // y >= p
    }
    if ((p[31] & 0x80) && ((rest_zero && p[0] == 1) || (all_ff && p[0] == 0xec))) {
        return 0; // x = 0 with sign bit 1
    }
    return 1;
}

// §5.1.7: step 1 decodes R and A (canonically) and checks S < L; step 2 k = H(R || A || M);
// step 3 [S]B = R + [k]A, cofactorless.
int e2ee_ed25519_verify(const uint8_t public_key[32], const uint8_t *message, size_t len,
    const uint8_t signature[64]) {
    if (!canonical_point(public_key) || !canonical_point(signature)) {
        return -1;
    }
    uint8_t k[32];
    hash_reduce(k, signature, 32, public_key, 32, message, len);
    return e2ee_eddsa_check_cofactorless(signature, public_key, k);
}
