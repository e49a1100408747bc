# The AEAD open contract of every crypto backend on this runtime (issue 12, finding 13): a failed
# open leaves `out` unchanged, also when `out` is the ciphertext's own buffer (in-place decrypt),
# both through the backend's raw aead_open_into and through the interface (InvalidTag).
# Usage: check_aead_contract.py   (prints "ok <backends>" when every check passed)
from e2ee import crypto
from e2ee.crypto.errors import InvalidTag

KEY = bytes(range(32))
NONCE = bytes(range(12))


def check(name):
    suite = crypto.load(name)
    raw = crypto._find(name, "aead_open_into")
    for n in (0, 1, 64, 130):
        sealed = bytes(suite.aead_encrypt(KEY, NONCE, bytes([i & 0xFF for i in range(n)]), b"ad"))
        bad = bytearray(sealed)
        bad[-1] ^= 0x40
        view = memoryview(bad)
        assert raw(KEY, NONCE, view[:n], view[n:], b"ad", view[:n]) is False, name
        assert bytes(bad) == sealed[:-1] + bytes([sealed[-1] ^ 0x40]), (name, n, "raw in place")
        out = bytearray(b"\xa5" * n)
        assert raw(KEY, NONCE, sealed[:n], sealed[n:], b"ax", out) is False, name
        assert out == b"\xa5" * n, (name, n, "raw")
        inplace = bytearray(sealed)
        try:
            suite.aead_decrypt_into(KEY, NONCE, inplace, b"ax", memoryview(inplace)[:n])
            raise AssertionError("a wrong AD opened")
        except InvalidTag:
            pass
        assert bytes(inplace) == sealed, (name, n, "interface in place")
        # and the contract's other half: a good tag decrypts in place
        suite.aead_decrypt_into(KEY, NONCE, inplace, b"ad", memoryview(inplace)[:n])
        assert bytes(inplace[:n]) == bytes([i & 0xFF for i in range(n)]), name


names = crypto.available()
for name in names:
    check(name)
print("ok", " ".join(names))
