"""The systemd units in deploy/systemd/ (docs/deployment.md, "systemd"): `systemd-analyze verify`
finds nothing to say about them (unknown keys and bad values only print a warning there, so any
line naming a unit fails the test, and a unit with a misspelt option shows the check catches it);
`systemd-analyze security --offline` rates each one's exposure low; the service requires the
one-off migration and does not migrate itself; the migration unit's command migrates a database;
the broker unit runs the production configuration with the directories it names.

Skipped only where systemd-analyze is absent (.ci/run installs Debian's systemd package for it)."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from e2ee_provisioning.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
SERVICE, MIGRATE, BROKER = "e2ee-provisioning.service", "e2ee-provisioning-migrate.service", "mosquitto-e2ee.service"
# where the units expect the wheel's virtual environment; the tests put this interpreter's there
INSTALLED_PYTHON = "/opt/e2ee-iot/bin/python"
# options every unit carries (docs/deployment.md lists them)
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
             "PrivateDevices": "yes", "RestrictSUIDSGID": "yes", "CapabilityBoundingSet": "",
             "SystemCallArchitectures": "native", "UMask": "0077"}
# highest `systemd-analyze security` exposure accepted (0 = locked down, 10 = exposed; 1.4 today)
MAX_EXPOSURE = 2.0

ANALYZE = shutil.which("systemd-analyze") or shutil.which("systemd-analyze", path="/usr/bin:/bin")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian: systemd)")


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file, each key with every value it is given (in order)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def _installed_copies(directory: Path, edit: tuple[str, str] | None = None) -> list[Path]:
    """The units with this interpreter as the installed one (verify checks ExecStart= exists)."""
    directory.mkdir()
    copies = []
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text().replace(INSTALLED_PYTHON, sys.executable)
        if edit is not None and unit.name == SERVICE:
            text = text.replace(*edit)
        (directory / unit.name).write_text(text)
        copies.append(directory / unit.name)
    return copies


def _verify(copies: list[Path]) -> list[str]:
    """Lines of `systemd-analyze verify` output that concern these units."""
    assert ANALYZE is not None
    done = subprocess.run([ANALYZE, "verify", "--man=no", *map(str, copies)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    lines = (done.stdout + done.stderr).splitlines()
    mine = [line for line in lines if any(c.name in line or str(c.parent) in line for c in copies)]
    if done.returncode != 0:
        mine.append("exit status %d" % done.returncode)
    return mine


def test_the_unit_files_are_the_three_documented() -> None:
    assert sorted(p.name for p in UNITS.iterdir()) == sorted([SERVICE, MIGRATE, BROKER])
    assert all(name in (ROOT / "docs" / "deployment.md").read_text() for name in (SERVICE, MIGRATE, BROKER))


@needs_analyze
def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    assert _verify(_installed_copies(tmp_path / "units")) == []


@needs_analyze
@pytest.mark.parametrize("edit", [("ProtectSystem=strict", "ProtectSytem=strict"),
                                  ("ProtectSystem=strict", "ProtectSystem=sometimes"),
                                  ("ExecStart=" + INSTALLED_PYTHON, "ExecStart=/nowhere/python")])
def test_verify_catches_a_broken_unit(tmp_path: Path, edit: tuple[str, str]) -> None:
    # the same check on a copy with one mistake: it must not pass
    edit = (edit[0].replace(INSTALLED_PYTHON, sys.executable), edit[1])
    assert _verify(_installed_copies(tmp_path / "units", edit)) != []


@needs_analyze
@pytest.mark.parametrize("name", [SERVICE, MIGRATE, BROKER])
def test_exposure_is_low(tmp_path: Path, name: str) -> None:
    assert ANALYZE is not None
    copies = _installed_copies(tmp_path / "units")
    done = subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager", str(tmp_path / "units" / name)],
                          capture_output=True, text=True, timeout=60, cwd=copies[0].parent)
    found = re.search(r"Overall exposure level for %s: ([0-9.]+)" % re.escape(name), done.stdout)
    assert found is not None, done.stdout + done.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE


@pytest.mark.parametrize("name", [SERVICE, MIGRATE, BROKER])
def test_every_unit_is_hardened(name: str) -> None:
    service = _unit(name)["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == [value], (name, key)
    assert service["User"] != ["root"] and "AmbientCapabilities" in service


def test_the_service_requires_the_one_off_migration_and_does_not_migrate() -> None:
    service, migrate = _unit(SERVICE), _unit(MIGRATE)
    assert MIGRATE in service["Unit"]["Requires"][0].split() and MIGRATE in service["Unit"]["After"][0].split()
    assert "E2EE_PROV_MIGRATE_AT_STARTUP=false" in service["Service"]["Environment"]
    assert migrate["Service"]["Type"] == ["oneshot"] and migrate["Service"]["RemainAfterExit"] == ["yes"]
    assert shlex.split(migrate["Service"]["ExecStart"][0]) == [INSTALLED_PYTHON, "-m", "e2ee_provisioning.migrate"]
    assert shlex.split(service["Service"]["ExecStart"][0])[:3] == [INSTALLED_PYTHON, "-m", "e2ee_provisioning"]
    # both read the same settings file, and name only settings the service has
    assert service["Service"]["EnvironmentFile"] == migrate["Service"]["EnvironmentFile"]
    data_dir = "E2EE_PROV_DATA_DIR=/var/lib/" + service["Service"]["StateDirectory"][0]
    assert data_dir in service["Service"]["Environment"] and migrate["Service"]["Environment"] == [data_dir]
    for assignment in service["Service"]["Environment"]:
        name = assignment.partition("=")[0]
        assert name.startswith("E2EE_PROV_") and name[len("E2EE_PROV_"):].lower() in Settings.model_fields


def test_the_migration_units_command_migrates(tmp_path: Path) -> None:
    command = shlex.split(_unit(MIGRATE)["Service"]["ExecStart"][0])
    command[0] = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2EE_PROV_")}
    env["E2EE_PROV_DATA_DIR"] = str(tmp_path)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "provisioning.db").stat().st_size > 0


def test_the_broker_unit_runs_the_production_configuration() -> None:
    broker = _unit(BROKER)["Service"]
    command = shlex.split(broker["ExecStart"][0])
    assert command[0] == "/usr/sbin/mosquitto" and command[1] == "-c"
    config = (ROOT / "broker-config" / "mosquitto.production.conf").read_text()
    options = {}
    for line in config.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            options.setdefault(key, value)
    # the unit's account and directories are the ones the configuration names
    assert broker["User"] == [options["user"]]
    assert options["persistence_location"].rstrip("/") == "/var/lib/" + broker["StateDirectory"][0]
    assert options["plugin_opt_config_file"].startswith("/var/lib/%s/" % broker["StateDirectory"][0])
    assert options["log_dest"].split()[1].startswith("/var/log/%s/" % broker["LogsDirectory"][0])
    assert broker["Type"] == ["notify"]
    assert "mosquitto.production.conf" in (UNITS / BROKER).read_text()
