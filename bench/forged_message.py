"""Forged-message benchmark (not a test): what a RatchetMessage that does not authenticate but
carries a new ratchet key costs a device, in X25519 operations and time (docs/protocol.md §3, §6;
decisions D16).

    scripts/bench-forged-message [--no-write] [--before DIR]

CPython (this file as `python -m bench.forged_message`) runs this same file under the MicroPython
unix port with the SDK compiled to .mpy (viper backend, `-X heapsize=256K` as bench/protocol.py),
then on CPython. The device side forges a message with a ratchet key of its own making against
- one ratchet.Session with a receiving chain (one state tried), and
- a SessionManager record with the current state and MAX_ARCHIVED_STATES archived ones, as the
  peer's messages arrive over the broker (every state tried, the record loaded each time);
counts the X25519 calls (x25519 and x25519_base, wrapped in the crypto interface) of one forged
message and times it (best of 5 batches). --before DIR measures another copy of firmware/ as
well (e.g. the code before a change) and puts it in the table first.
"""
import gc
import sys

KEY = bytes(range(32))
FORGED_CIPHERTEXT = bytes(80)  # 64-byte payload and tag, never authentic


# ---- device side (MicroPython; also CPython) ---------------------------------------------------

# Wraps the crypto interface's X25519 entry points with a shared counter; returns it.
def _count_x25519(crypto):
    count = [0]

    def counted(f):
        def call(*a):
            count[0] += 1
            return f(*a)
        return call

    crypto.x25519, crypto.x25519_base = counted(crypto.x25519), counted(crypto.x25519_base)
    return count


def _forged_ops(root):
    from e2ee.protocol import envelope, ratchet, session
    from e2ee.protocol.session import SessionManager

    sk, ad = bytes(32), bytes(128)
    spk = ratchet.generate_keypair()
    alice = ratchet.init_initiator(sk, spk[1], ad)
    bob = ratchet.init_responder(sk, spk, ad)
    bob.decrypt(*alice.encrypt(b"x"))
    alice.decrypt(*bob.encrypt(b"y"))
    forger = ratchet.generate_keypair()[1]

    def ratchet_forged():
        try:
            bob.decrypt(forger, 0, 0, FORGED_CIPHERTEXT)
        except ratchet.DecryptionFailed:
            return
        raise AssertionError("forged message decrypted")

    # Alice's record for bob: an established session, then MAX_ARCHIVED_STATES starts over.
    a = SessionManager.create(root + "/alice", KEY, one_time=1)
    b = SessionManager.create(root + "/bob", KEY, one_time=1)
    a.start("bob", b.bundle())
    b.decrypt("alice", a.encrypt("bob", b"hello"))
    a.decrypt("bob", b.encrypt("alice", b"hi"))
    for _ in range(session.MAX_ARCHIVED_STATES):
        a.start("bob", b.bundle())
    states = len(session._Record.from_bytes(a.session_bytes("bob")).states)
    stored = a.session_bytes("bob")
    forged = envelope.encode(envelope.RatchetMessage(forger, 0, 0, FORGED_CIPHERTEXT))

    def session_forged():
        try:
            a.decrypt("bob", forged)
        except ratchet.DecryptionFailed:
            if a.session_bytes("bob") != stored:
                raise AssertionError("forged message changed the record")
            return
        raise AssertionError("forged message decrypted")

    return states, (("ratchet_state", ratchet_forged), ("session_record", session_forged))


def device_main(root):
    from device_bench import per_op_us  # bench/, the script's directory
    from e2ee import crypto

    gc.collect()
    states, ops = _forged_ops(root)
    print("backend", crypto.default.name)
    print("states", states)
    for name, fn in ops:
        plain = crypto.x25519, crypto.x25519_base
        count = _count_x25519(crypto)
        fn()
        print(name, "x25519", count[0])
        crypto.x25519, crypto.x25519_base = plain
        print(name, "us", per_op_us(fn, 5))
    print("ok")


# ---- host side (CPython) -----------------------------------------------------------------------

def _parse(out):
    figures = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            figures[(parts[0], parts[1])] = parts[2]
        elif len(parts) == 2:
            figures[parts[0]] = parts[1]
    return figures


def _measure(firmware, binary, scratch):
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    from bench.crypto import ROOT
    from bench.protocol import HEAP
    from e2ee_host import micropython as e2ee_micropython

    runs = {}
    with tempfile.TemporaryDirectory() as sdk_dir, tempfile.TemporaryDirectory(dir=scratch) as work:
        sdk = Path(sdk_dir)
        e2ee_micropython.compile_sdk(sdk, e2ee_micropython.native_arch(binary), source=firmware)
        commands = (
            ("MicroPython", [binary, "-X", "heapsize=" + HEAP], e2ee_micropython.device_env(sdk)),
            ("CPython", [sys.executable], dict(os.environ, PYTHONPATH="%s:%s" % (firmware, ROOT / "bench"))),
        )
        for runtime, command, env in commands:
            root = os.path.join(work, runtime)
            os.mkdir(root)
            proc = subprocess.run(command + [str(ROOT / "bench/forged_message.py"), "device", root], capture_output=True,
                                  text=True, cwd=ROOT, env=env, timeout=600)
            if proc.returncode != 0 or not proc.stdout.rstrip().endswith("ok"):
                raise SystemExit("%s run of %s failed:\n%s" % (runtime, firmware, proc.stdout + proc.stderr))
            runs[runtime] = _parse(proc.stdout)
    return runs


def host_main():
    import argparse
    from pathlib import Path

    from bench.crypto import ROOT, write_doc
    from e2ee_host import micropython as e2ee_micropython

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--before", help="a firmware/ copy to measure as well, shown first")
    args = parser.parse_args()
    scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None
    binary = e2ee_micropython.binary()
    firmwares = ([("before", Path(args.before).resolve())] if args.before else []) + [("now", ROOT / "firmware")]

    lines = ["| firmware | runtime | forged message against | X25519 calls | µs per forged message |",
             "| --- | --- | --- | ---: | ---: |"]
    states = backend = None
    for label, firmware in firmwares:
        runs = _measure(firmware, binary, scratch)
        for runtime, figures in runs.items():
            states = figures["states"]
            if runtime == "MicroPython":
                backend = figures["backend"]
            for op, what in (("ratchet_state", "one ratchet state"),
                             ("session_record", "session record, %s states" % figures["states"])):
                lines.append("| %s | %s | %s | %s | %.0f |" % (label, runtime, what, figures[(op, "x25519")],
                                                            float(figures[(op, "us")])))
        print("\n".join(lines[-4:]), flush=True)
    table = "\n".join(lines)
    notes = [
        "A RatchetMessage with a ratchet key the receiver has not seen and a ciphertext that does not "
        "authenticate; the receiver has a receiving chain. The session record holds the current state and "
        "%d archived ones (D16), all tried, and is loaded from its encrypted file for each message." % (
            int(states) - 1),
        "MicroPython: SDK as .mpy, backend %s, `-X heapsize=256K`, unix port x64, where one X25519 takes "
        "about 1.9 ms (crypto table above); a board's time per forged message scales with its X25519." % backend,
        "X25519 calls: x25519 and x25519_base of the crypto interface, counted by wrapping them. Times are "
        "best of 5 batches of 5 on a shared 2-core machine.",
    ]
    print(table)
    print("\n".join(notes))
    if not args.no_write:
        reproduce = "scripts/bench-forged-message" + (" --before <firmware/ before the change>" if args.before else "")
        write_doc("forged-message", table, notes, reproduce=reproduce)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["device"]:  # forged_message.py device <scratch directory>
        device_main(sys.argv[2])
    else:
        raise SystemExit(host_main())
