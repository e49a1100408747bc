"""Size report of the device image (not a test): .mpy bytes per module as mpy-cross compiles them
for ESP32 (xtensawin) and RP2040 (armv6m), and the heap the SDK holds once imported on the virtual
board (unix port, SDK loaded from .mpy) next to what an ESP32 application is left.

    scripts/size-report [--no-write]

The device image is what `e2ee flash` copies to an ESP32 or RP2040 (e2ee_host.micropython.
compile_board_image with the viper backend): the `e2ee` package (firmware/e2ee) without its
CPython-only backend and without the pure backend; host-only code (e2ee_host, the provisioning
service, protobuf) is not in it by construction. Writes the <!-- bench:size -->
block of docs/performance.md.
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

from bench.crypto import ROOT, write_doc
from e2ee_host import micropython as e2ee_micropython
from e2ee_host.virtual_board import BOARD_PROFILES, MPY_SDK_HEAP_KB

ARCHES = ("xtensawin", "armv6m")

# What a device application imports: the crypto suite resolved, the protocol core with delivery,
# the device runtime and its MQTT link, provisioning.
IMPORT_ALL = """
import gc
gc.collect()
before = gc.mem_free()
from e2ee import crypto
crypto.default.resolve()
from e2ee.protocol import session, certificate, enrollment, store, keys, envelope, ratchet, x3dh, delivery
from e2ee import board, device, provision
from e2ee.transport import link, mqtt
gc.collect()
print(before, gc.mem_free())
"""


def mpy_sizes() -> dict[str, dict[str, int]]:
    sizes: dict[str, dict[str, int]] = defaultdict(dict)
    for arch in ARCHES:
        with tempfile.TemporaryDirectory() as d:
            for f in e2ee_micropython.compile_board_image(Path(d), arch, "viper"):
                sizes[f.relative_to(d).as_posix()][arch] = f.stat().st_size
    return dict(sizes)


def pure_backend_bytes() -> int:
    """.mpy bytes of the pure backend package (bytecode: the same for every architecture)."""
    with tempfile.TemporaryDirectory() as d:
        files = e2ee_micropython.compile_board_image(Path(d), None, "pure")
        return sum(f.stat().st_size for f in files if "/_pure/" in f.as_posix())


def heap_after_import(heap_kb: int) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as d:
        e2ee_micropython.compile_board_image(Path(d), e2ee_micropython.native_arch(), "viper")
        out = subprocess.run([e2ee_micropython.binary(), "-X", "heapsize=%dK" % heap_kb, "-c", IMPORT_ALL],
                             capture_output=True, text=True, env=e2ee_micropython.device_env(Path(d)), check=True)
    before, after = (int(x) for x in out.stdout.split())
    return before, after


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    sizes = mpy_sizes()
    lines = ["| module | ESP32 (xtensawin) bytes | RP2040 (armv6m) bytes |", "| --- | ---: | ---: |"]
    for name in sorted(sizes):
        lines.append("| %s | %d | %d |" % (name, sizes[name]["xtensawin"], sizes[name]["armv6m"]))
    totals = {a: sum(s[a] for s in sizes.values()) for a in ARCHES}
    lines.append("| **device image, %d files** | **%d** | **%d** |" % (len(sizes), totals["xtensawin"],
                                                                       totals["armv6m"]))
    budget = int(BOARD_PROFILES["esp32"].heap[:-1])
    before, after = heap_after_import(budget + MPY_SDK_HEAP_KB)
    held = before - after
    notes = [
        "The device image is firmware/e2ee as `e2ee flash` copies it to a board that runs the viper backend: "
        "without e2ee/crypto/_host.py (CPython only) and e2ee/crypto/_pure/ (a port without native code gets "
        "_pure instead of _viper: %d bytes; with the C module built in, neither); host code (e2ee_host, "
        "e2ee_provisioning, protobuf) is never compiled into it." % pure_backend_bytes(),
        "Heap after importing the SDK an application uses (crypto suite resolved, protocol core with delivery, "
        "device runtime, MQTT link, provisioning agent) from .mpy on the virtual ESP32 board (unix port, %dK "
        "heap = the %d KB ESP32 budget + %d KB for .mpy bytecode in RAM): the import holds %d bytes, %d bytes "
        "stay free." % (
            budget + MPY_SDK_HEAP_KB, budget, MPY_SDK_HEAP_KB, held, after),
        "Loaded from .mpy the SDK's code lives in the heap; frozen into the firmware (boards/*/manifest.py) it "
        "stays in flash: the board application's imports (device runtime, certified sessions, delivery, link) then "
        "hold about 82 KB of a 120 KB heap and the running board about 96 KB, leaving the application about 25 KB "
        "(local frozen check, \"Delivery to a board\" below).",
    ]
    table = "\n".join(lines)
    print(table)
    print("\n".join(notes))
    if not args.no_write:
        write_doc("size", table, notes, reproduce="scripts/size-report")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
