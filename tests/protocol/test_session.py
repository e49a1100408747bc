"""Sessions end to end: X3DH + Double Ratchet + envelopes + encrypted stores (protocol.md §6)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support import DEVICE_TESTS, ROOT


def test_session_micropython(micropython, tmp_path):  # heap: tests/protocol/conftest.py
    out = micropython.run(DEVICE_TESTS / "check_session.py", str(tmp_path))
    assert out.strip() == "ok session"


def test_session_cpython(tmp_path):
    proc = subprocess.run([sys.executable, str(DEVICE_TESTS / "check_session.py"), str(tmp_path)],
                          capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH="%s:%s" % (ROOT / "firmware", DEVICE_TESTS)))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok session", proc.stdout + proc.stderr


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_peer_ids_that_are_not_record_names(runtime, micropython, tmp_path):
    script = DEVICE_TESTS / "check_peer_names.py"
    if runtime == "micropython":
        out = micropython.run(script, str(tmp_path))
    else:
        out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": "%s:%s" % (ROOT / "firmware", DEVICE_TESTS)}).stdout
    assert out.strip().endswith("ok peer names"), out
