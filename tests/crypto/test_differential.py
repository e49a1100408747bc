"""Randomized differential tests: inputs drawn at random, expected outputs computed by
`cryptography` (OpenSSL) and cross-checked with `pynacl` (libsodium) and hashlib, then run
through every backend with the same checks as the known-answer suites.

The seed is printed; E2EE_TEST_SEED=<n> replays a run.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import random
from pathlib import Path

import nacl.bindings
import pytest
from cmodule.cmodule_build import cmodule, cmodule_for_backend_c  # noqa: F401 (fixtures, backend "c")
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from test_vectors import BACKENDS, run_suite
from vectorfile import write

SEED = int(os.environ.get("E2EE_TEST_SEED", random.SystemRandom().randrange(2**32)))
CASES = 40  # per primitive and run; each backend sees the same cases
RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def _x25519(rng: random.Random) -> list[dict]:
    recs = []
    for i in range(CASES):
        k, peer = rng.randbytes(32), rng.randbytes(32)
        u = x25519.X25519PrivateKey.from_private_bytes(peer).public_key().public_bytes(*RAW)
        if i % 4 == 0:
            u = rng.randbytes(32)  # arbitrary u, incl. top bit set and non-canonical values
        shared = x25519.X25519PrivateKey.from_private_bytes(k).exchange(
            x25519.X25519PublicKey.from_public_bytes(u))
        assert nacl.bindings.crypto_scalarmult(k, u) == shared
        recs.append({"id": "rand%d" % i, "scalar": k, "u": u, "shared": shared})
    return recs


def _ed25519_sign(rng: random.Random) -> list[dict]:
    recs = []
    for i in range(CASES):
        seed, msg = rng.randbytes(32), rng.randbytes(rng.randrange(0, 300))
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        public, sig = key.public_key().public_bytes(*RAW), key.sign(msg)
        assert nacl.bindings.crypto_sign(msg, seed + public)[:64] == sig
        recs.append({"id": "rand%d" % i, "seed": seed, "public": public, "msg": msg, "sig": sig})
    return recs


def _ed25519_verify(rng: random.Random) -> list[dict]:
    recs = []
    for i in range(CASES):
        seed, msg = rng.randbytes(32), rng.randbytes(rng.randrange(0, 200))
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        public, sig = key.public_key().public_bytes(*RAW), bytearray(key.sign(msg))
        result = "valid"
        if i % 2:
            sig[rng.randrange(64)] ^= 1 << rng.randrange(8)  # tampered signature
            try:
                key.public_key().verify(bytes(sig), msg)
            except Exception:
                result = "invalid"
        recs.append({"id": "rand%d" % i, "public": public, "msg": msg, "sig": bytes(sig), "result": result})
    return recs


def _ed25519_decoding(rng: random.Random) -> list[dict]:
    """RFC 8032 §5.1.3 decoding of the public key A, where OpenSSL is laxer than the RFC.
    With A the identity, (R, S) = ([r]B, r) verifies for any message; the same point under a
    non-canonical encoding (y = p + 1) or with the sign bit on x = 0 must be refused."""
    p = 2**255 - 19
    recs = []
    for i in range(4):
        r = rng.randrange(1, 2**252)
        sig = nacl.bindings.crypto_scalarmult_ed25519_base_noclamp(r.to_bytes(32, "little")) + r.to_bytes(
            32, "little")
        msg = rng.randbytes(20)
        for name, y, result in (("identity", 1, "valid"), ("noncanonical_identity", p + 1, "invalid"),
                                ("x0_sign_bit", 1 | 1 << 255, "invalid"),
                                ("minus1_x0_sign_bit", (p - 1) | 1 << 255, "invalid"),
                                ("y_is_p", p, "invalid")):
            recs.append({"id": "%s%d" % (name, i), "public": y.to_bytes(32, "little"), "msg": msg,
                         "sig": sig, "result": result})
    return recs


def _aead(rng: random.Random) -> list[dict]:
    recs = []
    for i in range(CASES):
        key, nonce = rng.randbytes(32), rng.randbytes(12)
        msg, aad = rng.randbytes(rng.randrange(0, 400)), rng.randbytes(rng.randrange(0, 40))
        sealed = ChaCha20Poly1305(key).encrypt(nonce, msg, aad)
        assert nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(msg, aad, nonce, key) == sealed
        ct, tag, result = sealed[:-16], bytearray(sealed[-16:]), "valid"
        if i % 3 == 2:
            tag[rng.randrange(16)] ^= 1 << rng.randrange(8)
            result = "invalid"
        recs.append({"id": "rand%d" % i, "key": key, "nonce": nonce, "aad": aad, "msg": msg,
                     "ct": ct, "tag": bytes(tag), "result": result})
    return recs


def _hkdf(rng: random.Random) -> list[dict]:
    recs = []
    for i in range(CASES):
        ikm, salt, info = (rng.randbytes(rng.randrange(0, 80)) for _ in range(3))
        length = rng.randrange(1, 300)
        okm = HKDF(hashes.SHA256(), length, salt or None, info).derive(ikm)
        recs.append({"id": "rand%d" % i, "ikm": ikm, "salt": salt, "info": info,
                     "length": length, "okm": okm})
    return recs


def _hmac(rng: random.Random) -> list[dict]:
    recs = []
    for i in range(CASES):
        key, msg = rng.randbytes(rng.randrange(0, 150)), rng.randbytes(rng.randrange(0, 300))
        recs.append({"id": "rand%d" % i, "key": key, "msg": msg,
                     "tag": hmac.digest(key, msg, "sha256")})
    return recs


def _sha512(rng: random.Random) -> list[dict]:
    # Every length around the 112/128-byte padding boundaries, plus random ones.
    lengths = list(range(108, 132)) + [rng.randrange(0, 1200) for _ in range(CASES)]
    return [{"id": "len%d" % n, "msg": (m := rng.randbytes(n)), "md": hashlib.sha512(m).digest()}
            for n in lengths]


GENERATORS = {
    "x25519": _x25519,
    "ed25519_sign": _ed25519_sign,
    "ed25519_verify": _ed25519_verify,
    "ed25519_decoding": _ed25519_decoding,
    "aead": _aead,
    "hkdf": _hkdf,
    "hmac": _hmac,
    "sha512": _sha512,
}


@pytest.fixture(scope="module")
def random_vectors(tmp_path_factory) -> dict[str, Path]:
    print("E2EE_TEST_SEED=%d" % SEED)
    out = tmp_path_factory.mktemp("differential")
    files = {}
    for kind, generate in GENERATORS.items():
        files[kind] = out / ("random_%s.txt" % kind)
        write(files[kind], "randomized, seed %d, expected values from cryptography" % SEED,
              generate(random.Random("%d-%s" % (SEED, kind))))
    return files


@pytest.mark.parametrize("kind", list(GENERATORS))
@pytest.mark.parametrize("runtime,backend", BACKENDS, ids=["%s-%s" % b for b in BACKENDS])
def test_random_against_cryptography(micropython, random_vectors, runtime, backend, kind):
    print("E2EE_TEST_SEED=%d" % SEED)
    check = "ed25519_verify" if kind == "ed25519_decoding" else kind
    print(run_suite(micropython, runtime, backend, check, random_vectors[kind]))
