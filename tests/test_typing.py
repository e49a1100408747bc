"""Type information of the SDK (issue 15 item 1): `mypy --strict` on the public host modules
(e2ee_host.sdk, messenger, install), the examples and the protocol core's stubs, as
pyproject.toml's [tool.mypy] lists them; the stubs beside the MicroPython modules match what the
modules define (mypy's stubtest imports them); every protocol module has its stub; and a wrong
use of the SDK is an error mypy reports (the types are really seen, not Any)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "firmware" / "e2ee" / "protocol"
STUBBED = ["e2ee.protocol.%s" % p.stem for p in sorted(PROTOCOL.glob("*.pyi")) if p.stem != "__init__"] + [
    "e2ee.transport.topics"]


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", os.devnull, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_public_modules_are_mypy_strict_clean() -> None:
    r = _mypy()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success" in r.stdout


def test_every_protocol_module_has_a_stub_that_matches_it() -> None:
    modules = {p.stem for p in PROTOCOL.glob("*.py")}
    assert modules == {p.stem for p in PROTOCOL.glob("*.pyi")}, "a protocol module without its .pyi stub"
    r = subprocess.run([sys.executable, "-m", "mypy.stubtest", *STUBBED], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, MYPYPATH="firmware"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_wrong_use_is_a_type_error(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "from e2ee_host import Client\n"
        "from e2ee.protocol.session import SessionManager\n"
        "def f(client: Client, sessions: SessionManager) -> None:\n"
        "    out: int = client.send('valve-7', b'x')\n"  # an Outgoing, not an int
        "    sessions.encrypt('valve-7', 'text')\n")  # str is no buffer
    r = _mypy("--strict", str(wrong))
    assert r.returncode == 1
    assert 'Incompatible types in assignment (expression has type "Outgoing"' in r.stdout, r.stdout
    assert 'Argument 2 to "encrypt" of "SessionManager" has incompatible type "str"' in r.stdout, r.stdout
