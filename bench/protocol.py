"""Protocol benchmark (run by scripts/bench after the crypto one): X3DH start and first message,
steady-state session and ratchet encrypt/decrypt of 64 bytes, stored session size, heap held by the
imported stack, and the .mpy size of the protocol core.

Sessions are saved on tmpfs (/dev/shm) so the figures show the protocol's own cost, not this VM's
disk (an ext4 rename over an existing file costs about 6 ms here). MicroPython gets a 256 KB heap:
the whole stack imported from .mpy files holds about 110 KB of it (boards run it frozen in flash).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.crypto import ALLOC_HEAP, ROOT, _fmt_us, micropython, write_doc

from e2ee_host import micropython as e2ee_micropython

HEAP = "256K"
SCRIPT = "bench/device_protocol.py"
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None


def cpython_times() -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        out = subprocess.run([sys.executable, str(ROOT / SCRIPT), "time", d], capture_output=True, text=True,
                             check=True, env={"PYTHONPATH": str(ROOT / "firmware")}).stdout
    return {k: float(v) for k, v in (line.split() for line in out.splitlines())}


def main(sdk: Path, write: bool = True) -> None:
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d1, tempfile.TemporaryDirectory(dir=SCRATCH) as d2:
        times = micropython(sdk, "time", d1, heap=HEAP, script=SCRIPT)
        allocs = micropython(sdk, "alloc", d2, heap=ALLOC_HEAP, script=SCRIPT)
    host = cpython_times()
    session_bytes = times.pop("stored_session_bytes")
    stack = times.pop("imported_stack_heap_bytes")
    for k in ("stored_session_bytes", "imported_stack_heap_bytes"):
        host.pop(k)
    lines = ["| operation | MicroPython µs | MicroPython heap bytes/op | CPython µs |",
             "| --- | ---: | ---: | ---: |"]
    for op, us in times.items():
        heap = "%d" % allocs[op] if op != "first_message_decrypt_as_responder" else "(in the row above)"
        lines.append("| %s | %s | %s | %s |" % (op, _fmt_us(us), heap, _fmt_us(host[op])))
    sizes = {}
    with tempfile.TemporaryDirectory() as d:
        for f in e2ee_micropython.compile_sdk(Path(d), "armv6m"):
            sizes[f.name] = f.stat().st_size if "protocol" in str(f) else None
    core = {k: v for k, v in sizes.items() if v is not None}
    notes = [
        "x3dh_start_and_first_message: X3DH as initiator, the first PreKeyMessage and its encrypted save; "
        "its heap figure covers both sides (initiator start + responder first decrypt).",
        "session_* rows include loading and saving the encrypted session record; ratchet_* rows are the "
        "Double Ratchet alone.",
        "One stored session (the plaintext record before encryption at rest): %d bytes; the file adds 29."
        % session_bytes,
        "Heap held by the imported stack (crypto interface + viper backend + protocol modules as .mpy): "
        "%d bytes of the %s heap." % (stack, HEAP),
        "Protocol core .mpy bytes (armv6m, RP2040): %d in all (%s)." % (
            sum(core.values()), ", ".join("%s %d" % kv for kv in sorted(core.items()))),
    ]
    table = "\n".join(lines)
    print(table)
    print("\n".join(notes))
    if write:
        write_doc("protocol", "Measured %s. Reproduce: `scripts/bench`.\n\n%s" % (time.strftime("%Y-%m-%d"), table),
                  notes)
