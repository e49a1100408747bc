"""Migrations as a one-off step (docs/deployment.md): `python -m e2ee_provisioning.migrate` brings
an empty database to the newest revision with the database settings only, and a service started
with E2EE_PROV_MIGRATE_AT_STARTUP=false serves on that database but refuses one that is not
migrated, naming the command, instead of migrating it itself (each replica would race the others)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from service_support import OPERATOR, OPERATOR_KEY
from sqlalchemy import inspect

from e2ee_host.service import ServiceError, ServiceProcess
from e2ee_provisioning.core.db import DatabaseNotMigrated, check_migrations, make_engine, run_migrations


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_the_one_off_migration_then_a_replica_that_only_checks(database_url: str, tmp_path: Path) -> None:
    settings = dict(database_url=database_url, data_dir=tmp_path / "data", operator_api_key=OPERATOR_KEY,
                    migrate_at_startup="false")
    refused = ServiceProcess(tmp_path / "refused.log", **settings)
    with pytest.raises(ServiceError, match="exited"):
        refused.start()
    log = (tmp_path / "refused.log").read_text()
    assert "python -m e2ee_provisioning.migrate" in log and "revision none" in log
    assert _tables(database_url) == set()  # the replica created nothing

    env = {k: v for k, v in os.environ.items() if not k.startswith("E2EE_PROV_")}
    env["E2EE_PROV_DATABASE_URL"] = database_url  # no operator key: migrating takes none
    done = subprocess.run([sys.executable, "-m", "e2ee_provisioning.migrate"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "alembic_version" in _tables(database_url) and "devices" in _tables(database_url)

    with ServiceProcess(tmp_path / "replica.log", **settings) as replica:
        assert httpx.get(replica.url + "/healthz", timeout=5).status_code == 200
        answer = httpx.get(replica.url + "/devices", headers=OPERATOR, timeout=5)
        assert answer.status_code == 200 and answer.json() == []  # its tables are there


def test_check_migrations_names_the_revisions(tmp_path: Path) -> None:
    engine = make_engine("sqlite:///%s" % (tmp_path / "p.db"))
    try:
        with pytest.raises(DatabaseNotMigrated, match="revision none"):
            check_migrations(engine)
        run_migrations(engine)
        check_migrations(engine)
    finally:
        engine.dispose()
