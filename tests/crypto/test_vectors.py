"""Known-answer suites (RFC/FIPS files in tests/vectors, Wycheproof from ../shared) through every
crypto backend: MicroPython backends first (real unix-port binary, ESP32 heap), then CPython."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import vector_checks
import wycheproof
from cmodule.cmodule_build import cmodule, cmodule_for_backend_c  # noqa: F401 (fixtures, backend "c")
from support import DEVICE_TESTS, ROOT

from e2ee import crypto

VECTORS = ROOT / "tests" / "vectors"

# Known-answer files of the RFCs and FIPS 180-4 -> check kind (tests/device/vector_checks.py)
RFC_FILES = {
    "rfc7748_x25519.txt": "x25519",
    "rfc8032_ed25519.txt": "ed25519_sign",
    "rfc8439_chacha20poly1305.txt": "aead",
    "rfc8439_chacha20.txt": "chacha20",
    "rfc8439_poly1305.txt": "poly1305",
    "rfc5869_hkdf_sha256.txt": "hkdf",
    "rfc4231_hmac_sha256.txt": "hmac",
    "fips180_sha512.txt": "sha512",
}

# Device code is tested under MicroPython first and CPython second. ("cpython", "c") is the firmware
# C module's core, compiled for the host and loaded over ctypes (tests/cmodule/).
BACKENDS = [("micropython", "viper"), ("micropython", "pure"), ("cpython", "host"), ("cpython", "pure"),
            ("cpython", "c")]
SUITES = ["rfc/" + f for f in RFC_FILES] + ["wycheproof/" + f for f in wycheproof.FILES]

# Every suite runs inside the ESP32 heap (120 KB) except Wycheproof HKDF: its 8160-byte outputs
# (the RFC 5869 maximum) arrive as 16 KB lines of hex that a fragmented 120 KB heap cannot hold
# next to the output. Devices derive at most a few hundred bytes per HKDF call.
HEAP_OVERRIDES = {"wycheproof/hkdf_sha256_test.json": "512K"}


def _suite_file(suite: str, tmp_path: Path) -> tuple[str, Path]:
    source, name = suite.split("/", 1)
    if source == "rfc":
        return RFC_FILES[name], VECTORS / name
    kind, path, _ = wycheproof.convert(name, tmp_path)
    return kind, path


def run_suite(micropython, runtime: str, backend: str, kind: str, path: Path, heapsize: str | None = None) -> str:
    if runtime == "micropython":
        out = micropython.run(DEVICE_TESTS / "run_vectors.py", backend, kind, str(path), heapsize=heapsize)
        assert out.startswith("PASS"), out
        return out
    suite = crypto.load(backend)
    assert set(suite.resolve().values()) == {backend}
    checked, skipped, failures = vector_checks.run(suite, kind, str(path))
    assert checked > 0 and not failures, "%d of %d failed:\n%s" % (
        len(failures), checked, "\n".join(failures[:20]))
    return "PASS %d checked, %d skipped" % (checked, skipped)


@pytest.mark.parametrize("suite", SUITES, ids=[s.rsplit(".", 1)[0] for s in SUITES])
@pytest.mark.parametrize("runtime,backend", BACKENDS, ids=["%s-%s" % b for b in BACKENDS])
def test_known_answers(micropython, runtime, backend, suite, tmp_path):
    kind, path = _suite_file(suite, tmp_path)
    print(run_suite(micropython, runtime, backend, kind, path, HEAP_OVERRIDES.get(suite)))


# Each check must be able to fail: a wrong expected value is reported, not silently passed.
MUTATIONS = {
    "x25519": "shared",
    "ed25519_sign": "sig",
    "ed25519_verify": "result",
    "aead": "ct",
    "hkdf": "okm",
    "hmac": "tag",
    "sha512": "md",
}


@pytest.mark.parametrize("kind", list(MUTATIONS))
def test_checks_report_wrong_answers(kind, tmp_path):
    from test_differential import GENERATORS  # the randomized generators make valid records

    field = MUTATIONS[kind]
    rec = next(r for r in GENERATORS[kind](random.Random(kind)) if r.get("result", "valid") == "valid")
    suite = crypto.load("host")
    assert vector_checks.KINDS[kind](suite, rec) is None
    bad = dict(rec)
    if field == "result":
        bad["result"] = "invalid"
    else:
        value = bytearray(rec[field])
        value[0] ^= 1
        bad[field] = bytes(value)
    assert vector_checks.KINDS[kind](suite, bad) is not None
