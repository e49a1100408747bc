"""The `e2ee client` commands a host user runs (e2ee_host.install, e2ee_host.cli) against the
service under uvicorn: make an identity, link a second install by its QR payload with the
check code confirmed, list and revoke the owner's devices, back up and restore, and the warning
shown while no backup exists."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from service_support import OPERATOR_KEY

from e2ee_host.client import OperatorClient

E2EE = str(Path(sys.executable).parent / "e2ee")


def run(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([E2EE, "--url", url, "--json", "client", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_client_commands(live_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = live_server.url
    with OperatorClient(url, OPERATOR_KEY) as op:
        owner_claim = op.create_claims("plant-north", owner="acme").tokens[0]
        plain_claim = op.create_claims("plant-north").tokens[0]
    phone, tablet = str(tmp_path / "phone"), str(tmp_path / "tablet")
    # a service without a broker (linking and backup need none): --no-broker (tests/provisioning/test_dev_up.py)
    r = run(url, "init", "--dir", phone, "--device-id", "acme-phone", "--fleet", "plant-north", "--claim", owner_claim,
            "--no-broker")
    assert r.returncode == 0, r.stderr
    assert "WARNING: no backup is set up" in r.stderr
    assert (Path(phone) / "storage.key").stat().st_mode & 0o777 == 0o600
    assert run(url, "init", "--dir", tablet, "--device-id", "acme-tablet", "--fleet", "plant-north",
               "--claim", plain_claim, "--no-broker").returncode == 0
    shown = run(url, "show", "--dir", phone)
    assert json.loads(shown.stdout)["device_id"] == "acme-phone" and "no backup" in shown.stderr

    # the tablet shows its QR; the phone (the owner's primary) approves it; both confirm the code
    new = subprocess.Popen([E2EE, "--url", url, "--json", "client", "link-qr", "--dir", tablet, "--yes",
                            "--png", str(tmp_path / "qr.png")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    payload = ""
    while not payload:
        line = new.stderr.readline()  # type: ignore[union-attr]
        assert line, "link-qr ended early"
        if line.startswith("link payload: "):
            payload = line.split(": ", 1)[1].strip()
    r = run(url, "link-approve", "--dir", phone, "--qr", payload, "--owner", "acme", "--yes")
    assert r.returncode == 0, r.stderr
    approved = json.loads(r.stdout)
    out, err = new.communicate(timeout=60)
    assert new.returncode == 0, err
    assert json.loads(out) == {"linked_to": "acme", "check_code": approved["check_code"]}
    assert (tmp_path / "qr.png").read_bytes()[:4] == b"\x89PNG"
    devices = json.loads(run(url, "owner-devices", "--dir", phone, "--owner", "acme").stdout)
    assert [(d["device_id"], d["primary"]) for d in devices] == [("acme-phone", None), ("acme-tablet", "acme-phone")]

    # backup and restore of the phone
    secret = tmp_path / "passphrase"
    secret.write_text("a long passphrase for the phone\n")
    r = run(url, "backup", "--dir", phone, "--passphrase-file", str(secret))
    assert r.returncode == 0, r.stderr
    assert "no backup" not in run(url, "show", "--dir", phone).stderr
    wrong = tmp_path / "wrong"
    wrong.write_text("not it")
    r = run(url, "restore", "--dir", str(tmp_path / "x"), "--device-id", "acme-phone", "--passphrase-file", str(wrong))
    assert r.returncode == 1 and "wrong passphrase" in r.stderr
    r = run(url, "restore", "--dir", str(tmp_path / "phone2"), "--device-id", "acme-phone",
            "--passphrase-file", str(secret))
    assert r.returncode == 0, r.stderr
    restored = json.loads(run(url, "show", "--dir", str(tmp_path / "phone2")).stdout)
    assert restored["fingerprint"] == json.loads(shown.stdout)["fingerprint"]

    # the phone revokes the tablet
    r = run(url, "revoke-linked", "--dir", phone, "--owner", "acme", "acme-tablet")
    assert r.returncode == 0, r.stderr
    devices = json.loads(run(url, "owner-devices", "--dir", phone, "--owner", "acme").stdout)
    assert [d["device_id"] for d in devices] == ["acme-phone"]
