"""`e2ee dev up` (e2ee_host.devstack) and `e2ee client init` refusing a service without a broker
(issue 15 item 3): the real `e2ee` command as subprocesses. dev up starts the project's Mosquitto
and the service (SQLite) wired together and prints the exports; with nothing but those, two
installs enroll and exchange a message; Ctrl-C stops both. A service that drives no broker is
refused by `client init` before the claim is used, and nothing is left in the directory."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from e2ee_host.client import OperatorClient
from e2ee_host.service import ServiceProcess, free_port

E2EE = str(Path(sys.executable).parent / "e2ee")
FLEET = "plant-north"


def _e2ee(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("E2EE_", "E2EE_PROV_"))}
    return subprocess.run([E2EE, *args], capture_output=True, text=True, timeout=120, env={**clean, **env})


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_dev_up_wires_broker_and_service_and_stops_at_ctrl_c(tmp_path: Path) -> None:
    port, broker_port = free_port(), free_port()
    dev = subprocess.Popen([E2EE, "dev", "up", "--dir", str(tmp_path / "dev"), "--port", str(port),
                            "--broker-port", str(broker_port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env={k: v for k, v in os.environ.items() if not k.startswith("E2EE_")})
    try:
        assert dev.stdout is not None
        exports = {}
        deadline = time.monotonic() + 60
        while len(exports) < 2 and time.monotonic() < deadline:  # "export NAME=VALUE" lines on stdout
            line = dev.stdout.readline()
            assert line, "dev up ended: %s" % (dev.stderr.read() if dev.stderr else "")
            name, _, value = line.strip().removeprefix("export ").partition("=")
            exports[name] = value
        assert set(exports) == {"E2EE_URL", "E2EE_API_KEY"} and exports["E2EE_URL"] == "http://127.0.0.1:%d" % port
        env_file = (tmp_path / "dev" / "env").read_text()
        assert "export E2EE_API_KEY=" in env_file and (tmp_path / "dev" / "env").stat().st_mode & 0o077 == 0

        # a newcomer with nothing but the exports: a claim each, two installs, a message
        claims = []
        for _ in range(2):
            r = _e2ee(exports, "claims", "create", "--fleet", FLEET)
            assert r.returncode == 0, r.stderr
            claims.append(r.stdout.split()[-1])
        for name, claim in zip(("gw-1", "valve-7"), claims):
            r = _e2ee(exports, "client", "init", "--dir", str(tmp_path / name), "--device-id", name, "--fleet", FLEET,
                      "--claim", claim)
            assert r.returncode == 0, r.stderr
            assert "warning" not in r.stderr.replace("WARNING: no backup", ""), r.stderr  # mailbox opened
        r = _e2ee(exports, "client", "send", "--dir", str(tmp_path / "gw-1"), "valve-7", "open at 07:00")
        assert r.returncode == 0, r.stderr
        r = _e2ee(exports, "client", "receive", "--dir", str(tmp_path / "valve-7"), "--count", "1", "--timeout", "30")
        assert r.returncode == 0 and r.stdout.splitlines() == ["gw-1: open at 07:00"], r.stderr
        assert _listening(port) and _listening(broker_port)
    finally:
        dev.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = dev.communicate(timeout=60)
    assert dev.returncode == 0, err
    assert "e2ee dev up: stopped" in err
    assert not _listening(port) and not _listening(broker_port)


def test_client_init_refuses_a_service_without_a_broker(tmp_path: Path) -> None:
    key = "dev-up-test-operator-key-61f0"
    with ServiceProcess(tmp_path / "service.log", data_dir=tmp_path / "service", operator_api_key=key) as service:
        with OperatorClient(service.url, key) as op:
            claim = op.create_claims(FLEET).tokens[0]
            env = {"E2EE_URL": service.url}
            install = tmp_path / "gw-1"
            r = _e2ee(env, "client", "init", "--dir", str(install), "--device-id", "gw-1", "--fleet", FLEET,
                      "--claim", claim)
            assert r.returncode == 3, r.stderr
            assert "gives no broker credentials" in r.stderr and "e2ee dev up" in r.stderr, r.stderr
            assert not install.exists()  # nothing half-created
            (claim_row,) = op.list_claims(FLEET)
            assert claim_row["used"] == 0  # the claim is still good
            assert op.list_devices(FLEET) == []
            # an existing directory keeps what it held, and no more; a bad claim leaves nothing either
            install.mkdir()
            (install / "notes.txt").write_text("mine")
            r = _e2ee(env, "client", "init", "--dir", str(install), "--device-id", "gw-1", "--fleet", FLEET,
                      "--claim", "e2c_" + "x" * 40, "--no-broker")
            assert r.returncode == 1, r.stderr
            assert sorted(p.name for p in install.iterdir()) == ["notes.txt"]
            # --no-broker: enrolled for linking and backup only, with the same claim
            r = _e2ee(env, "client", "init", "--dir", str(install), "--device-id", "gw-1", "--fleet", FLEET,
                      "--claim", claim, "--no-broker")
            assert r.returncode == 0, r.stderr
            r = _e2ee(env, "client", "send", "--dir", str(install), "valve-7", "hello")
            assert r.returncode == 3 and "no MQTT credentials" in r.stderr, r.stderr
