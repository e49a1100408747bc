// MicroPython binding of the crypto core: the module `_e2ee_crypto`, backend "c" of e2ee.crypto
// (firmware/e2ee/crypto/__init__.py looks its primitives up by name). A thin layer: it takes
// buffers through the buffer protocol, checks their lengths (the interface has already checked
// them; this keeps a direct call from overrunning memory), and calls e2ee_core.c. Outputs go
// into the caller's buffer (MP_BUFFER_WRITE) or into a new bytes object; the keystream never
// touches the heap. Errors are ValueError without any buffer contents.
#include "py/runtime.h"

#include "e2ee_core.h"

// A readable buffer; `len` is the length it must have, or 0 for any length.
static const uint8_t *input(mp_obj_t obj, size_t len, size_t *actual) {
    mp_buffer_info_t info;
    mp_get_buffer_raise(obj, &info, MP_BUFFER_READ);
    if (len != 0 && info.len != len) {
        mp_raise_ValueError(MP_ERROR_TEXT("_e2ee_crypto: wrong buffer length"));
    }
    if (actual != NULL) {
        *actual = info.len;
    }
    return info.buf;
}

// The caller's writable buffer, which must be exactly `len` bytes.
static uint8_t *output(mp_obj_t obj, size_t len) {
    mp_buffer_info_t info;
    mp_get_buffer_raise(obj, &info, MP_BUFFER_WRITE);
    if (info.len != len) {
        mp_raise_ValueError(MP_ERROR_TEXT("_e2ee_crypto: wrong buffer length"));
    }
    return info.buf;
}

// ---- SHA-512 (FIPS 180-4) ----

static mp_obj_t mod_sha512(mp_obj_t data_in) {
    size_t len;
    const uint8_t *data = input(data_in, 0, &len);
    vstr_t digest;
    vstr_init_len(&digest, E2EE_SHA512_SIZE);
    e2ee_sha512((uint8_t *)digest.buf, data, len);
    return mp_obj_new_bytes_from_vstr(&digest);
}
static MP_DEFINE_CONST_FUN_OBJ_1(mod_sha512_obj, mod_sha512);

typedef struct {
    mp_obj_base_t base;
    e2ee_sha512_ctx ctx;
} mod_sha512_obj_t;

static mp_obj_t mod_sha512_update(mp_obj_t self_in, mp_obj_t data_in) {
    mod_sha512_obj_t *self = MP_OBJ_TO_PTR(self_in);
    size_t len;
    const uint8_t *data = input(data_in, 0, &len);
    e2ee_sha512_update(&self->ctx, data, len);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_2(mod_sha512_update_obj, mod_sha512_update);

// The digest so far; the state is kept, so update() may go on.
static mp_obj_t mod_sha512_digest(mp_obj_t self_in) {
    mod_sha512_obj_t *self = MP_OBJ_TO_PTR(self_in);
    vstr_t digest;
    vstr_init_len(&digest, E2EE_SHA512_SIZE);
    e2ee_sha512_digest(&self->ctx, (uint8_t *)digest.buf);
    return mp_obj_new_bytes_from_vstr(&digest);
}
static MP_DEFINE_CONST_FUN_OBJ_1(mod_sha512_digest_obj, mod_sha512_digest);

// SHA512([data])
static mp_obj_t mod_sha512_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 0, 1, false);
    mod_sha512_obj_t *self = mp_obj_malloc(mod_sha512_obj_t, type);
    e2ee_sha512_init(&self->ctx);
    if (n_args == 1) {
        mod_sha512_update(MP_OBJ_FROM_PTR(self), args[0]);
    }
    return MP_OBJ_FROM_PTR(self);
}

static const mp_rom_map_elem_t mod_sha512_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR_update), MP_ROM_PTR(&mod_sha512_update_obj) },
    { MP_ROM_QSTR(MP_QSTR_digest), MP_ROM_PTR(&mod_sha512_digest_obj) },
};
static MP_DEFINE_CONST_DICT(mod_sha512_locals, mod_sha512_locals_table);

static MP_DEFINE_CONST_OBJ_TYPE(
    mod_sha512_type,
    MP_QSTR_SHA512,
    MP_TYPE_FLAG_NONE,
    make_new, mod_sha512_make_new,
    locals_dict, &mod_sha512_locals
    );

// ---- X25519 (RFC 7748) ----

static mp_obj_t mod_x25519(mp_obj_t private_in, mp_obj_t public_in) {
    const uint8_t *private_key = input(private_in, E2EE_KEY_SIZE, NULL);
    const uint8_t *public_key = input(public_in, E2EE_KEY_SIZE, NULL);
    vstr_t shared;
    vstr_init_len(&shared, E2EE_KEY_SIZE);
    e2ee_x25519((uint8_t *)shared.buf, private_key, public_key);
    return mp_obj_new_bytes_from_vstr(&shared);
}
static MP_DEFINE_CONST_FUN_OBJ_2(mod_x25519_obj, mod_x25519);

// A public key as new bytes, derived from a 32-byte private key or seed.
static mp_obj_t public_key_of(mp_obj_t private_in, void (*derive)(uint8_t *, const uint8_t *)) {
    const uint8_t *private_key = input(private_in, E2EE_KEY_SIZE, NULL);
    vstr_t public_key;
    vstr_init_len(&public_key, E2EE_KEY_SIZE);
    derive((uint8_t *)public_key.buf, private_key);
    return mp_obj_new_bytes_from_vstr(&public_key);
}

static mp_obj_t mod_x25519_base(mp_obj_t private_in) {
    return public_key_of(private_in, e2ee_x25519_base);
}
static MP_DEFINE_CONST_FUN_OBJ_1(mod_x25519_base_obj, mod_x25519_base);

// ---- ChaCha20-Poly1305 (RFC 8439 §2.8) ----

// aead_seal_into(key, nonce, plaintext, ad, out): out = ciphertext || tag, len(plaintext) + 16.
static mp_obj_t mod_aead_seal_into(size_t n_args, const mp_obj_t *args) {
    size_t len, ad_len;
    const uint8_t *key = input(args[0], E2EE_KEY_SIZE, NULL);
    const uint8_t *nonce = input(args[1], E2EE_NONCE_SIZE, NULL);
    const uint8_t *plaintext = input(args[2], 0, &len);
    const uint8_t *ad = input(args[3], 0, &ad_len);
    uint8_t *out = output(args[4], len + E2EE_TAG_SIZE);
    if (e2ee_aead_seal(out, key, nonce, plaintext, len, ad, ad_len) != 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("_e2ee_crypto: message too long"));
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mod_aead_seal_into_obj, 5, 5, mod_aead_seal_into);

// aead_open_into(key, nonce, ciphertext, tag, ad, out) -> bool; on False out is unchanged.
static mp_obj_t mod_aead_open_into(size_t n_args, const mp_obj_t *args) {
    size_t len, ad_len;
    const uint8_t *key = input(args[0], E2EE_KEY_SIZE, NULL);
    const uint8_t *nonce = input(args[1], E2EE_NONCE_SIZE, NULL);
    const uint8_t *ciphertext = input(args[2], 0, &len);
    const uint8_t *tag = input(args[3], E2EE_TAG_SIZE, NULL);
    const uint8_t *ad = input(args[4], 0, &ad_len);
    uint8_t *out = output(args[5], len);
    return mp_obj_new_bool(e2ee_aead_open(out, key, nonce, ciphertext, len, tag, ad, ad_len) == 0);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mod_aead_open_into_obj, 6, 6, mod_aead_open_into);

// ---- Ed25519 (RFC 8032 §5.1) ----

static mp_obj_t mod_ed25519_public_key(mp_obj_t seed_in) {
    return public_key_of(seed_in, e2ee_ed25519_public_key);
}
static MP_DEFINE_CONST_FUN_OBJ_1(mod_ed25519_public_key_obj, mod_ed25519_public_key);

static mp_obj_t mod_ed25519_sign(mp_obj_t seed_in, mp_obj_t public_in, mp_obj_t message_in) {
    size_t len;
    const uint8_t *seed = input(seed_in, E2EE_KEY_SIZE, NULL);
    const uint8_t *public_key = input(public_in, E2EE_KEY_SIZE, NULL);
    const uint8_t *message = input(message_in, 0, &len);
    vstr_t signature;
    vstr_init_len(&signature, E2EE_SIGNATURE_SIZE);
    e2ee_ed25519_sign((uint8_t *)signature.buf, seed, public_key, message, len);
    return mp_obj_new_bytes_from_vstr(&signature);
}
static MP_DEFINE_CONST_FUN_OBJ_3(mod_ed25519_sign_obj, mod_ed25519_sign);

static mp_obj_t mod_ed25519_verify(mp_obj_t public_in, mp_obj_t message_in, mp_obj_t signature_in) {
    size_t len;
    const uint8_t *public_key = input(public_in, E2EE_KEY_SIZE, NULL);
    const uint8_t *message = input(message_in, 0, &len);
    const uint8_t *signature = input(signature_in, E2EE_SIGNATURE_SIZE, NULL);
    return mp_obj_new_bool(e2ee_ed25519_verify(public_key, message, len, signature) == 0);
}
static MP_DEFINE_CONST_FUN_OBJ_3(mod_ed25519_verify_obj, mod_ed25519_verify);

// ---- hazmat: RFC 8439 §2.4 / §2.5 building blocks (known-answer tests only) ----

// chacha20_xor(key, nonce, counter, src, dst)
static mp_obj_t mod_chacha20_xor(size_t n_args, const mp_obj_t *args) {
    size_t len;
    const uint8_t *key = input(args[0], E2EE_KEY_SIZE, NULL);
    const uint8_t *nonce = input(args[1], E2EE_NONCE_SIZE, NULL);
    mp_int_t counter = mp_obj_get_int(args[2]); // at most 2^31 - 1 on 32-bit ports: enough for KATs
    const uint8_t *src = input(args[3], 0, &len);
    uint8_t *dst = output(args[4], len);
    if (counter < 0 || e2ee_chacha20_xor(dst, src, len, key, nonce, (uint64_t)counter) != 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("_e2ee_crypto: counter out of range"));
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mod_chacha20_xor_obj, 5, 5, mod_chacha20_xor);

// poly1305_into(key, msg, out): the tag goes to out[0:16].
static mp_obj_t mod_poly1305_into(mp_obj_t key_in, mp_obj_t message_in, mp_obj_t out_in) {
    size_t len;
    const uint8_t *key = input(key_in, E2EE_KEY_SIZE, NULL);
    const uint8_t *message = input(message_in, 0, &len);
    mp_buffer_info_t out;
    mp_get_buffer_raise(out_in, &out, MP_BUFFER_WRITE);
    if (out.len < E2EE_TAG_SIZE) {
        mp_raise_ValueError(MP_ERROR_TEXT("_e2ee_crypto: wrong buffer length"));
    }
    e2ee_poly1305(out.buf, message, len, key);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_3(mod_poly1305_into_obj, mod_poly1305_into);

static const mp_rom_map_elem_t mod_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR__e2ee_crypto) },
    { MP_ROM_QSTR(MP_QSTR_sha512), MP_ROM_PTR(&mod_sha512_obj) },
    { MP_ROM_QSTR(MP_QSTR_sha512_hasher), MP_ROM_PTR(&mod_sha512_type) },
    { MP_ROM_QSTR(MP_QSTR_x25519), MP_ROM_PTR(&mod_x25519_obj) },
    { MP_ROM_QSTR(MP_QSTR_x25519_base), MP_ROM_PTR(&mod_x25519_base_obj) },
    { MP_ROM_QSTR(MP_QSTR_aead_seal_into), MP_ROM_PTR(&mod_aead_seal_into_obj) },
    { MP_ROM_QSTR(MP_QSTR_aead_open_into), MP_ROM_PTR(&mod_aead_open_into_obj) },
    { MP_ROM_QSTR(MP_QSTR_ed25519_public_key), MP_ROM_PTR(&mod_ed25519_public_key_obj) },
    { MP_ROM_QSTR(MP_QSTR_ed25519_sign), MP_ROM_PTR(&mod_ed25519_sign_obj) },
    { MP_ROM_QSTR(MP_QSTR_ed25519_verify), MP_ROM_PTR(&mod_ed25519_verify_obj) },
    { MP_ROM_QSTR(MP_QSTR_chacha20_xor), MP_ROM_PTR(&mod_chacha20_xor_obj) },
    { MP_ROM_QSTR(MP_QSTR_poly1305_into), MP_ROM_PTR(&mod_poly1305_into_obj) },
};
static MP_DEFINE_CONST_DICT(mod_globals, mod_globals_table);

const mp_obj_module_t e2ee_crypto_user_cmodule = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&mod_globals,
};

MP_REGISTER_MODULE(MP_QSTR__e2ee_crypto, e2ee_crypto_user_cmodule);
