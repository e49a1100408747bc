// The crypto core of the `_e2ee_crypto` module: everything except the MicroPython binding.
// Plain C over byte arrays, so the same object code is tested on the host (ctypes, CI) and
// linked into firmware. Callers pass buffers of the documented sizes; variable-length buffers
// come with their length. Secrets on the stack are wiped before each function returns.
#ifndef E2EE_CORE_H
#define E2EE_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "sha512.h"

#define E2EE_KEY_SIZE 32       // X25519 keys, Ed25519 seeds and keys, AEAD keys
#define E2EE_NONCE_SIZE 12     // RFC 8439 §2.8 IETF nonce
#define E2EE_TAG_SIZE 16       // RFC 8439 §2.5 Poly1305 tag
#define E2EE_SIGNATURE_SIZE 64 // RFC 8032 §5.1.6 R || S

// Version of this C API; the ctypes loader (host/e2ee_host/cmodule.py) refuses a mismatch.
#define E2EE_CORE_API_VERSION 1
int e2ee_core_api_version(void);
size_t e2ee_sha512_ctx_size(void);

// RFC 7748 §5: shared = X25519(private, public); the all-zero result is returned as is (the
// interface refuses it, §6.1).
void e2ee_x25519(uint8_t shared[32], const uint8_t private_key[32], const uint8_t public_key[32]);
// RFC 7748 §6.1: public = X25519(private, 9).
void e2ee_x25519_base(uint8_t public_key[32], const uint8_t private_key[32]);

// RFC 8439 §2.8 AEAD. seal writes ciphertext || tag (len + 16 bytes) to out; out may be the
// plaintext buffer itself (in place) but must not overlap it otherwise. Returns -1 (writing
// nothing) when len exceeds the 32-bit block counter, else 0.
int e2ee_aead_seal(uint8_t *out, const uint8_t key[32], const uint8_t nonce[12],
    const uint8_t *plaintext, size_t len, const uint8_t *ad, size_t ad_len);
// Checks the tag before decrypting anything: returns 0 with the plaintext in out, or -1 with
// out unchanged (nothing written). out may be the ciphertext buffer itself.
int e2ee_aead_open(uint8_t *out, const uint8_t key[32], const uint8_t nonce[12],
    const uint8_t *ciphertext, size_t len, const uint8_t tag[16], const uint8_t *ad, size_t ad_len);

// RFC 8032 §5.1.5
void e2ee_ed25519_public_key(uint8_t public_key[32], const uint8_t seed[32]);
// RFC 8032 §5.1.6; public_key must be the seed's (the interface guarantees it).
void e2ee_ed25519_sign(uint8_t signature[64], const uint8_t seed[32], const uint8_t public_key[32],
    const uint8_t *message, size_t len);
// RFC 8032 §5.1.7, cofactorless, S < L, canonical A and R (§5.1.3). 0 valid, -1 invalid.
int e2ee_ed25519_verify(const uint8_t public_key[32], const uint8_t *message, size_t len,
    const uint8_t signature[64]);

// Hazmat building blocks (RFC 8439 §2.4, §2.5), for known-answer tests.
// chacha20_xor returns -1 (writing nothing) when counter >= 2^32 or counter + blocks > 2^32.
int e2ee_chacha20_xor(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[32],
    const uint8_t nonce[12], uint64_t counter);
void e2ee_poly1305(uint8_t tag[16], const uint8_t *message, size_t len, const uint8_t key[32]);

#endif
