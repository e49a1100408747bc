"""deploy/container/ (docs/deployment.md, "Container"): the compose file parses and wires the
service, PostgreSQL and Mosquitto with the migration and the broker's dynamic-security state as
one-off steps before them; every path, port, account, host name and E2EE_PROV_* variable it uses
matches the Containerfiles, the production broker configuration and the settings class (the
service's environment validates through it); the image's wheel stage builds a wheel from exactly
what it copies.

There is no Docker daemon (nor compose plugin) on the test machine: the images are not built and
the stack is not started here; `docker compose config` runs only where compose is installed."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from e2ee_provisioning.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "deploy" / "container"
COMPOSE = HERE / "compose.yaml"
SERVICE_IMAGE, BROKER_IMAGE = HERE / "Containerfile", HERE / "Containerfile.mosquitto"
PRODUCTION_CONF = ROOT / "broker-config" / "mosquitto.production.conf"
PREFIX = "E2EE_PROV_"
# ${NAME}, ${NAME:-default}, ${NAME:?error} (the forms compose.yaml uses)
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::([-?])([^}]*))?\}")


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined, comments left out."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions(path):
        if instruction[0] == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


def _json_form(args: str) -> list[str]:
    value = yaml.safe_load(args)
    assert isinstance(value, list), args
    return value


def _example_values() -> dict[str, str]:
    pairs = {}
    for line in (HERE / "env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name] = value
    return pairs


def _interpolate(value: str, variables: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name, kind, rest = m.groups()
        if name in variables and (variables[name] or kind != "?"):
            return variables[name]
        assert kind == "-", "%s has no value and no default" % name
        return rest
    return VARIABLE.sub(one, value)


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (a named volume or a path relative to compose.yaml)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def _conf() -> dict[str, str]:
    options = {}
    for line in PRODUCTION_CONF.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            options.setdefault(key, value)
    return options


def test_the_services_and_their_order() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "migrate", "broker-init", "mosquitto", "provisioning"}
    depends = {name: {k: v["condition"] for k, v in s.get("depends_on", {}).items()} for name, s in services.items()}
    assert depends["migrate"] == {"postgres": "service_healthy"}
    assert depends["mosquitto"] == {"broker-init": "service_completed_successfully"}
    assert depends["provisioning"] == {"migrate": "service_completed_successfully", "mosquitto": "service_started"}
    for one_off in ("migrate", "broker-init"):
        assert services[one_off]["restart"] == "no"
    named = set(_compose()["volumes"])
    used = {src for s in services.values() for src in _mounts(s).values() if not src.startswith(".")}
    assert used == named


def test_migrations_are_a_one_off_step_and_the_replica_does_not_migrate() -> None:
    services = _compose()["services"]
    assert services["migrate"]["entrypoint"] == ["/opt/e2ee-iot/bin/python", "-m", "e2ee_provisioning.migrate"]
    assert services["migrate"]["command"] == []
    assert services["provisioning"]["environment"]["E2EE_PROV_MIGRATE_AT_STARTUP"] == "false"
    # the same database for both
    assert services["migrate"]["environment"]["E2EE_PROV_DATABASE_URL"] == \
        services["provisioning"]["environment"]["E2EE_PROV_DATABASE_URL"]


def test_build_files_exist_and_images_are_distinct() -> None:
    builds = {name: s["build"] for name, s in _compose()["services"].items() if "build" in s}
    for name, build in builds.items():
        context = (HERE / build["context"]).resolve()
        assert context == ROOT and (context / build["dockerfile"]).is_file(), name
        assert (context / (build["dockerfile"] + ".dockerignore")).is_file(), name
    images = {s["build"]["dockerfile"]: s["image"] for s in _compose()["services"].values() if "build" in s}
    assert len(set(images.values())) == len(images) == 2


def test_every_variable_is_a_setting_and_the_environment_validates() -> None:
    services = _compose()["services"]
    variables = _example_values()
    used = set(VARIABLE.findall(COMPOSE.read_text()))
    assert {name for name, _, _ in used} == set(variables)  # env.example: exactly what compose asks for
    for name in ("migrate", "provisioning"):
        env = {k: _interpolate(str(v), variables) for k, v in services[name]["environment"].items()}
        assert all(k.startswith(PREFIX) and k[len(PREFIX):].lower() in Settings.model_fields for k in env), name
        if name == "provisioning":
            settings = Settings(_env_file=None, **{k[len(PREFIX):].lower(): v for k, v in env.items()})  # type: ignore[arg-type]
            assert settings.environment == "production" and not settings.migrate_at_startup
            assert settings.operator_key_hashes() == {variables["OPERATOR_API_KEY_HASHES"].lower()}
    # the database URL names the postgres service, its user and database
    url = _interpolate(services["provisioning"]["environment"]["E2EE_PROV_DATABASE_URL"], variables)
    pg = services["postgres"]["environment"]
    assert url == "postgresql+psycopg://%s:%s@postgres/%s" % (pg["POSTGRES_USER"], variables["POSTGRES_PASSWORD"],
                                                               pg["POSTGRES_DB"])


def test_the_service_container_matches_its_image() -> None:
    service = _compose()["services"]["provisioning"]
    final = dict(_stages(SERVICE_IMAGE)[-1])
    entrypoint = _json_form(final["ENTRYPOINT"])
    assert entrypoint == ["/opt/e2ee-iot/bin/python", "-m", "e2ee_provisioning"]
    runs = " ".join(args for kind, args in _stages(SERVICE_IMAGE)[-1] if kind == "RUN")
    assert "python -m venv /opt/e2ee-iot && /opt/e2ee-iot/bin/pip install" in runs  # the wheel, in that venv
    assert final["USER"] == "e2ee-provisioning"
    port = final["EXPOSE"]
    command = service["command"]
    assert command == _json_form(final["CMD"]) and command[command.index("--port") + 1] == port
    assert service["ports"] == ["%s:%s" % (port, port)]
    # the systemd unit runs the same interpreter and module
    unit = (ROOT / "deploy" / "systemd" / "e2ee-provisioning.service").read_text()
    assert "ExecStart=%s" % " ".join(entrypoint) in unit
    # TLS files and data: under the mounted paths
    env, mounts = service["environment"], _mounts(service)
    for setting in ("E2EE_PROV_TLS_CERTFILE", "E2EE_PROV_TLS_KEYFILE", "E2EE_PROV_BROKER_ADMIN_TLS_CA"):
        directory = str(PurePosixPath(env[setting]).parent)
        assert directory in mounts and mounts[directory].startswith("./tls/"), setting
    data_dir = re.search(r"E2EE_PROV_DATA_DIR=(\S+)", final["ENV"])
    assert data_dir is not None and data_dir.group(1) in mounts
    assert env["E2EE_PROV_BROKER_ADMIN_HOST"] == "mosquitto" and "mosquitto" in _compose()["services"]


def test_the_broker_container_runs_the_production_configuration() -> None:
    services = _compose()["services"]
    broker, conf = services["mosquitto"], _conf()
    (stage,) = _stages(BROKER_IMAGE)
    copies = [args.split() for kind, args in stage if kind == "COPY"]
    assert copies == [["broker-config/mosquitto.production.conf", "/etc/mosquitto/mosquitto.conf"]]
    assert _json_form(dict(stage)["ENTRYPOINT"]) == ["/usr/sbin/mosquitto", "-c", "/etc/mosquitto/mosquitto.conf"]
    mounts = _mounts(broker)
    # certificates, store, dynamic-security state and log: where the configuration says
    for option in ("certfile", "keyfile"):
        assert mounts[str(PurePosixPath(conf[option]).parent)] == "./tls/broker", option
    assert conf["persistence_location"].rstrip("/") in mounts
    assert str(PurePosixPath(conf["plugin_opt_config_file"]).parent) in mounts
    assert str(PurePosixPath(conf["log_dest"].split()[1]).parent) in mounts
    listener = conf["listener"]
    assert broker["ports"] == ["%s:%s" % (listener, listener)] and dict(stage)["EXPOSE"] == listener
    assert services["provisioning"]["environment"]["E2EE_PROV_BROKER_ADMIN_PORT"] == listener
    # broker-init writes the state file the configuration names, into the broker's volume, as its uid
    init = services["broker-init"]
    script = init["command"][0]
    assert '"%s"' % conf["plugin_opt_config_file"] in script
    assert _mounts(init) == {conf["persistence_location"].rstrip("/"): mounts[conf["persistence_location"].rstrip("/")]}
    runs = " ".join(args for kind, args in stage if kind == "RUN")
    uid = re.search(r"useradd --system --uid (\d+) --gid mosquitto", runs)
    assert uid is not None and "chown -R %s:%s " % (uid.group(1), uid.group(1)) in script


def test_the_wheel_builds_from_what_the_image_copies(tmp_path: Path) -> None:
    wheel_stage = _stages(SERVICE_IMAGE)[0]
    sources = []
    for kind, args in wheel_stage:
        if kind == "COPY":
            parts = args.split()
            sources += [p.rstrip("/") for p in parts[:-1]]
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    tops = {PurePosixPath(d).parts[0] for d in config["package-dir"].values()}
    assert set(sources) == tops | {"pyproject.toml", "README.md"}
    src = tmp_path / "src"
    src.mkdir()
    for name in sources:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.mpy"))
        else:
            shutil.copy(ROOT / name, src / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
             str(src)]
    done = subprocess.run(build, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "dist").glob("e2ee_iot-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("e2ee_provisioning/__main__.py", "e2ee_provisioning/migrate.py", "e2ee_host/broker.py",
                   "e2ee_host/broker_config/mosquitto.production.conf"):
        assert module in names


def test_docker_compose_config_where_available(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30) if docker else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no docker compose on this machine (no Docker daemon or compose plugin either)")
    env_file = tmp_path / ".env"
    env_file.write_text((HERE / "env.example").read_text())
    done = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--env-file", str(env_file), "config", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
