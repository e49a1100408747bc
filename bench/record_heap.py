"""Session-record heap benchmark (not a test): what saving and loading a session record costs the
MicroPython heap as the receiving chain's skipped message keys grow the record towards MAX_RECORD
(docs/protocol.md §3, §5, §6).

    scripts/bench-record-heap [--no-write] [--firmware DIR] [--quick]

CPython (this file as `python -m bench.record_heap`) prepares the flash of a responder device
"bob" with an established session and the envelopes its peer sent, then runs this same file under
the MicroPython unix port with the SDK compiled to .mpy. Bob decrypts the messages (receiving only
every 33rd, so each one skips MAX_SKIP keys), then encrypts a reply, then reboots (reopens) and
encrypts again: every step loads and saves the encrypted session record. Figures:
- per skipped-key count: record size, heap bytes allocated by one decrypt (load + ratchet + save,
  collector off) and by one encrypt, and the largest free block the sequence needs: the heap is
  cut into holes of a given size (try-allocate probes and `id()` addresses) before bob's steps,
  bisected to the smallest hole size that still works;
- the smallest `-X heapsize` at which the whole sequence, up to the largest record, still runs.
--firmware measures another copy of firmware/ (e.g. the code before a change).
"""
import gc
import os
import sys

KEY = bytes(range(32))
PEER = "alice"


# ---- device side (MicroPython; also runs on CPython for a smoke check) -------------------------

def _envelopes(path):
    out = []
    with open(path, "rb") as f:
        while True:
            head = f.read(2)
            if len(head) < 2:
                return out
            out.append(f.read(head[0] << 8 | head[1]))


def _largest_free():
    # The largest bytearray that can be allocated now (try-allocate probes, bisected).
    gc.collect()
    lo, hi = 0, gc.mem_free()
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            b = bytearray(mid)
            b = None  # noqa: F841
            lo = mid
        except MemoryError:
            hi = mid - 1
    return lo


def _mem_alloc():
    return gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0


def _step(name, fn, record_path, profile):
    if profile:
        gc.collect()
        gc.disable()
        before = _mem_alloc()
        fn()
        used = _mem_alloc() - before
        gc.enable()
        gc.collect()
        print("step", name, os.stat(record_path)[6] - 29, used, _mem_alloc())
    else:
        fn()


# mode: profile (bytes per step, collector off during each), holes <bytes>, or run.
def device_main(root, mode, arg=0):
    gc.collect()
    base = _mem_alloc()
    from e2ee.protocol.session import SessionManager

    gc.collect()
    print("import", _mem_alloc() - base)
    profile = mode == "profile"
    keep = None
    if mode == "holes":
        from heapcut import fragment  # tests/device/heapcut.py
        keep = fragment(int(arg))
    if keep is not None:
        print("largest_free", _largest_free())
    bob = [SessionManager.open(root + "/bob", KEY)]
    record = root + "/bob/sessions/" + PEER
    envs = _envelopes(root + "/to_bob")
    for i in range(len(envs)):
        _step("decrypt%d" % i, lambda: bob[0].decrypt(PEER, envs[i]), record, profile)
    _step("encrypt", lambda: bob[0].encrypt(PEER, b"reply"), record, profile)

    def reboot():
        bob[0] = SessionManager.open(root + "/bob", KEY)
        bob[0].encrypt(PEER, b"after reboot")

    _step("reboot_encrypt", reboot, record, profile)
    print("ok")


# ---- host side (CPython) -----------------------------------------------------------------------

def _prepare(firmware, root, skipped):
    # Bob answers alice's session; alice then sends MAX_SKIP + 1 messages per burst of which bob
    # receives the last, so each received message skips MAX_SKIP keys (the last burst fewer).
    import subprocess
    code = (
        "import sys\n"
        "from e2ee.protocol.session import SessionManager\n"
        "from e2ee.protocol.ratchet import MAX_SKIP\n"
        "root, skipped = sys.argv[1], int(sys.argv[2])\n"
        "key = bytes(range(32))\n"
        "alice = SessionManager.create(root + '/alice', key, one_time=1)\n"
        "bob = SessionManager.create(root + '/bob', key, one_time=1)\n"
        "alice.start('bob', bob.bundle(bob.keystore.one_time_prekey_ids()[0]))\n"
        "bob.decrypt('alice', alice.encrypt('bob', b'hello'))\n"
        "alice.decrypt('bob', bob.encrypt('alice', b'hi'))\n"
        "out = []\n"
        "while skipped > 0:\n"
        "    burst = min(skipped, MAX_SKIP)\n"
        "    envs = [alice.encrypt('bob', b'reading %d' % i) for i in range(burst + 1)]\n"
        "    out.append(envs[-1])\n"
        "    skipped -= burst\n"
        "out.append(alice.encrypt('bob', b'in order'))\n"
        "with open(root + '/to_bob', 'wb') as f:\n"
        "    for e in out:\n"
        "        f.write(len(e).to_bytes(2, 'big') + e)\n"
    )
    subprocess.run([sys.executable, "-c", code, root, str(skipped)], check=True,
                   env=dict(os.environ, PYTHONPATH=str(firmware)))


def host_main():
    import argparse
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from bench.crypto import ROOT, write_doc
    from e2ee_host import micropython as e2ee_micropython

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--firmware", default=str(ROOT / "firmware"), help="firmware/ copy to measure")
    parser.add_argument("--quick", action="store_true", help="only the largest record")
    args = parser.parse_args()
    firmware = Path(args.firmware).resolve()
    scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None
    binary = e2ee_micropython.binary()
    counts = [64] if args.quick else [0, 16, 32, 48, 64]

    with tempfile.TemporaryDirectory() as sdk_dir, tempfile.TemporaryDirectory(dir=scratch) as work:
        sdk = Path(sdk_dir)
        e2ee_micropython.compile_sdk(sdk, e2ee_micropython.native_arch(binary), source=firmware)
        fixtures = {}
        for n in counts:
            fixtures[n] = os.path.join(work, "fixture-%d" % n)
            _prepare(firmware, fixtures[n], n)

        def run(n, heap, *mode):
            trial = os.path.join(work, "trial")
            shutil.rmtree(trial, ignore_errors=True)
            shutil.copytree(fixtures[n], trial)
            proc = subprocess.run([binary, "-X", "heapsize=" + heap, str(ROOT / "bench/record_heap.py"), trial]
                                  + list(mode), capture_output=True, text=True, cwd=ROOT,
                                  env=e2ee_micropython.device_env(sdk, ROOT / "tests" / "device"), timeout=600)
            return proc.returncode == 0 and proc.stdout.rstrip().endswith("ok"), proc.stdout + proc.stderr

        def bisect(lo, hi, works, step):
            # Smallest value in (lo, hi] for which works() holds (works(hi) must hold).
            while hi - lo > step:
                mid = (lo + hi) // 2 // step * step
                if mid <= lo:
                    break
                if works(mid):
                    hi = mid
                else:
                    lo = mid
            return hi

        rows = []
        for n in counts:
            ok, out = run(n, "2M", "profile")
            if not ok:
                raise SystemExit("profile run failed for %d skipped keys:\n%s" % (n, out))
            steps = [line.split() for line in out.splitlines() if line.startswith("step ")]
            decrypts = [s for s in steps if s[1].startswith("decrypt")]
            record = max(int(s[2]) for s in steps)
            decrypt_alloc = max(int(s[3]) for s in decrypts)
            encrypt_alloc = int([s for s in steps if s[1] == "encrypt"][0][3])
            largest = {}

            def holes_work(size):
                ok, out = run(n, "2M", "holes", str(size))
                for line in out.splitlines():
                    if line.startswith("largest_free"):
                        largest[size] = int(line.split()[1])
                return ok

            hole = bisect(0, 16384, holes_work, 32)
            rows.append((n, record, decrypt_alloc, encrypt_alloc, largest.get(hole, hole)))
            print(rows[-1], flush=True)
        n_max = counts[-1]
        heap_k = bisect(100, 1024, lambda k: run(n_max, "%dK" % k, "run")[0], 1)

    lines = ["| skipped keys | record bytes | heap bytes per decrypt | heap bytes per encrypt "
             "| largest free block needed |", "| ---: | ---: | ---: | ---: | ---: |"]
    for n, record, dec, enc, hole in rows:
        lines.append("| %d | %d | %d | %d | %d |" % (n, record, dec, enc, hole))
    notes = [
        "Smallest heap (`-X heapsize`, SDK as .mpy, unix port x64) that runs bob's whole sequence up to the "
        "%d-skipped-key record: %d KB." % (n_max, heap_k),
        "Bob (responder) receives every 33rd message, so each decrypt skips MAX_SKIP keys, then encrypts a reply "
        "and reboots; each step loads and saves the encrypted record. Bytes per step with the collector off "
        "(the largest decrypt); \"largest free block needed\": the heap is cut into free runs of at most that "
        "many bytes (the largest one a try-allocate probe finds) before bob's steps, bisected to the smallest "
        "that still runs them all.",
        "x64 port: GC blocks of 32 bytes and 8-byte words, so object headers cost about twice what they cost "
        "on a 32-bit board.",
    ]
    table = "\n".join(lines)
    print(table)
    print("\n".join(notes))
    if not args.no_write:
        write_doc("record-heap", table, notes, reproduce="scripts/bench-record-heap")
    return 0


if __name__ == "__main__":
    if sys.implementation.name == "micropython":
        device_main(*sys.argv[1:])
    else:
        raise SystemExit(host_main())
