"""Board profiles (boards/): freeze manifests name real paths, Wokwi configs parse and wait for the
line the self test prints, and the self test itself passes on the virtual ESP32 board (through
mpremote) and fails when a primitive is wrong."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from e2ee_host.board_link import BoardLink, flash
from e2ee_host.virtual_board import VirtualBoard

ROOT = Path(__file__).resolve().parents[2]
BOARDS = ROOT / "boards"
SELFTEST = ROOT / "firmware" / "examples" / "selftest.py"
PASS_LINE = "E2EE SELFTEST PASS"


def run_manifest(path: Path) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """Executes a freeze manifest with recording stand-ins for MicroPython's manifest functions,
    following include() of local files; returns the calls."""
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def record(name: str):  # type: ignore[no-untyped-def]
        def call(*args: Any, **kw: Any) -> None:
            calls.append((name, args, {**kw, "_dir": path.parent}))
            if name == "include" and not args[0].startswith("$("):
                calls.extend(run_manifest(path.parent / args[0]))
        return call

    env = {n: record(n) for n in ("include", "require", "package", "module", "metadata", "freeze")}
    exec(compile(path.read_text(), str(path), "exec"), env)
    return calls


@pytest.mark.parametrize("board", ["esp32", "rp2040"])
def test_freeze_manifests(board: str) -> None:
    calls = run_manifest(BOARDS / board / "manifest.py")
    assert ("include", ("$(PORT_DIR)/boards/manifest.py",)) in [(c[0], c[1]) for c in calls]
    assert ("require", ("umqtt.simple",)) in [(c[0], c[1]) for c in calls]
    packages = [c for c in calls if c[0] == "package"]
    assert [p[1][0] for p in packages] == ["e2ee"]
    assert (packages[0][2]["_dir"] / packages[0][2]["base_path"] / "e2ee" / "__init__.py").is_file()
    wokwi = run_manifest(BOARDS / board / "manifest_wokwi.py")
    modules = {c[1][0]: c[2]["_dir"] / c[2]["base_path"] / c[1][0] for c in wokwi if c[0] == "module"}
    assert set(modules) == {"selftest.py", "main.py"} and all(p.is_file() for p in modules.values())
    assert modules["selftest.py"].resolve() == SELFTEST


@pytest.mark.parametrize("board,part", [("esp32", "board-esp32-devkit-c-v4"), ("rp2040", "board-pi-pico-w")])
def test_wokwi_configs(board: str, part: str) -> None:
    config = tomllib.loads((BOARDS / board / "wokwi.toml").read_text())["wokwi"]
    assert config["version"] == 1 and config["firmware"].endswith("build/%s/firmware.bin" % board)
    diagram = json.loads((BOARDS / board / "diagram.json").read_text())
    assert [p["type"] for p in diagram["parts"]] == [part]
    assert any("$serialMonitor" in c[1] for c in diagram["connections"])
    assert 'wait-serial: "%s"' % PASS_LINE in (BOARDS / board / "scenario.yaml").read_text()
    assert PASS_LINE in SELFTEST.read_text()


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
