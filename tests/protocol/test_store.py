"""Session record store: encryption at rest, typed errors, atomic replacement under power cuts."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from support import DEVICE_TESTS, ROOT

from e2ee.protocol.store import NotFound, RecordStore


def test_store_micropython(micropython, tmp_path):
    assert micropython.run(DEVICE_TESTS / "check_store.py", str(tmp_path)).strip() == "ok store"


def test_store_cpython(tmp_path):
    proc = subprocess.run([sys.executable, str(DEVICE_TESTS / "check_store.py"), str(tmp_path)],
                          capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH="%s:%s" % (ROOT / "firmware", DEVICE_TESTS)))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok store", proc.stdout + proc.stderr


def test_power_cut_leaves_old_or_new_record(micropython, tmp_path):
    # A MicroPython process rewrites the record as fast as it can and is SIGKILLed at a random
    # instant, 40 times. After every cut the record must authenticate and hold the last version
    # put() acknowledged or the one after it (written but not yet acknowledged), never less.
    rng = random.Random(7)
    directory = str(tmp_path / "store")
    acked = 0
    cmd = [micropython.binary, "-X", "heapsize=" + micropython.heapsize, str(DEVICE_TESTS / "store_power_cut.py"), directory]
    for _ in range(40):
        proc = subprocess.Popen(cmd + [str(acked)], stdout=subprocess.PIPE, text=True, env=micropython.env())
        time.sleep(rng.uniform(0.02, 0.15))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        # Only complete lines count: the cut may fall inside a print ("acked 1" of "acked 12").
        complete = out[: out.rfind("\n") + 1]
        lines = [line for line in complete.splitlines() if line.startswith("acked ")]
        last = int(lines[-1].split()[1]) if lines else acked
        try:
            record = RecordStore(directory, "sessions", bytes(range(32))).get("session")
            stored = int.from_bytes(bytes(record)[:4], "big")
        except NotFound:  # cut before the first write finished: the "old" state is no record
            stored = 0
        assert stored in (last, last + 1), (stored, last)
        assert stored >= acked
        acked = stored
    assert acked > 40  # writes really happened between cuts


def _reference_file(key: bytes, kind: str, name: str, nonce: bytes, data: bytes) -> bytes:
    # docs/protocol.md §5, from `cryptography` (independent of the device code).
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    ad = b"e2ee-iot store v1 " + kind.encode() + b" " + name.encode()
    return b"\x01" + nonce + ChaCha20Poly1305(key).encrypt(nonce, data, ad)


def test_in_place_records_keep_the_file_format_and_wipe_the_buffer(tmp_path):
    # put_with() serializes and encrypts in the shared record buffer, get_with() decrypts there:
    # the files are the §5 format byte for byte, and the buffer holds no plaintext afterwards.
    from e2ee.protocol import store

    key = bytes(range(32))
    s = RecordStore(str(tmp_path / "s"), "sessions", key)
    data = bytes(range(256)) * 20
    for size in (0, 1, 4097, store.MAX_RECORD):
        record = data[:size]

        def write(out: memoryview, record: bytes = record) -> None:
            assert len(out) == len(record)
            out[:] = record

        s.put_with("r", size, write)
        raw = (tmp_path / "s" / "r").read_bytes()
        assert raw == _reference_file(key, "sessions", "r", raw[1:13], record)
        assert s.get_with("r", bytes) == record and bytes(s.get("r")) == record
        assert s.get_with("r", len) == size
        assert store._spare and not any(store._spare[0]), "record buffer not wiped"
    # A nested use (a read callback reading another record) gets a buffer of its own.
    s.put("other", b"nested")
    assert s.get_with("r", lambda outer: (bytes(outer[:4]), bytes(s.get("other")))) == (data[:4], b"nested")
    assert len(store._spare) == 1 and not any(store._spare[0])
    # A failing callback leaves the stored record and the wiped buffer as they were.
    before = (tmp_path / "s" / "r").read_bytes()

    def fail(out: memoryview) -> None:
        out[:3] = b"abc"
        raise RuntimeError("serializer failed")

    try:
        s.put_with("r", 10, fail)
    except RuntimeError:
        pass
    assert (tmp_path / "s" / "r").read_bytes() == before and not any(store._spare[0])
    assert not (tmp_path / "s" / "r.tmp").exists()
