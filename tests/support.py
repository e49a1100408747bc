"""Test support shared by every test module: paths and the MicroPython runner."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2ee_host import micropython as e2ee_micropython

ROOT = Path(__file__).resolve().parents[1]
DEVICE_TESTS = ROOT / "tests" / "device"
sys.path.insert(0, str(DEVICE_TESTS))
sys.path.insert(0, str(ROOT / "tests"))

# ESP32 without PSRAM leaves about 120 KB of MicroPython heap: device tests run inside it.
ESP32_HEAP = "120K"


@dataclass
class MicroPython:
    """Runs a script or snippet under `micropython -X heapsize=...` with the SDK on its path.

    The SDK is imported as .mpy compiled by mpy-cross for the binary's architecture, as boards
    run it (E2EE_DEVICE_SOURCE=1 imports firmware/ sources instead, for debugging;
    E2EE_DEVICE_FROZEN=1 the SDK frozen into an E2EE_MICROPYTHON binary, see docs/performance.md).
    A non-zero exit status or a MicroPython traceback fails the calling test with the device's
    own output.
    """

    binary: str
    sdk_dir: Path | None
    heapsize: str = ESP32_HEAP
    timeout: float = 600.0

    def env(self) -> dict[str, str]:
        return e2ee_micropython.device_env(self.sdk_dir, DEVICE_TESTS)

    def run(self, script: Path | str, *args: str, heapsize: str | None = None) -> str:
        cmd = [self.binary, "-X", "heapsize=" + (heapsize or self.heapsize)]
        cmd += [str(script)] if isinstance(script, Path) else ["-c", script]
        proc = subprocess.run(cmd + list(args), capture_output=True, text=True,
                              env=self.env(), timeout=self.timeout, cwd=ROOT)
        output = proc.stdout + proc.stderr
        if proc.returncode != 0 or "Traceback (most recent call last)" in output:
            pytest.fail("MicroPython (%s) failed with exit %d:\n%s" % (
                " ".join(cmd[1:3]), proc.returncode, output), pytrace=False)
        return proc.stdout


def regenerate_protobuf(proto: Path, out_dir: Path) -> Path:
    """Runs protoc (grpcio-tools, pinned in the dev extra) on proto into out_dir; returns the
    directory holding the fresh e2ee/v1 files, to compare with the checked-in generated code."""
    proc = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "proto"),
                           "--python_out=%s" % out_dir, "--pyi_out=%s" % out_dir, str(proto)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return out_dir / "e2ee" / "v1"


def run_demo(module: str, tmp_path: Path) -> tuple[str, list[str]]:
    """Runs a demo module (`python -m module`) with its temporary directory in tmp_path; asserts
    it exited cleanly, printed "demo finished" last and removed what it made. Returns (output,
    lines)."""
    proc = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, TMPDIR=str(tmp_path)))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    lines = out.splitlines()
    assert lines[-1] == "demo finished", out
    assert list(tmp_path.iterdir()) == [], "the demo left its temporary directory behind"
    return out, lines
