// The function monocypher_unit.c adds next to Monocypher (see there).
#ifndef E2EE_MONOCYPHER_UNIT_H
#define E2EE_MONOCYPHER_UNIT_H

#include <stdint.h>

// 0 when S < L, A is a curve point and encode([S]B - [h]A) == R; -1 otherwise.
int e2ee_eddsa_check_cofactorless(const uint8_t signature[64], const uint8_t public_key[32],
    const uint8_t h[32]);

#endif
