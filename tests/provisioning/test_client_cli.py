"""The host SDK client (e2ee_host.client) and the operator CLI (e2ee_host.cli) against the
service running under uvicorn, both engines."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from service_support import OPERATOR_KEY

from e2ee.protocol import certificate
from e2ee.protocol.keys import KeyStore
from e2ee_host import cli
from e2ee_host.client import ApiError, DeviceClient, OperatorClient


def _cli(server, capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = cli.main(["--url", server.url, "--api-key", OPERATOR_KEY, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_client_enrolls_uploads_fetches_and_revokes(live_server) -> None:  # type: ignore[no-untyped-def]
    with OperatorClient(live_server.url, OPERATOR_KEY) as op:
        pinned = op.ca_keys()
        token = op.create_claims("plant-north", owner="acme", roles=["meters"]).tokens[0]
        meter = DeviceClient(live_server.url, "meter-1", "plant-north", KeyStore.generate(5))
        enrolled = meter.enroll(token, trusted_keys=pinned)
        assert enrolled.cert.device_id == "meter-1" and enrolled.cert.roles == ("meters",)
        assert "password" not in repr(enrolled)
        assert meter.upload_prekeys()["one_time_prekeys"] == 5
        assert meter.upload_prekeys(signed_prekey=False, one_time=3)["one_time_prekeys"] == 8
        gateway = DeviceClient(live_server.url, "gw-1", "plant-north", KeyStore.generate())
        gateway.enroll(op.create_claims("plant-north").tokens[0], trusted_keys=pinned)
        bundle = gateway.bundle("meter-1")
        assert bundle.ik_pub == meter.keystore.ik_pub and bundle.opk_id is not None
        assert op.bundle("meter-1").opk_id != bundle.opk_id
        assert meter.inventory()["one_time_prekeys"] == 6
        assert gateway.certificate_status(enrolled.cert.serial.hex())["status"] == "good"
        with pytest.raises(ApiError) as e:
            meter.enroll(token)  # single-use claim spent
        assert e.value.status == 403 and "used up" in e.value.detail
        op.revoke("meter-1", "retired")
        info = op.revocation_list(pinned, last_version=1)
        assert info.crl.version == 2 and info.crl.is_revoked(enrolled.cert.serial)
        with pytest.raises(certificate.RolledBack):
            op.revocation_list(pinned, last_version=2)
        with pytest.raises(ApiError) as e:
            gateway.bundle("meter-1")
        assert e.value.status == 410
        assert [d["device_id"] for d in op.list_devices(owner="acme")] == ["meter-1"]
    with pytest.raises(ApiError) as e:
        OperatorClient(live_server.url, "wrong-key").list_devices()
    assert e.value.status == 403
    with pytest.raises(ApiError) as e:
        OperatorClient("http://127.0.0.1:9", OPERATOR_KEY, timeout=2).list_devices()
    assert e.value.status == 0 and "unreachable" in e.value.detail


def test_operator_cli(live_server, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = _cli(live_server, capsys, "claims", "create", "--fleet", "plant-north", "--count", "2",
                        "--owner", "acme", "--role", "pumps")
    assert code == 0 and "created 2 claim(s)" in out
    tokens = out.strip().splitlines()[-2:]
    pump = DeviceClient(live_server.url, "pump-1", "plant-north", KeyStore.generate(2))
    serial = pump.enroll(tokens[0]).cert.serial.hex()
    code, out, _ = _cli(live_server, capsys, "claims", "list")
    assert code == 0 and "1/1" in out and "0/1" in out
    assert "used up" in out and "active" in out and "revoked" not in out.splitlines()[1]
    # the unused claim is revoked: listed as such, and the board holding it cannot enroll
    unused = [c["id"] for c in OperatorClient(live_server.url, OPERATOR_KEY).list_claims() if c["used"] == 0][0]
    code, out, _ = _cli(live_server, capsys, "claims", "revoke", str(unused), "--reason", "leaked")
    assert code == 0 and "claim %d of fleet plant-north revoked" % unused in out
    code, out, _ = _cli(live_server, capsys, "claims", "list")
    row = [line for line in out.splitlines() if line.startswith(str(unused) + " ")][0]
    assert "revoked" in row.split() and "0/1" in row
    code, out, _ = _cli(live_server, capsys, "--json", "claims", "list")
    assert [c["revoke_reason"] for c in json.loads(out)] == ["", "leaked"]
    with pytest.raises(ApiError) as e:
        DeviceClient(live_server.url, "pump-2", "plant-north", KeyStore.generate(2)).enroll(tokens[1])
    assert e.value.status == 403 and "revoked" in e.value.detail
    code, out, err = _cli(live_server, capsys, "claims", "revoke", "999")
    assert code == 1 and "404" in err
    code, out, _ = _cli(live_server, capsys, "devices", "list", "--owner", "acme")
    assert code == 0 and "pump-1" in out and "active" in out
    code, out, _ = _cli(live_server, capsys, "devices", "show", "pump-1")
    assert code == 0 and serial in out and "pumps" in out and pump.keystore.fingerprint().hex() in out
    code, out, _ = _cli(live_server, capsys, "--json", "devices", "show", "pump-1")
    assert json.loads(out)["certificate_serial"] == serial
    code, out, _ = _cli(live_server, capsys, "cert", "status", serial)
    assert code == 0 and "good" in out
    code, out, _ = _cli(live_server, capsys, "devices", "revoke", "pump-1", "--reason", "lost")
    assert code == 0 and "revocation list version 2" in out
    code, out, _ = _cli(live_server, capsys, "crl", "show")
    assert code == 0 and "version 2" in out and serial in out
    code, out, _ = _cli(live_server, capsys, "--json", "crl", "show")
    assert json.loads(out)["revoked_serials"] == [serial]
    code, out, err = _cli(live_server, capsys, "devices", "revoke", "pump-1")
    assert code == 1 and "already revoked" in err
    code, out, err = _cli(live_server, capsys, "devices", "show", "nope")
    assert code == 1 and "404" in err
    code, out, _ = _cli(live_server, capsys, "devices", "clear-lock", "pump-1")
    assert code == 0 and "cleared" in out


def test_crl_show_with_pinned_keys_refuses_another_ca(live_server, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pinned = tmp_path / "ca.txt"
    pinned.write_text("# a CA this service does not use\n" + "11" * 32 + "\n")
    code, _, err = _cli(live_server, capsys, "crl", "show", "--ca-keys", str(pinned))
    assert code == 2 and "UnknownIssuer" in err
    with OperatorClient(live_server.url, OPERATOR_KEY) as op:
        pinned.write_text("\n".join(k.hex() for k in op.ca_keys()))
    code, out, _ = _cli(live_server, capsys, "crl", "show", "--ca-keys", str(pinned))
    assert code == 0 and "pinned" in out


def test_e2ee_command_is_installed(live_server) -> None:  # type: ignore[no-untyped-def]
    exe = os.path.join(os.path.dirname(sys.executable), "e2ee")
    env = dict(os.environ, E2EE_URL=live_server.url, E2EE_API_KEY=OPERATOR_KEY)
    proc = subprocess.run([exe, "devices", "list"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("device")
    env.pop("E2EE_API_KEY")
    proc = subprocess.run([exe, "devices", "list"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "API key" in proc.stderr
