"""Converts Wycheproof JSON (../shared/vectors/wycheproof/) into the project's vector line format.

CI reads the Wycheproof files from ../shared too; E2EE_WYCHEPROOF_DIR overrides the location.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

from vectorfile import write

ROOT = Path(__file__).resolve().parents[1]
WYCHEPROOF_DIR = Path(os.environ.get("E2EE_WYCHEPROOF_DIR", ROOT.parent / "shared/vectors/wycheproof"))


def _x25519(group: dict) -> Iterator[dict]:
    for t in group["tests"]:
        yield {"id": str(t["tcId"]), "scalar": bytes.fromhex(t["private"]),
               "u": bytes.fromhex(t["public"]), "shared": bytes.fromhex(t["shared"]),
               "result": t["result"]}


def _ed25519(group: dict) -> Iterator[dict]:
    public = bytes.fromhex(group["publicKey"]["pk"])
    for t in group["tests"]:
        yield {"id": str(t["tcId"]), "public": public, "msg": bytes.fromhex(t["msg"]),
               "sig": bytes.fromhex(t["sig"]), "result": t["result"]}


def _aead(group: dict) -> Iterator[dict]:
    for t in group["tests"]:
        yield {"id": str(t["tcId"]), "key": bytes.fromhex(t["key"]), "nonce": bytes.fromhex(t["iv"]),
               "aad": bytes.fromhex(t["aad"]), "msg": bytes.fromhex(t["msg"]),
               "ct": bytes.fromhex(t["ct"]), "tag": bytes.fromhex(t["tag"]), "result": t["result"]}


def _hkdf(group: dict) -> Iterator[dict]:
    for t in group["tests"]:
        yield {"id": str(t["tcId"]), "ikm": bytes.fromhex(t["ikm"]), "salt": bytes.fromhex(t["salt"]),
               "info": bytes.fromhex(t["info"]), "length": t["size"],
               "okm": bytes.fromhex(t["okm"]), "result": t["result"]}


def _hmac(group: dict) -> Iterator[dict]:
    for t in group["tests"]:
        yield {"id": str(t["tcId"]), "key": bytes.fromhex(t["key"]), "msg": bytes.fromhex(t["msg"]),
               "tag": bytes.fromhex(t["tag"]), "result": t["result"]}


# Wycheproof file -> (vector kind of tests/device/vector_checks.py, converter of one test group)
FILES: dict[str, tuple[str, Callable[[dict], Iterator[dict]]]] = {
    "x25519_test.json": ("x25519", _x25519),
    "ed25519_test.json": ("ed25519_verify", _ed25519),
    "chacha20_poly1305_test.json": ("aead", _aead),
    "hkdf_sha256_test.json": ("hkdf", _hkdf),
    "hmac_sha256_test.json": ("hmac", _hmac),
}


def convert(name: str, out_dir: Path) -> tuple[str, Path, int]:
    """Writes the Wycheproof file `name` as a vector file in out_dir; returns (kind, path, count)."""
    kind, convert_group = FILES[name]
    data = json.loads((WYCHEPROOF_DIR / name).read_text())
    recs = [rec for group in data["testGroups"] for rec in convert_group(group)]
    out = out_dir / (name.rsplit(".", 1)[0] + ".txt")
    header = "Wycheproof %s (%s), converted at test time by tests/wycheproof.py" % (
        name, data.get("algorithm", ""))
    write(out, header, recs)
    return kind, out, len(recs)
