"""The firmware C module's crypto core on CPython: the `_e2ee_crypto` primitives over ctypes.

`e2ee.crypto` loads this module as backend "c" on CPython (on MicroPython "c" is the module
`_e2ee_crypto` built into the firmware, firmware/cmodules/). It binds the same C core the
firmware links (firmware/cmodules/e2ee_crypto/e2ee_core.h), compiled for the host by
scripts/build-cmodule, so CI runs the RFC and Wycheproof vectors through the firmware's C code.
It is a test and benchmark vehicle, not a runtime dependency: hosts use the "host" backend.

The library is E2EE_CMODULE_LIB when set (the sanitizer tests point it at the ASan build),
else build/cmodule/current/lib_e2ee_crypto.so; importing raises ImportError when there is none,
so `crypto.load("c")` reports the backend as unavailable until the core has been built.
Each function has the signature of the MicroPython binding (mod_e2ee_crypto.c) and the same
argument checks; outputs are written straight into the caller's buffer, as on the device.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

__all__ = [
    "LIBRARY", "aead_open_into", "aead_seal_into", "chacha20_xor", "ed25519_public_key", "ed25519_sign",
    "ed25519_verify", "poly1305_into", "sha512", "sha512_hasher", "x25519", "x25519_base",
]

API_VERSION = 1  # E2EE_CORE_API_VERSION of e2ee_core.h
_DEFAULT = Path(__file__).resolve().parents[2] / "build" / "cmodule" / "current" / "lib_e2ee_crypto.so"
LIBRARY = Path(os.environ.get("E2EE_CMODULE_LIB") or _DEFAULT)

if not LIBRARY.exists():
    raise ImportError("C core not built (%s missing): run scripts/build-cmodule" % LIBRARY)
_lib = ctypes.CDLL(str(LIBRARY))
if _lib.e2ee_core_api_version() != API_VERSION:
    raise ImportError("%s has C API version %d, this loader speaks %d: rebuild with scripts/build-cmodule"
                      % (LIBRARY, _lib.e2ee_core_api_version(), API_VERSION))

_p, _n, _u64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64
for _name, _args, _res in (
    ("e2ee_sha512_ctx_size", [], _n),
    ("e2ee_sha512", [_p, _p, _n], None),
    ("e2ee_sha512_init", [_p], None),
    ("e2ee_sha512_update", [_p, _p, _n], None),
    ("e2ee_sha512_digest", [_p, _p], None),
    ("e2ee_x25519", [_p, _p, _p], None),
    ("e2ee_x25519_base", [_p, _p], None),
    ("e2ee_aead_seal", [_p, _p, _p, _p, _n, _p, _n], ctypes.c_int),
    ("e2ee_aead_open", [_p, _p, _p, _p, _n, _p, _p, _n], ctypes.c_int),
    ("e2ee_ed25519_public_key", [_p, _p], None),
    ("e2ee_ed25519_sign", [_p, _p, _p, _p, _n], None),
    ("e2ee_ed25519_verify", [_p, _p, _n, _p], ctypes.c_int),
    ("e2ee_chacha20_xor", [_p, _p, _n, _p, _p, _u64], ctypes.c_int),
    ("e2ee_poly1305", [_p, _p, _n, _p], None),
):
    _fn = getattr(_lib, _name)
    _fn.argtypes, _fn.restype = _args, _res


def _in(data: Any, size: int | None = None) -> tuple[Any, int]:
    """(pointer holder, length) of a readable buffer; `size` is the length it must have."""
    view = memoryview(data).cast("B")
    if size is not None and len(view) != size:
        raise ValueError("_e2ee_crypto: wrong buffer length")
    if view.readonly:
        return ctypes.c_char_p(view.tobytes()), len(view)  # ctypes cannot point into bytes
    return (ctypes.c_char * len(view)).from_buffer(view), len(view)


def _out(buf: Any, size: int) -> Any:
    """A pointer into the caller's writable buffer `buf` of exactly `size` bytes."""
    view = memoryview(buf).cast("B")
    if len(view) != size:
        raise ValueError("_e2ee_crypto: wrong buffer length")
    return (ctypes.c_char * size).from_buffer(view)


def _result(size: int, fn: Any, *args: Any) -> bytes:
    out = ctypes.create_string_buffer(size)
    fn(out, *args)
    return out.raw


def sha512(data: Any) -> bytes:
    buf, n = _in(data)
    return _result(64, _lib.e2ee_sha512, buf, n)


class sha512_hasher:  # noqa: N801 - the primitive's name in the backend contract
    """FIPS 180-4 SHA-512, incremental: update(data), digest() (which does not finish the state)."""

    _SIZE = _lib.e2ee_sha512_ctx_size()

    def __init__(self, data: Any = None) -> None:
        self._ctx = ctypes.create_string_buffer(self._SIZE)
        _lib.e2ee_sha512_init(self._ctx)
        if data is not None:
            self.update(data)

    def update(self, data: Any) -> None:
        buf, n = _in(data)
        _lib.e2ee_sha512_update(self._ctx, buf, n)

    def digest(self) -> bytes:
        out = ctypes.create_string_buffer(64)
        _lib.e2ee_sha512_digest(self._ctx, out)
        return out.raw


def x25519(private: Any, public: Any) -> bytes:
    k, _ = _in(private, 32)
    u, _ = _in(public, 32)
    return _result(32, _lib.e2ee_x25519, k, u)


def x25519_base(private: Any) -> bytes:
    k, _ = _in(private, 32)
    return _result(32, _lib.e2ee_x25519_base, k)


def aead_seal_into(key: Any, nonce: Any, plaintext: Any, ad: Any, out: Any) -> None:
    k, _ = _in(key, 32)
    iv, _ = _in(nonce, 12)
    pt, n = _in(plaintext)
    a, an = _in(ad)
    dst = _out(out, n + 16)
    if _lib.e2ee_aead_seal(dst, k, iv, pt, n, a, an):
        raise ValueError("_e2ee_crypto: message too long")


def aead_open_into(key: Any, nonce: Any, ciphertext: Any, tag: Any, ad: Any, out: Any) -> bool:
    k, _ = _in(key, 32)
    iv, _ = _in(nonce, 12)
    ct, n = _in(ciphertext)
    t, _ = _in(tag, 16)
    a, an = _in(ad)
    dst = _out(out, n)
    return _lib.e2ee_aead_open(dst, k, iv, ct, n, t, a, an) == 0


def ed25519_public_key(seed: Any) -> bytes:
    s, _ = _in(seed, 32)
    return _result(32, _lib.e2ee_ed25519_public_key, s)


def ed25519_sign(seed: Any, public: Any, message: Any) -> bytes:
    s, _ = _in(seed, 32)
    a, _ = _in(public, 32)
    m, n = _in(message)
    return _result(64, _lib.e2ee_ed25519_sign, s, a, m, n)


def ed25519_verify(public: Any, message: Any, signature: Any) -> bool:
    a, _ = _in(public, 32)
    m, n = _in(message)
    sig, _ = _in(signature, 64)
    return _lib.e2ee_ed25519_verify(a, m, n, sig) == 0


# hazmat: RFC 8439 §2.4 and §2.5 building blocks, signatures as in the viper backend.
def chacha20_xor(key: Any, nonce: Any, counter: int, src: Any, dst: Any) -> None:
    k, _ = _in(key, 32)
    iv, _ = _in(nonce, 12)
    s, n = _in(src)
    if not 0 <= counter < 1 << 64 or _lib.e2ee_chacha20_xor(_out(dst, n), s, n, k, iv, counter):
        raise ValueError("_e2ee_crypto: counter out of range")


def poly1305_into(key: Any, msg: Any, out: Any) -> None:
    k, _ = _in(key, 32)
    m, n = _in(msg)
    _lib.e2ee_poly1305(_out(memoryview(out)[:16], 16), m, n, k)
