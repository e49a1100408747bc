"""Sessions end to end: X3DH + Double Ratchet + envelopes + encrypted stores (protocol.md §6)."""
from __future__ import annotations

import os
import subprocess
import sys

from support import DEVICE_TESTS, ROOT


def test_session_micropython(micropython, tmp_path):  # heap: tests/protocol/conftest.py
    out = micropython.run(DEVICE_TESTS / "check_session.py", str(tmp_path))
    assert out.strip() == "ok session"


def test_session_cpython(tmp_path):
    proc = subprocess.run([sys.executable, str(DEVICE_TESTS / "check_session.py"), str(tmp_path)],
                          capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH="%s:%s" % (ROOT / "firmware", DEVICE_TESTS)))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok session", proc.stdout + proc.stderr
