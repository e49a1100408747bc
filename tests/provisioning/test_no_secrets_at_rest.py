"""After a full scenario against the service process (enrollments with hardware evidence, prekey
uploads, bundle fetches, sessions and messages between the devices, a registration lock and a
re-registration, a revocation), the whole database and the service's log hold no private key,
no claim token or PIN in clear and no message plaintext, in any encoding. Both engines."""
from __future__ import annotations

import base64
import sqlite3
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from service_support import OPERATOR_KEY

from e2ee.protocol.keys import KeyStore
from e2ee.protocol.session import SessionManager
from e2ee_host.client import DeviceClient, OperatorClient
from e2ee_host.fleet_ca import FileCAKeystore
from e2ee_host.service import ServiceProcess

MARKER = b"PLAINTEXT-MARKER-7c1e-valve-open"
FACTORY_KEY = bytes(range(100, 132))
PIN = "8842-1177"


class RecordingRng:
    """os.urandom that remembers every 32-byte output: the private keys and seeds it made."""

    def __init__(self) -> None:
        self.secrets: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        import os
        out = os.urandom(n)
        if n == 32:
            self.secrets.append(out)
        return out


def _forms(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret),
            base64.urlsafe_b64encode(secret).rstrip(b"=")]


def _scenario(url: str, rng: RecordingRng, tmp_path: Path) -> list[bytes]:
    """Runs everything; returns the clear-text secrets that must not be found."""
    from e2ee.protocol import enrollment
    needles = [MARKER, PIN.encode()]
    with OperatorClient(url, OPERATOR_KEY) as op:
        claims = op.create_claims("plant-north", count=3, owner="acme", require_hardware=False)
        needles += [t.encode() for t in claims.tokens]
        devices = []
        for i, token in enumerate(claims.tokens):
            ks = KeyStore.generate(4, rng)
            dev = DeviceClient(url, "node-%d" % i, "plant-north", ks)
            uid = bytes([i + 1]) * 8
            board_key = enrollment.board_key(FACTORY_KEY, uid)
            needles.append(board_key)
            dev.enroll(token, board_uid=uid, board_key=board_key)
            dev.upload_prekeys()
            devices.append(dev)
        a, b = devices[0], devices[1]
        sa = SessionManager(str(tmp_path / "a"), rng(32), a.keystore, rng)
        sb = SessionManager(str(tmp_path / "b"), rng(32), b.keystore, rng)
        sa.start("node-1", a.bundle("node-1"))
        for n in range(3):
            assert sb.decrypt("node-0", sa.encrypt("node-1", MARKER + b" %d" % n)) == MARKER + b" %d" % n
        b.set_registration_lock(PIN)
        # node-1 is reflashed with new keys and re-registers with its owner's claim and its PIN
        token = op.create_claims("plant-north", owner="acme").tokens[0]
        needles.append(token.encode())
        fresh = DeviceClient(url, "node-1", "plant-north", KeyStore.generate(2, rng))
        fresh.enroll(token, registration_lock_pin=PIN, board_uid=b"\x02" * 8,
                     board_key=enrollment.board_key(FACTORY_KEY, b"\x02" * 8))
        fresh.upload_prekeys()
        op.revoke("node-2", "scenario")
        assert op.revocation_list(op.ca_keys(), 1).crl.count == 2  # node-2's and node-1's old certificate
    return needles


def _dump_sqlite(path: Path) -> bytes:
    raw = b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))
    conn = sqlite3.connect(path)
    try:
        text = "\n".join(conn.iterdump()).encode()
    finally:
        conn.close()
    return raw + b"\n" + text


def _dump_postgres(url: str) -> bytes:
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    proc = subprocess.run(["pg_dump", "--no-owner", "--inserts", plain], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_database_and_log_hold_no_secret(engine, tmp_path, request) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "data"
    settings = {"data_dir": data_dir, "operator_api_key": OPERATOR_KEY, "factory_keys": FACTORY_KEY.hex(),
                "environment": "development"}
    if engine == "postgresql":
        url = request.getfixturevalue("database_url_postgres")
        settings["database_url"] = url
    log = tmp_path / "service.log"
    rng = RecordingRng()
    with ServiceProcess(log, log_level="debug", **settings) as service:
        needles = _scenario(service.url, rng, tmp_path)
    dump = _dump_postgres(url) if engine == "postgresql" else _dump_sqlite(data_dir / "provisioning.db")
    logged = log.read_bytes()
    # the scenario really ran and was logged
    assert b"enrolled node-0" in logged and b"revoked node-2" in logged and b"POST /enroll" in logged
    assert dump.count(b"node-") >= 3
    ca = FileCAKeystore(data_dir / "fleet-ca.json")
    ca_private = [p.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption()) for _, p in ca._load()]
    assert len(rng.secrets) > 20 and ca_private
    for secret in [*rng.secrets, *ca_private, *needles]:
        for form in _forms(secret):
            assert form not in dump, "a secret is in the %s database dump" % engine
            assert form not in logged, "a secret is in the service log"
