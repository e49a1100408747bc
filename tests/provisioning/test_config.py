"""core/config.py: production is the default, development an explicit opt-in; the default
operator secret is refused outside development; keys kept hashed; the service command refuses
to start on defaults and the Alembic command needs the database settings only (D19)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import inspect

from e2ee_host.service import ServiceProcess, free_port
from e2ee_provisioning.core.config import DEFAULT_OPERATOR_KEY, Settings, hash_api_key
from e2ee_provisioning.core.db import make_engine
from e2ee_provisioning.models import Base

REPO = Path(__file__).resolve().parents[2]


def _clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any E2EE_PROV_* variable, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2EE_PROV_")}
    env.update({"E2EE_PROV_" + k.upper(): v for k, v in settings.items()})
    return env


@pytest.fixture
def no_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("E2EE_PROV_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_default_operator_key_is_refused_outside_development(environment: str) -> None:
    with pytest.raises(ValidationError, match="default development key"):
        Settings(_env_file=None, environment=environment)  # type: ignore[call-arg]
    ok = Settings(_env_file=None, environment=environment, operator_api_key="x" * 32)  # type: ignore[call-arg]
    assert ok.operator_key_hashes() == {hash_api_key("x" * 32)}


def test_development_accepts_the_default_and_hashed_keys() -> None:
    s = Settings(_env_file=None, environment="development")  # type: ignore[call-arg]
    assert s.operator_key_hashes() == {hash_api_key(DEFAULT_OPERATOR_KEY)}
    assert s.sqlalchemy_url.startswith("sqlite:///") and s.sqlalchemy_url.endswith("provisioning.db")
    only_hash = Settings(_env_file=None, environment="production", operator_api_key=None,  # type: ignore[call-arg]
                         operator_api_key_hashes=hash_api_key("k1") + "," + hash_api_key("k2"))
    assert only_hash.operator_key_hashes() == {hash_api_key("k1"), hash_api_key("k2")}
    assert DEFAULT_OPERATOR_KEY not in repr(s)


def test_no_operator_key_at_all_is_refused() -> None:
    with pytest.raises(ValidationError, match="no operator API key"):
        Settings(_env_file=None, environment="development", operator_api_key=None)  # type: ignore[call-arg]


def test_finding12_production_is_the_default_and_refuses_the_default_key(no_service_env: None) -> None:
    # Audit finding 12: with nothing configured the service was "development" and took the
    # printed key `changethis` as an operator's.
    with pytest.raises(ValidationError, match="default development key"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    real = Settings(_env_file=None, operator_api_key="k" * 32)  # type: ignore[call-arg]
    assert real.environment == "production"
    assert hash_api_key(DEFAULT_OPERATOR_KEY) not in real.operator_key_hashes()


def test_finding12_development_is_opt_in(no_service_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="E2EE_PROV_ENVIRONMENT=development"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("E2EE_PROV_ENVIRONMENT", "development")  # the explicit opt-in
    dev = Settings(_env_file=None)  # type: ignore[call-arg]
    assert dev.environment == "development"
    assert dev.operator_key_hashes() == {hash_api_key(DEFAULT_OPERATOR_KEY)}


def test_finding12_the_service_command_refuses_to_start_on_defaults(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "e2ee_provisioning", "--port", str(port)], cwd=tmp_path,
                            env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the service started on defaults (production with the development key)")
    assert proc.returncode == 2, err
    message = err.decode()
    assert "refusing to start" in message and "E2EE_PROV_ENVIRONMENT=development" in message
    assert DEFAULT_OPERATOR_KEY not in message and "Traceback" not in message and not out
    assert not (tmp_path / "provisioning-data").exists()  # refused before touching any state
    # the opt-in starts it, and the development key is an operator's there
    dev = ServiceProcess(tmp_path / "dev.log", data_dir=tmp_path / "dev", environment="development")
    with dev as service:
        r = httpx.get(service.url + "/claims", headers={"X-API-Key": DEFAULT_OPERATOR_KEY})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("environment", [None, "production"])
def test_finding12_the_alembic_command_needs_no_operator_key(environment: str | None, database_url: str,
                                                             tmp_path: Path) -> None:
    settings = {"database_url": database_url}
    if environment is not None:
        settings["environment"] = environment
    done = subprocess.run([sys.executable, "-m", "alembic", "-c", str(REPO / "provisioning" / "alembic.ini"),
                           "upgrade", "head"], cwd=tmp_path, env=_clean_env(**settings), capture_output=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    engine = make_engine(database_url)
    try:
        assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    finally:
        engine.dispose()
