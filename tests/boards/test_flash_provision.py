"""`e2ee flash` and `e2ee provision` against a virtual board (MicroPython unix port behind a pty,
ESP32 profile), driven through mpremote exactly like a board on a serial port, with the
provisioning service running as a process: the board makes its keys, the service certifies them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2ee_host.board_link import BoardLink
from e2ee_host.client import OperatorClient
from e2ee_host.service import ServiceProcess
from e2ee_host.virtual_board import VirtualBoard

E2EE = str(Path(sys.executable).parent / "e2ee")
OPERATOR_KEY = "boards-test-operator-key-5d1c"
FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
APP = FIRMWARE / "examples" / "session_demo.py"


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[ServiceProcess]:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("service")
    with ServiceProcess(d / "service.log", data_dir=d / "data", operator_api_key=OPERATOR_KEY) as s:
        yield s


@pytest.fixture
def board(tmp_path) -> Iterator[VirtualBoard]:  # type: ignore[no-untyped-def]
    with VirtualBoard(tmp_path / "flash", "esp32") as b:
        yield b


def e2ee(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([E2EE, *args], capture_output=True, text=True, timeout=timeout)


def _claim(service: ServiceProcess, **kw: object) -> str:
    with OperatorClient(service.url, OPERATOR_KEY) as op:
        return op.create_claims("plant-north", **kw).tokens[0]  # type: ignore[arg-type]


def test_flash_then_provision_a_virtual_board(service, board) -> None:  # type: ignore[no-untyped-def]
    r = e2ee("flash", "--port", board.port, "--app", str(APP))
    assert r.returncode == 0, r.stderr
    assert "flashed" in r.stdout and "lib/e2ee/protocol/keys.mpy" in r.stderr  # progress lines
    assert (board.flash / "main.py").read_bytes() == APP.read_bytes()
    assert (board.flash / "lib" / "e2ee" / "crypto" / "__init__.mpy").is_file()
    # the image holds no host-only module and, of the crypto backends, only the one the board runs
    # (the virtual ESP32 loads native code: viper; no C module in its firmware)
    flashed = {p.relative_to(board.flash / "lib").as_posix() for p in (board.flash / "lib").rglob("*.mpy")}
    assert "viper crypto" in r.stdout
    assert "e2ee/crypto/_host.mpy" not in flashed
    assert not {f for f in flashed if f.startswith("e2ee/crypto/_pure/")}
    assert "e2ee/crypto/_viper/ed25519.mpy" in flashed
    assert flashed == {f.relative_to(FIRMWARE).with_suffix(".mpy").as_posix() for f in (FIRMWARE / "e2ee").rglob("*.py")
                       if "_pure" not in f.parts and f.name != "_host.py"}

    r = e2ee("--url", service.url, "--json", "provision", "--port", board.port, "--claim", _claim(service),
             "--device-id", "pump-7", "--fleet", "plant-north", "--one-time", "12")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["device_id"] == "pump-7" and done["one_time_prekeys"] == 12
    with OperatorClient(service.url, OPERATOR_KEY) as op:
        info = op.device("pump-7")
        assert info["fingerprint"] == done["fingerprint"] and info["certificate_serial"] == done["serial"]
        assert op.inventory("pump-7")["one_time_prekeys"] == 12
        bundle = op.bundle("pump-7")
    # the keys were made on the board and stay there: the flash holds them only encrypted
    flash_bytes = b"".join(p.read_bytes() for p in board.flash.rglob("*") if p.is_file())
    assert bundle.ik_pub not in flash_bytes and bundle.spk_pub not in flash_bytes

    # a power cut, a reboot: still enrolled from the flash
    board.power_cut()
    board.boot()
    with BoardLink(board.port) as link:
        status = link.call("__import__('e2ee.provision').provision.status()")
    assert status == {"identity": True, "enrolled": True, "device_id": "pump-7", "fingerprint": done["fingerprint"]}

    # already enrolled: refused without --force, nothing changed on the board
    r = e2ee("--url", service.url, "provision", "--port", board.port, "--claim", _claim(service),
             "--device-id", "pump-7", "--fleet", "plant-north")
    assert r.returncode == 3 and "already enrolled as pump-7" in r.stderr


def test_provision_errors_are_clear(service, board, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert e2ee("flash", "--port", board.port).returncode == 0
    claim = _claim(service)
    # a spent claim: the service's reason, exit 1
    args = ["--url", service.url, "provision", "--port", board.port, "--claim", claim, "--fleet", "plant-north"]
    assert e2ee(*args, "--device-id", "valve-1").returncode == 0
    r = e2ee(*args, "--device-id", "valve-2", "--force")
    assert r.returncode == 1 and "used up" in r.stderr
    # no board at that port
    r = e2ee("flash", "--port", str(tmp_path / "ttyUSB9"))
    assert r.returncode == 3 and "no board at" in r.stderr
    # the board is off (or busy): no REPL answers
    board.power_cut()
    r = e2ee("flash", "--port", board.port)
    assert r.returncode == 3 and "does not answer" in r.stderr


def test_board_virtual_command(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.Popen([E2EE, "board", "virtual", "--flash", str(tmp_path / "f"), "--profile", "rp2040"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "virtual rp2040 board on /dev/pts/" in line, line
        port = line.split(" on ")[1].split()[0]
        with BoardLink(port) as link:
            assert link.exec("print(6 * 7)").strip() == "42"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "powered off" in out
    assert os.path.isdir(tmp_path / "f")
