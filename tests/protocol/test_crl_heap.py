"""The largest revocation list verifies without a copy of itself (issue 14, item 4):
tests/device/check_crl_heap.py counts, with MicroPython's collector off, what the decode alone and
the whole verification allocate; the signature check (the difference) must stay below the list's
size. The code before copied "e2ee-iot crl v1" || list into one 9.3 KB buffer for Ed25519 (10336
bytes beyond the decode on a 32-bit build, 10784 on x64): with the 8 KB serial array that is two
list-sized blocks, which a fragmented ESP32 heap may not have (docs/performance.md, "Revocation
lists on the ESP32 heap"). Now SHA-512 takes the label and the list one after the other.

Counting garbage with the collector off needs room: the decode of 512 serials makes 75 KB of it on
x64 (42 KB on 32 bits). With the SDK frozen (E2EE_DEVICE_FROZEN=1) the check runs at the ESP32's
120 KB and at 111 KB; imported as .mpy it runs with the protocol tests' heap."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import DEVICE_TESTS, ROOT

from e2ee.protocol import certificate
from e2ee_host import fleet_ca

SCRIPT = DEVICE_TESTS / "check_crl_heap.py"
NOW = 1_800_000_000
HEAPS = ["120K", "111K"] if os.environ.get("E2EE_DEVICE_FROZEN") else ["288K"]


def build_cases(tmp_path):  # type: ignore[no-untyped-def]
    ca = fleet_ca.FileCAKeystore(tmp_path / "ca" / "fleet-ca.json")
    serials = sorted(fleet_ca.new_serial() for _ in range(certificate.MAX_REVOKED + 1))
    good = serials.pop(100)  # not on the list, between two that are
    data = fleet_ca.sign_revocation_list(ca, version=2, revoked_serials=serials, issued_at=NOW)
    assert len(data) > 9000
    cases = tmp_path / "cases"
    cases.mkdir()
    files = {"crl": data, "ca-keys": b"".join(ca.public_keys()), "revoked": serials[300], "good": good,
             "small": fleet_ca.sign_revocation_list(ca, version=1, revoked_serials=serials[:1], issued_at=NOW)}
    for name, value in files.items():
        (cases / (name + ".bin")).write_bytes(value)
    return cases


@pytest.mark.parametrize("heap", HEAPS)
def test_largest_revocation_list_verifies_without_a_copy_micropython(micropython, tmp_path, heap):
    out = micropython.run(SCRIPT, str(build_cases(tmp_path)), heapsize=heap).split()
    assert out[:3] == ["ok", "crl", "heap"], out
    decoding, verifying, free = (int(x) for x in out[3:])
    assert decoding > certificate.MAX_REVOKED * certificate.SERIAL_SIZE  # the count is real
    print("decode %d bytes, signature check %d more; %d bytes free before" % (decoding, verifying - decoding,
                                                                            free))


def test_largest_revocation_list_verifies_cpython(tmp_path):
    env = dict(os.environ, PYTHONPATH="%s:%s" % (ROOT / "firmware", DEVICE_TESTS))
    proc = subprocess.run([sys.executable, str(SCRIPT), str(build_cases(tmp_path))], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split()[:3] == ["ok", "crl", "heap"]
