// SHA-512 (FIPS 180-4 §6.4) for Ed25519 and the `sha512` primitive. Monocypher 4's core has no
// SHA-512 (its optional monocypher-ed25519.c is not in the pinned pymonocypher sdist), so it is
// written here from the standard and tested against the FIPS 180-4 / CAVP vectors in CI.
#ifndef E2EE_SHA512_H
#define E2EE_SHA512_H

#include <stddef.h>
#include <stdint.h>

#define E2EE_SHA512_SIZE 64        // digest bytes
#define E2EE_SHA512_BLOCK_SIZE 128 // message block bytes (FIPS 180-4 §5.2.2)

typedef struct {
    uint64_t hash[8];                      // H(i), FIPS 180-4 §6.4.2
    uint64_t length;                       // message bytes so far
    uint8_t block[E2EE_SHA512_BLOCK_SIZE]; // pending bytes of the current block
} e2ee_sha512_ctx;

void e2ee_sha512_init(e2ee_sha512_ctx *ctx);
void e2ee_sha512_update(e2ee_sha512_ctx *ctx, const uint8_t *data, size_t len);
// Finishes the hash and wipes ctx.
void e2ee_sha512_final(e2ee_sha512_ctx *ctx, uint8_t digest[E2EE_SHA512_SIZE]);
// The digest of the data so far; ctx is left unchanged, so update() may continue.
void e2ee_sha512_digest(const e2ee_sha512_ctx *ctx, uint8_t digest[E2EE_SHA512_SIZE]);
void e2ee_sha512(uint8_t digest[E2EE_SHA512_SIZE], const uint8_t *data, size_t len);

#endif
