"""The Double Ratchet's corner cases (docs/protocol.md §3 "Corner cases") on MicroPython and
CPython: no receiving chain yet (the initiator before the first reply, the responder before its
first message), a header carrying the signed prekey then and later, unknown and old ratchet keys,
replays after the skipped store dropped their key, and counters at their maximum."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import DEVICE_TESTS, ROOT

SCRIPT = DEVICE_TESTS / "check_ratchet_corners.py"


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_ratchet_corner_cases_as_specified(runtime, request) -> None:  # type: ignore[no-untyped-def]
    if runtime == "micropython":
        out = request.getfixturevalue("micropython").run(SCRIPT)  # heap: conftest.py
    else:
        env = dict(os.environ, PYTHONPATH="%s:%s" % (ROOT / "firmware", DEVICE_TESTS))
        proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT,
                              env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout
    assert out.strip() == "ok ratchet corners", out
