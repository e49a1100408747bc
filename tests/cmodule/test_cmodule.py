"""The firmware C module's core (firmware/cmodules/e2ee_crypto/) on the host, through the ctypes
binding that mirrors the MicroPython one: the contract details the vector suites do not show
(in-place AEAD, output unchanged by a failed open, argument checks, the 32-bit ChaCha20 counter),
Ed25519 cofactor cases decided the same way by every backend, and the build script's refusals.
The RFC/Wycheproof/differential suites run backend "c" in tests/crypto/ (parameter
("cpython", "c")); test_sanitizers.py runs them again on the ASan/UBSan build."""
from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import nacl.bindings
import pytest
from cmodule.cmodule_build import BUILD_SCRIPT, cmodule  # noqa: F401 (fixture)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from support import ROOT

sys.path.insert(0, str(ROOT / "tests" / "crypto"))  # the vector suites' backends and runner
from test_vectors import BACKENDS, run_suite  # noqa: E402
from vectorfile import write  # noqa: E402

from e2ee import crypto  # noqa: E402
from e2ee.crypto import errors  # noqa: E402

L = 2**252 + 27742317777372353535851937790883648493  # RFC 8032 §5.1 group order
# A point of order 8 ("Taming the many EdDSAs", Chalkias et al. 2020, table 5)
ORDER8 = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")


@pytest.fixture(scope="module")
def c(cmodule):  # noqa: F811 (fixture)
    suite = crypto.load("c")
    assert set(suite.resolve().values()) == {"c"}
    return suite


@pytest.fixture(scope="module")
def binding(c):
    import e2ee_host.cmodule

    return e2ee_host.cmodule


def test_loads_the_built_library(cmodule, binding):  # noqa: F811
    assert binding.LIBRARY == Path(os.environ["E2EE_CMODULE_LIB"])
    assert crypto.default.chain == ("host", "pure")  # hosts keep OpenSSL; "c" only on request


def test_aead_in_place(c, binding):
    rng = random.Random(1)
    key, nonce, ad = rng.randbytes(32), rng.randbytes(12), b"header"
    for n in (0, 1, 63, 64, 65, 1000):
        msg = rng.randbytes(n)
        buf = bytearray(msg + bytes(16))
        binding.aead_seal_into(key, nonce, memoryview(buf)[:n], ad, buf)  # plaintext overwritten
        assert bytes(buf) == ChaCha20Poly1305(key).encrypt(nonce, msg, ad)
        view = memoryview(buf)
        assert binding.aead_open_into(key, nonce, view[:n], view[n:], ad, view[:n])
        assert bytes(buf[:n]) == msg


def test_failed_open_leaves_no_plaintext(binding):
    key, nonce = bytes(range(32)), bytes(12)
    sealed = ChaCha20Poly1305(key).encrypt(nonce, b"secret reading" * 8, b"")
    tag = bytearray(sealed[-16:])
    tag[3] ^= 1
    out = bytearray(b"\xaa" * (len(sealed) - 16))
    assert binding.aead_open_into(key, nonce, sealed[:-16], tag, b"", out) is False
    assert out == b"\xaa" * len(out)  # nothing written: no plaintext, no keystream


def test_finding13_failed_in_place_open_leaves_the_ciphertext(c, binding):
    """Issue 12, finding 13: a failed open zeroed `out`, so an in-place decrypt (out = the
    ciphertext's own buffer) wiped the caller's ciphertext; the interface promises `out`
    unchanged on InvalidTag (e2ee.crypto.Suite.aead_decrypt_into). Binding and interface, with
    a bad tag and a bad AD, for empty, one-block and multi-block messages."""
    key, nonce = bytes(range(32)), bytes(range(12))
    for n in (0, 1, 64, 200):
        sealed = ChaCha20Poly1305(key).encrypt(nonce, bytes(range(n % 256)) * (n // 256) + bytes(range(n % 256)), b"ad")
        bad = bytearray(sealed)
        bad[-1] ^= 0x40
        view = memoryview(bad)
        assert binding.aead_open_into(key, nonce, view[:n], view[n:], b"ad", view[:n]) is False
        assert bytes(bad[:-16]) == sealed[:-16]
        wrong_ad = bytearray(sealed)
        with pytest.raises(errors.InvalidTag):
            c.aead_decrypt_into(key, nonce, wrong_ad, b"ax", memoryview(wrong_ad)[:n])
        assert bytes(wrong_ad) == sealed


def test_binding_checks_lengths(binding):
    # The interface checks first; the binding checks again so a direct call cannot overrun.
    with pytest.raises(ValueError):
        binding.x25519(bytes(31), bytes(32))
    with pytest.raises(ValueError):
        binding.aead_seal_into(bytes(32), bytes(12), b"abc", b"", bytearray(18))
    with pytest.raises(ValueError):
        binding.aead_open_into(bytes(32), bytes(11), b"abc", bytes(16), b"", bytearray(3))
    with pytest.raises(ValueError):
        binding.ed25519_verify(bytes(32), b"", bytes(63))


def test_chacha20_counter_is_32_bits(binding):
    # RFC 8439 §2.4: a counter of 2^32 - 1 leaves exactly one block; Monocypher alone would
    # carry into the nonce.
    key, nonce = bytes(32), bytes(12)
    out = bytearray(64)
    binding.chacha20_xor(key, nonce, 0xFFFFFFFF, bytes(64), out)
    with pytest.raises(ValueError):
        binding.chacha20_xor(key, nonce, 0xFFFFFFFF, bytes(65), bytearray(65))
    with pytest.raises(ValueError):
        binding.chacha20_xor(key, nonce, 1 << 32, bytes(1), bytearray(1))


def test_sha512_hasher_digest_keeps_state(binding):
    h = binding.sha512_hasher(b"ab")
    assert h.digest() == hashlib.sha512(b"ab").digest()
    h.update(memoryview(b"xcx")[1:2])
    assert h.digest() == h.digest() == hashlib.sha512(b"abc").digest()


def test_interface_errors(c):
    with pytest.raises(errors.WeakSharedSecret):
        c.x25519(bytes(range(32)), bytes(32))
    with pytest.raises(errors.InvalidTag):
        c.aead_decrypt(bytes(32), bytes(12), bytes(20))
    with pytest.raises(errors.InvalidSignature):
        c.ed25519_verify(c.ed25519_public_key(bytes(32)), b"m", bytes(64))


def _point(scalar: int) -> bytes:
    return nacl.bindings.crypto_scalarmult_ed25519_base_noclamp(scalar.to_bytes(32, "little"))


def _challenge(r: bytes, a: bytes, msg: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + msg).digest(), "little") % L


def _cofactor_cases(rng: random.Random) -> list[dict]:
    """Signatures that a cofactored verifier ([8]([S]B - [k]A - R) = 0, Monocypher's own
    crypto_eddsa_check) accepts but RFC 8032 §5.1.7 cofactorless verification, our contract
    (docs/decisions.md D4), accepts only when the torsion part cancels: mixed-order A (valid
    iff 8 divides k), small-order A, small-order R. Expected results follow from the algebra."""
    recs = []
    for i in range(6):
        a, r, msg = rng.randrange(1, L), rng.randrange(1, L), rng.randbytes(12)
        for name, public, big_r, secret in (
            ("mixed_order_A", nacl.bindings.crypto_core_ed25519_add(_point(a), ORDER8), _point(r), a),
            ("order8_A", ORDER8, _point(r), 0),
        ):
            k = _challenge(big_r, public, msg)
            s = (r + k * secret) % L  # [S]B - [k]A = R - [k]T
            recs.append({"id": "%s%d" % (name, i), "public": public, "msg": msg,
                         "sig": big_r + s.to_bytes(32, "little"), "result": "valid" if k % 8 == 0 else "invalid"})
        public = _point(a)
        k = _challenge(ORDER8, public, msg)
        recs.append({"id": "order8_R%d" % i, "public": public, "msg": msg,
                     "sig": ORDER8 + (k * a % L).to_bytes(32, "little"), "result": "invalid"})
    return recs


@pytest.fixture(scope="module")
def cofactor_vectors(tmp_path_factory) -> Path:
    recs = _cofactor_cases(random.Random("cofactor"))
    host = crypto.load("host")  # OpenSSL agrees with the algebra
    for rec in recs:
        try:
            host.ed25519_verify(rec["public"], rec["msg"], rec["sig"])
            assert rec["result"] == "valid", rec["id"]
        except errors.InvalidSignature:
            assert rec["result"] == "invalid", rec["id"]
    path = tmp_path_factory.mktemp("cofactor") / "ed25519_cofactor.txt"
    write(path, "Ed25519 torsion cases, tests/cmodule/test_cmodule.py", recs)
    return path


@pytest.mark.parametrize("runtime,backend", BACKENDS, ids=["%s-%s" % b for b in BACKENDS])
def test_cofactorless_on_every_backend(micropython, cmodule, cofactor_vectors, runtime, backend):  # noqa: F811
    print(run_suite(micropython, runtime, backend, "ed25519_verify", cofactor_vectors))


def _run_script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BUILD_SCRIPT), *args], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, **env), timeout=120)


def test_build_refuses_a_tampered_sdist(tmp_path):
    sdist = tmp_path / "pymonocypher.tar.gz"
    sdist.write_bytes(b"not the pinned file")
    proc = _run_script("--fetch-only", E2EE_BUILD_DIR=str(tmp_path / "build"), E2EE_MONOCYPHER_SDIST=str(sdist))
    assert proc.returncode == 1
    assert "expected the pinned" in proc.stderr and "refusing" in proc.stderr


def test_build_without_pypi_fails_with_the_reason(tmp_path):
    proc = _run_script("--fetch-only", E2EE_BUILD_DIR=str(tmp_path / "build"),
                       https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    assert proc.returncode == 1
    assert "cannot download pymonocypher" in proc.stderr and "E2EE_MONOCYPHER_SDIST" in proc.stderr


def test_unbuilt_library_means_backend_unavailable(tmp_path):
    code = ("from e2ee import crypto\n"
            "try:\n    crypto.load('c')\nexcept crypto.BackendUnavailable as e:\n    print('unavailable', e)\n"
            "try:\n    import e2ee_host.cmodule\nexcept ImportError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, E2EE_CMODULE_LIB=str(tmp_path / "missing.so")), check=True)
    assert "unavailable" in proc.stdout and "run scripts/build-cmodule" in proc.stdout
