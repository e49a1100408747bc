# Module-level scratch holds no key, nonce-key or secret-scalar material after a call returns
# (a RAM dump of a stolen board must not yield keys). Usage: check_scratch_wiped.py <viper|pure>
import sys

from e2ee import crypto


def all_zero(buf, start=0, end=None):
    for i in range(start, len(buf) if end is None else end):
        if buf[i]:
            return False
    return True


def main(backend):
    c = crypto.load(backend)
    key, seed, k = bytes([0x11] * 32), bytes([0x22] * 32), bytes([0x33] * 32)
    sealed = c.aead_encrypt(key, bytes(12), b"payload" * 10, b"ad")
    c.aead_decrypt(key, bytes(12), sealed, b"ad")
    if backend == "viper":
        from e2ee.crypto._viper import chacha20poly1305 as aead, ed25519, fe25519, x25519

        assert all_zero(aead._state, 4, 16) and all_zero(aead._keystream), "ChaCha20 state kept"
        assert all_zero(aead._poly) and all_zero(aead._otk), "Poly1305 key kept"
        c.x25519(k, c.x25519_base(seed))
        assert all_zero(x25519._ws) and all_zero(x25519._scalar) and all_zero(x25519._out), "X25519 kept"
        c.ed25519_sign(seed, b"m")
        # The working registers are slots _X (7) .. _B_TABLE - 1 (24) of ed25519.py (private
        # consts, invisible as attributes on MicroPython).
        assert all_zero(ed25519._ws, 7 * fe25519.LIMBS, 25 * fe25519.LIMBS), "[r]B kept"
        assert all_zero(ed25519._secret) and all_zero(ed25519._digits_s), "secret scalar kept"
    else:
        from e2ee.crypto._pure import chacha20poly1305 as aead

        assert all_zero(aead._state, 8, 32) and all_zero(aead._work), "ChaCha20 state kept"
        assert all_zero(aead._keystream) and all_zero(aead._otk), "keystream or Poly1305 key kept"
    print("ok", backend)


main(sys.argv[1])
