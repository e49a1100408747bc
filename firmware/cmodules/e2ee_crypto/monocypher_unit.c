// Monocypher (fetched at build time, never committed: scripts/build-cmodule) compiled in one
// translation unit with the one Edwards-curve check its public API lacks.
//
// Monocypher's crypto_eddsa_check_equation is cofactored ([8]([S]B - [h]A - R) == 0) and decodes
// A and R leniently. Our contract (docs/decisions.md D4) is RFC 8032 §5.1.7 cofactorless with
// canonical encodings, as every other backend does; the canonical-encoding checks live in
// e2ee_core.c, the cofactorless equation here, built from Monocypher's own (static) group
// operations so no curve arithmetic is new code.
#include "monocypher.c"

#include "monocypher_unit.h"

// RFC 8032 §5.1.7 steps 1 and 3 without the cofactor: S < L, A decodes to a curve point, and
// encode([S]B - [h]A) equals the bytes of R. R is compared as bytes, so an R that is off the
// curve or not canonically encoded never matches. Inputs are public: variable time is fine.
int e2ee_eddsa_check_cofactorless(const uint8_t signature[64], const uint8_t public_key[32],
    const uint8_t h[32]) {
    ge minus_a, sum, tmp;
    ge_cached cached;
    u8 check[32];
    u32 s32[8];
    load32_le_buf(s32, signature + 32, 8);
    if (is_above_l(s32) || ge_frombytes_neg_vartime(&minus_a, public_key)) {
        return -1;
    }
    // sum = [h](-A), double and add over the 253 bits of h < L
    ge_cache(&cached, &minus_a);
    ge_zero(&sum);
    for (int i = 252; i >= 0; i--) {
        ge_double(&sum, &sum, &tmp);
        if ((h[i >> 3] >> (i & 7)) & 1) {
            ge_add(&sum, &sum, &cached);
        }
    }
    // sum += [S]B
    ge_scalarmult_base(&tmp, signature + 32);
    ge_cache(&cached, &tmp);
    ge_add(&sum, &sum, &cached);
    ge_tobytes(check, &sum);
    return crypto_verify32(check, signature);
}
