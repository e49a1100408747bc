"""The wheel works outside the checkout (issue 15, item 2): `pip wheel` builds it from a clean copy
of the sources, it is installed into a fresh virtual environment in a temporary directory, and
everything below runs from that environment only (cwd outside the checkout, no PYTHONPATH, PATH
without the project's .venv):
- the project's Mosquitto from the installed package's broker configuration and the provisioning
  service on SQLite, which migrates its database with the installed Alembic revisions;
- `e2ee board virtual`, `e2ee flash` (the SDK compiled from the installed `e2ee` package) and
  `e2ee provision` (keys made on the board, enrollment);
- `e2ee client init` / `send` / `receive` between two installs through that broker;
- `python -m e2ee_host.demo`, whose MicroPython device runs the installed firmware example.
Dependencies come from the .venv's wheelhouse (.venv/wheelhouse), filled by `pip download` on
the first run and whenever the wheel needs something it lacks; later runs install offline."""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = Path(sys.prefix) / "wheelhouse"
OPERATOR_KEY = "wheel-test-operator-key-8e41"
FLEET = "plant-north"

# Runs in the installed environment: the broker and the service, their addresses on stdout, until
# stdin closes. Where each part was loaded from goes out too (the test checks it is the install).
STACK = r'''
import json, sys
from pathlib import Path
from e2ee_host import broker, micropython
from e2ee_host.broker import MosquittoProcess
from e2ee_host.service import ServiceProcess
from e2ee_provisioning.core import db

tmp, key = Path(sys.argv[1]), sys.argv[2]
with MosquittoProcess(tmp / "broker") as b, ServiceProcess(
        tmp / "service.log", data_dir=tmp / "service", operator_api_key=key, broker_admin_host=b.host,
        broker_admin_port=b.port, broker_admin_user=b.admin_user, broker_admin_password=b.admin_password,
        mqtt_host=b.host, mqtt_port=b.port) as s:
    print(json.dumps({"url": s.url, "template": str(broker.TEMPLATE), "alembic": str(db.ALEMBIC_DIR),
                      "sdk": str(micropython.FIRMWARE), "python": sys.executable}), flush=True)
    sys.stdin.read()
'''


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload, no-any-return]


def _config() -> dict[str, dict[str, object]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]  # type: ignore[no-any-return]


def _build(out: Path) -> Path:
    """The wheel, built from a copy of what pyproject.toml names (no stale build/ of the checkout)."""
    src = out / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    tops = {PurePosixPath(d).parts[0] for d in _config()["package-dir"].values()}  # type: ignore[union-attr]
    for top in sorted(tops):
        shutil.copytree(ROOT / top, src / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.mpy"))
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir",
              str(out / "dist"), str(src)])
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (out / "dist").glob("e2ee_iot-*.whl")
    return wheel


def _expected_files() -> set[str]:
    """Every module and package-data file pyproject.toml's packages map, as wheel paths."""
    config = _config()
    dirs: dict[str, str] = config["package-dir"]  # type: ignore[assignment]
    data: dict[str, list[str]] = config["package-data"]  # type: ignore[assignment]
    expected = set()
    for package in config["packages"]:  # type: ignore[attr-defined]
        parts = package.split(".")
        mapped = next(i for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in dirs)
        folder = ROOT / dirs[".".join(parts[:mapped])] / Path(*parts[mapped:])
        for f in folder.iterdir():
            if f.is_file() and (f.suffix in (".py", ".pyi") or f.name == "py.typed"
                                or any(fnmatch.fnmatch(f.name, p) for p in data.get(package, []))):
                expected.add("/".join(parts + [f.name]))
    return expected


def _source_modules() -> set[str]:
    """Every .py file under the folders the wheel's top-level packages come from, as wheel paths:
    a subpackage missing from pyproject.toml's list shows up here and not in the wheel."""
    dirs: dict[str, str] = _config()["package-dir"]  # type: ignore[assignment]
    found = set()
    for package in (p for p in dirs if "." not in p):
        base = ROOT / dirs[package]
        for f in base.rglob("*.py"):
            found.add("/".join([package, *f.relative_to(base).parts]))
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """A fresh virtual environment with the wheel (and the `virtual-board` extra) installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    assert not tmp.resolve().is_relative_to(ROOT)
    wheel = _build(tmp)
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = (_expected_files() | _source_modules()) - names
    assert not missing, "not in the wheel: %s" % sorted(missing)
    venv = tmp / "venv"
    r = _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)])
    assert r.returncode == 0, r.stderr
    requirement = "%s[virtual-board]" % wheel
    install = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-index",
               "--find-links", str(WHEELHOUSE), requirement]
    r = _run(install)
    if r.returncode != 0:  # first run on this .venv, or the wheel needs a distribution not fetched yet
        WHEELHOUSE.mkdir(exist_ok=True)
        d = _run([sys.executable, "-m", "pip", "download", "--dest", str(WHEELHOUSE), requirement])
        assert d.returncode == 0, d.stdout + d.stderr
        for stale in WHEELHOUSE.glob("e2ee_iot-*.whl"):
            stale.unlink()
        r = _run(install)
    assert r.returncode == 0, r.stdout + r.stderr
    yield venv


def _env(venv: Path) -> dict[str, str]:
    """What a user's shell would have: the install's bin/ on PATH, nothing of the checkout."""
    keep = {k: os.environ[k] for k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER") if k in os.environ}
    return {**keep, "PATH": "%s:/usr/local/bin:/usr/bin:/bin" % (venv / "bin"), "PYTHONIOENCODING": "utf-8"}


def test_the_installed_wheel_runs_service_broker_board_and_clients(installed, tmp_path) -> None:  # type: ignore[no-untyped-def]
    venv, env, cwd = installed, _env(installed), tmp_path
    e2ee = str(venv / "bin" / "e2ee")

    def cli(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
        return _run([e2ee, *(["--url", url] if url else []), *args], env=env, cwd=cwd)

    script = tmp_path / "stack.py"
    script.write_text(STACK)
    stack = subprocess.Popen([str(venv / "bin" / "python"), "-I", str(script), str(tmp_path), OPERATOR_KEY],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=cwd)
    board = None
    try:
        line = stack.stdout.readline()  # type: ignore[union-attr]
        assert line, stack.stderr.read()  # type: ignore[union-attr]
        info = json.loads(line)
        # everything the running system read came from the install, nothing from the checkout
        site = (venv / "lib").resolve()
        assert info["python"].startswith(str(venv))
        for key in ("template", "alembic", "sdk"):
            assert Path(info[key]).resolve().is_relative_to(site), (key, info[key])
        url = info["url"]

        r = cli("--api-key", OPERATOR_KEY, "--json", "claims", "create", "--fleet", FLEET, "--count", "3", url=url)
        assert r.returncode == 0, r.stderr
        board_claim, claim_a, claim_b = json.loads(r.stdout)["tokens"]

        # a virtual ESP32, flashed with the SDK compiled from the installed package, then provisioned
        board = subprocess.Popen([e2ee, "board", "virtual", "--flash", str(tmp_path / "flash")], env=env, cwd=cwd,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = board.stdout.readline()  # type: ignore[union-attr]
        assert "virtual esp32 board on /dev/pts/" in line, line + board.stderr.read()  # type: ignore[union-attr]
        port = line.split(" on ")[1].split()[0]
        r = cli("flash", "--port", port)
        assert r.returncode == 0, r.stderr
        assert "lib/e2ee/protocol/session.mpy" in r.stderr
        assert (tmp_path / "flash" / "lib" / "e2ee" / "crypto" / "__init__.mpy").is_file()
        r = cli("--json", "provision", "--port", port, "--claim", board_claim, "--device-id", "valve-1",
                "--fleet", FLEET, "--one-time", "5", url=url)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["device_id"] == "valve-1"
        r = cli("--api-key", OPERATOR_KEY, "--json", "devices", "show", "valve-1", url=url)
        assert r.returncode == 0 and json.loads(r.stdout)["fleet"] == FLEET, r.stderr

        # two host installs talk through the broker
        for install, device, claim in (("a", "gw-a", claim_a), ("b", "gw-b", claim_b)):
            r = cli("client", "init", "--dir", str(tmp_path / install), "--device-id", device, "--fleet", FLEET,
                    "--claim", claim, "--one-time", "5", url=url)
            assert r.returncode == 0, r.stderr
        r = cli("client", "send", "--dir", str(tmp_path / "a"), "gw-b", "from the wheel", url=url)
        assert r.returncode == 0, r.stderr
        r = cli("client", "receive", "--dir", str(tmp_path / "b"), "--count", "1", "--timeout", "60", url=url)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["gw-a: from the wheel"]
        r = cli("client", "send", "--dir", str(tmp_path / "b"), "gw-a", "and back", url=url)
        assert r.returncode == 0, r.stderr
        r = cli("client", "receive", "--dir", str(tmp_path / "a"), "--count", "1", "--timeout", "60", url=url)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["gw-b: and back"]

        # the protocol demo: a MicroPython device runs the installed firmware example
        r = _run([str(venv / "bin" / "python"), "-I", "-m", "e2ee_host.demo"], env=env, cwd=cwd)
        assert r.returncode == 0 and r.stdout.rstrip().endswith("demo finished"), r.stdout + r.stderr
    finally:
        if board is not None:
            board.send_signal(signal.SIGINT)
            board.communicate(timeout=60)
        stack.stdin.close()  # type: ignore[union-attr]
        stack.wait(60)
