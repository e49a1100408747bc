"""Prekeys and X3DH (docs/protocol.md §1-§2): behaviour on both runtimes, device<->host pairs in
both directions, and the published known answers in docs/vectors/x3dh.txt.

`python tests/protocol/test_x3dh.py` rewrites the vector file from a reference computation that
uses `cryptography` and `hashlib` directly (not firmware code); the tests check that the file
still matches it and that the firmware reproduces it on MicroPython and CPython.
"""
from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ROOT = Path(__file__).resolve().parents[2]
DEVICE_TESTS = ROOT / "tests" / "device"
SCRIPT = DEVICE_TESTS / "check_x3dh.py"
VECTORS = ROOT / "docs" / "vectors" / "x3dh.txt"
ENV = {"PYTHONPATH": "%s:%s" % (ROOT / "firmware", DEVICE_TESTS)}
LAST_RESORT = 0xFFFFFFFF


def cpython(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def run(runtime: str, micropython, *args: str) -> str:
    return micropython.run(SCRIPT, *args) if runtime == "micropython" else cpython(*args)


# --- behaviour: device first, then CPython ---

def test_x3dh_micropython(micropython):
    assert micropython.run(SCRIPT).split() == ["ok", "x3dh", "viper"]


def test_x3dh_cpython():
    assert cpython().split() == ["ok", "x3dh", "host"]


def test_limits_and_labels_pinned():
    sys.path.insert(0, str(ROOT / "firmware"))
    from e2ee.protocol import keys, x3dh

    assert keys.MAX_ONE_TIME_PREKEYS == 100
    assert keys.MAX_SIGNED_PREKEYS == 2
    assert keys.LAST_RESORT_ID == LAST_RESORT
    assert keys.FINGERPRINT_SIZE == 16
    assert keys._FINGERPRINT_LABEL == b"e2ee-iot fingerprint v1"
    assert keys._SPK_LABEL == b"e2ee-iot SPK v1"
    assert x3dh._INFO == b"e2ee-iot X3DH v1"
    assert x3dh._SALT == bytes(32)
    assert (x3dh.SK_SIZE, x3dh.AD_SIZE) == (32, 128)


# --- device <-> host, both directions ---

@pytest.mark.parametrize("opk", ["one", "none", "last"])
@pytest.mark.parametrize("initiator,responder", [("micropython", "cpython"), ("cpython", "micropython")])
def test_cross_runtime(micropython, tmp_path, initiator, responder, opk):
    # The responder publishes a bundle and keeps its keystore record; the initiator reads the
    # bundle and writes the prekey message (public data only); the responder answers it.
    d = str(tmp_path)
    assert run(responder, micropython, "publish", d, opk).split() == ["published", opk]
    alice = run(initiator, micropython, "initiate", d).split()
    bob = run(responder, micropython, "respond", d).split()
    assert alice == bob
    assert alice[0].startswith("sk=") and len(alice[0]) == 3 + 64
    assert alice[1].startswith("ad=") and len(alice[1]) == 3 + 256
    # The message names the one-time prekey used (0 when none).
    message = (tmp_path / "message").read_text()
    expect_id = {"none": "00000000", "last": "ffffffff", "one": "00000002"}[opk]
    assert "opk_id=" + expect_id in message


def test_cross_runtime_tampered_message_disagrees(micropython, tmp_path):
    # A flipped bit in the base key of the prekey message: both sides still compute an SK, but
    # not the same one (the AEAD of the first message will then fail).
    d = str(tmp_path)
    cpython("publish", d, "one")
    alice = micropython.run(SCRIPT, "initiate", d).split()
    path = tmp_path / "message"
    text = path.read_text()
    i = text.index("base_key=") + len("base_key=")
    path.write_text(text[:i] + ("1" if text[i] == "0" else "0") + text[i + 1:])
    bob = cpython("respond", d).split()
    assert alice[0] != bob[0] and alice[1] == bob[1]


# --- known answers ---

def test_vectors_micropython(micropython):
    assert micropython.run(SCRIPT, "vectors", str(VECTORS)).split() == ["ok", "vectors", "4"]


def test_vectors_cpython():
    assert cpython("vectors", str(VECTORS)).split() == ["ok", "vectors", "4"]


def test_vector_file_matches_reference():
    assert VECTORS.read_text() == render_vectors()


def test_reference_detects_a_changed_label():
    # The reference itself depends on every §2 input (guards against a vacuous comparison).
    base = reference_record("t", 1, 1)
    assert reference_record("t", 1, 1, info=b"e2ee-iot X3DH v2")["sk"] != base["sk"]
    assert reference_record("t", 1, None)["sk"] != base["sk"]
    assert reference_record("t", 1, 1, spk_label=b"e2ee-iot SPK v2")["spk_sig"] != base["spk_sig"]


def _fixed(name: str, case: str) -> bytes:
    return hashlib.sha256(b"e2ee-iot x3dh vector " + case.encode() + b" " + name.encode()).digest()


def _x_pub(priv: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _dh(priv: bytes, pub: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(priv).exchange(X25519PublicKey.from_public_bytes(pub))


def reference_record(case: str, spk_id: int, opk_id: int | None, *, info: bytes = b"e2ee-iot X3DH v1",
                     spk_label: bytes = b"e2ee-iot SPK v1") -> dict[str, bytes | str]:
    """One vector computed from §1-§2 with `cryptography` primitives, independent of firmware/."""
    k = {n: _fixed(n, case) for n in ("ik_a", "is_a", "ik_b", "is_b", "spk", "opk", "ek")}
    if opk_id is None:
        k["opk"] = b""
    ed_a = Ed25519PrivateKey.from_private_bytes(k["is_a"])
    ed_b = Ed25519PrivateKey.from_private_bytes(k["is_b"])
    raw = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    p = {"ik_a_pub": _x_pub(k["ik_a"]), "is_a_pub": ed_a.public_key().public_bytes(*raw),
         "ik_b_pub": _x_pub(k["ik_b"]), "is_b_pub": ed_b.public_key().public_bytes(*raw),
         "spk_pub": _x_pub(k["spk"]), "ek_pub": _x_pub(k["ek"])}
    p["opk_pub"] = _x_pub(k["opk"]) if opk_id is not None else b""
    sig = ed_b.sign(spk_label + p["ik_b_pub"] + struct.pack(">I", spk_id) + p["spk_pub"])
    bundle = (b"\x21" + p["ik_b_pub"] + p["is_b_pub"] + struct.pack(">I", spk_id) + p["spk_pub"] + sig
              + (struct.pack(">I", opk_id) + p["opk_pub"] if opk_id is not None else b""))
    ikm = b"\xff" * 32 + _dh(k["ik_a"], p["spk_pub"]) + _dh(k["ek"], p["ik_b_pub"]) + _dh(k["ek"], p["spk_pub"])
    if opk_id is not None:
        ikm += _dh(k["ek"], p["opk_pub"])
    sk = HKDF(hashes.SHA256(), 32, bytes(32), info).derive(ikm)
    fp = hashlib.sha512(b"e2ee-iot fingerprint v1" + p["ik_b_pub"] + p["is_b_pub"]).digest()[:16]
    return {"id": case, **k, "spk_id": struct.pack(">I", spk_id),
            "opk_id": struct.pack(">I", opk_id or 0), **p, "spk_sig": sig, "fingerprint_b": fp,
            "bundle": bundle, "sk": sk,
            "ad": p["ik_a_pub"] + p["is_a_pub"] + p["ik_b_pub"] + p["is_b_pub"]}


HEADER = """\
X3DH known answers, e2ee-iot protocol v1 (docs/protocol.md §1-§2). Line format: tests/vectors/README.md.
Generated by tests/protocol/test_x3dh.py (`python tests/protocol/test_x3dh.py` rewrites this file)
with `cryptography` (OpenSSL X25519, Ed25519, HKDF) and hashlib, not with firmware code; checked
by tests/device/check_x3dh.py on MicroPython and CPython.
Fixed private keys: <name> = SHA-256("e2ee-iot x3dh vector " || id || " " || name), for
ik_a, is_a (Alice), ik_b, is_b, spk, opk (Bob), ek (Alice's ephemeral). is_* are Ed25519 seeds.
spk_sig = Ed25519(is_b, "e2ee-iot SPK v1" || ik_b_pub || be32(spk_id) || spk_pub).
bundle = 0x21 || IK || IS || be32(spk_id) || SPK || sig [|| be32(opk_id) || OPK] (keys.PrekeyBundle).
sk = HKDF-SHA256(0xff*32 || DH1 || DH2 || DH3 [|| DH4], salt 0x00*32, "e2ee-iot X3DH v1", 32);
ad = ik_a_pub || is_a_pub || ik_b_pub || is_b_pub. opk_id 00000000 = no one-time prekey.
result=invalid: the bundle with the last signature byte flipped must raise BadSignedPrekey.
Generated by this project, Apache-2.0 like the repository."""


def render_vectors() -> str:
    recs = [reference_record("with-opk", 1, 7), reference_record("without-opk", 2, None),
            reference_record("last-resort", 0x01020304, LAST_RESORT)]
    bad = reference_record("bad-signature", 3, None)
    for rec, result in zip(recs + [bad], ["valid"] * 3 + ["invalid"]):
        rec["result"] = result
    lines = ["# " + line for line in HEADER.splitlines()]
    for rec in recs + [bad]:
        lines.append(" ".join("%s=%s" % (n, v if isinstance(v, str) else v.hex()) for n, v in rec.items()))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(render_vectors())
    print("wrote", VECTORS.relative_to(ROOT))
