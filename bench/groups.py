"""Group benchmark (not a test): a MicroPython device (ESP32 heap, 120 KB) in a 20-member group:
heap held with 19 members' sender chains, time of a group encrypt and decrypt, and the cost of
distributing its own sender key (the application sends it over 19 pairwise sessions).

    scripts/bench-groups [--no-write]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.crypto import ROOT, write_doc
from e2ee.protocol.group import GroupSessions
from e2ee_host import micropython as e2ee_micropython

MEMBERS = 20
GROUP = "line-3"
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None


class Device:
    def __init__(self, sdk: Path, flash: str) -> None:
        self.proc = subprocess.Popen(
            [e2ee_micropython.binary(), "-X", "heapsize=120K", str(ROOT / "tests/device/group_member.py"), flash,
             os.urandom(32).hex(), "board-0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=e2ee_micropython.device_env(sdk), cwd=ROOT)
        assert self.proc.stdout.readline().strip() == "ready"  # type: ignore[union-attr]

    def ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.proc.stdout.readline().strip()  # type: ignore[union-attr]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as sdk_dir, tempfile.TemporaryDirectory(dir=SCRATCH) as flash:
        sdk = Path(sdk_dir)
        e2ee_micropython.compile_sdk(sdk, e2ee_micropython.native_arch())
        dev = Device(sdk, flash)
        base = int(dev.ask("mem").split()[1])
        hosts = [GroupSessions(flash + "/h%d" % i, os.urandom(32), "member-%d" % i) for i in range(MEMBERS - 1)]
        t = time.perf_counter()
        own = bytes.fromhex(dev.ask("create %s" % GROUP).split()[1])
        create_ms = (time.perf_counter() - t) * 1000
        assert dev.ask("members %s %s" % (GROUP, ",".join(h.self_id for h in hosts))) == "ok"
        for h in hosts:
            h.set_members(GROUP, ["board-0"] + [o.self_id for o in hosts])
            h.add_member(GROUP, "board-0", own)
            assert dev.ask("add %s %s %s" % (GROUP, h.self_id, h.create(GROUP).hex())) == "ok"
        held = int(dev.ask("mem").split()[1])
        wires = [(h.self_id, h.encrypt(GROUP, b"sensor reading %d" % i)) for i, h in enumerate(hosts * 3)]
        t = time.perf_counter()
        for sender, wire in wires:
            assert dev.ask("recv %s %s %s" % (GROUP, sender, wire.hex())).startswith("text ")
        decrypt_ms = (time.perf_counter() - t) * 1000 / len(wires)
        t = time.perf_counter()
        for i in range(20):
            dev.ask("send %s reading-%d" % (GROUP, i))
        encrypt_ms = (time.perf_counter() - t) * 1000 / 20
        after = int(dev.ask("mem").split()[1])
        dev.proc.stdin.close()  # type: ignore[union-attr]
        dev.proc.wait(30)
    size = len(own)
    lines = ["| measure | value |", "| --- | ---: |",
             "| heap allocated after import (crypto resolved, group layer) | %d bytes |" % base,
             "| heap allocated with 19 members' chains added | %d bytes (+%d) |" % (held, held - base),
             "| heap allocated after 57 decrypts and 20 encrypts | %d bytes |" % after,
             "| group decrypt (signature verify + AEAD + chain record saved) | %.1f ms |" % decrypt_ms,
             "| group encrypt (sign + AEAD + chain record saved) | %.1f ms |" % encrypt_ms,
             "| new own sender key (create + save) | %.1f ms |" % create_ms,
             "| sender key distribution | %d bytes (sent once per member, pairwise) |" % size]
    notes = ["Device: MicroPython unix port, 120 KB heap, SDK as .mpy, records on tmpfs; times include the "
             "line protocol of tests/device/group_member.py (hex over a pipe), so they are upper bounds.",
             "Member chains live in one encrypted record each on flash: RAM holds only the chain in use, so the "
             "heap does not grow with the group size."]
    table = "\n".join(lines)
    print(table)
    print("\n".join(notes))
    if not args.no_write:
        write_doc("groups", table, notes, reproduce="scripts/bench-groups")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
