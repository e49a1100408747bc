"""package.json, the mip package of the device SDK (e2ee_host.package_json): it lists the sources
of exactly the modules `e2ee flash` puts on a board, and `mpremote mip install` of it, from a
local checkout and over HTTP (relative URLs, as from github:), gives a virtual board an SDK that
imports and passes the crypto self test."""
from __future__ import annotations

import functools
import http.server
import json
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2ee_host import package_json
from e2ee_host.virtual_board import VirtualBoard

ROOT = Path(__file__).resolve().parents[2]
SELFTEST = ROOT / "firmware" / "examples" / "selftest.py"


def test_package_json_is_current() -> None:
    assert (ROOT / "package.json").read_text() == package_json.render(), "run scripts/package-json"


def test_package_json_names_the_board_files() -> None:
    pkg = json.loads((ROOT / "package.json").read_text())
    assert set(pkg) == {"urls", "deps", "version"} and pkg["deps"] == []
    assert pkg["version"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    devices = [device for device, _ in pkg["urls"]]
    assert devices == sorted(set(devices)) and "e2ee/__init__.py" in devices
    for device, url in pkg["urls"]:
        assert url == "firmware/" + device and (ROOT / url).is_file()


def _mpremote(port: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mpremote", "connect", port, *args], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def http_checkout() -> Iterator[str]:
    """This checkout served over HTTP on the loopback, as github: serves a repository's files."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(ROOT))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None  # type: ignore[attr-defined,assignment]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("source", ["checkout", "http"])
def test_mip_install_into_a_virtual_board(source: str, tmp_path, request) -> None:  # type: ignore[no-untyped-def]
    url = str(ROOT / "package.json") if source == "checkout" else request.getfixturevalue("http_checkout") + "/package.json"
    with VirtualBoard(tmp_path / "flash", "esp32") as board:
        out = _mpremote(board.port, "mip", "install", url)
        assert out.rstrip().endswith("Done"), out
        installed = sorted(p.relative_to(tmp_path / "flash" / "lib").as_posix()
                           for p in (tmp_path / "flash" / "lib").rglob("*.py"))
        assert installed == [device for device, _ in json.loads((ROOT / "package.json").read_text())["urls"]]
        out = _mpremote(board.port, "resume", "exec", "import e2ee; print(e2ee.__file__)")
        assert out.strip() == "./lib/e2ee/__init__.py"
        out = _mpremote(board.port, "resume", "exec", SELFTEST.read_text())
        assert "E2EE SELFTEST PASS viper" in out, out
