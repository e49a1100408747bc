"""Issue 16, throughput: `python -m e2ee_provisioning --workers N` (N uvicorn processes, one
database, migrations done once before they start), refused with a broker admin (the workers
would share its MQTT client id); E2EE_PROV_SQLITE_SYNCHRONOUS reaches SQLite's PRAGMA."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from e2ee.protocol.keys import KeyStore
from e2ee_host.client import DeviceClient, OperatorClient
from e2ee_host.service import ServiceProcess, free_port
from e2ee_provisioning.core.db import make_engine

OPERATOR_KEY = "workers-test-operator-key-5d2e"


def test_two_workers_serve_one_database(tmp_path: Path) -> None:
    with ServiceProcess(tmp_path / "service.log", workers=2, data_dir=tmp_path / "data",
                        operator_api_key=OPERATOR_KEY, environment="development", bundle_rate_capacity=1000) as service:
        with httpx.Client(base_url=service.url) as c:  # each worker answers from the same database
            assert all(c.get("/healthz").status_code == 200 for _ in range(20))
        op = OperatorClient(service.url, OPERATOR_KEY)
        token = op.create_claims("plant", quota=8).tokens[0]

        def enroll(i: int) -> str:
            dev = DeviceClient(service.url, "w-%d" % i, "plant", KeyStore.generate(3))
            dev.enroll(token)
            dev.upload_prekeys()
            return dev.device_id

        with ThreadPoolExecutor(4) as pool:
            enrolled = list(pool.map(enroll, range(8)))
        fetched = [(d, op.bundle(d).opk_id) for d in enrolled for _ in range(3)]
        assert None not in {opk for _, opk in fetched} and len(set(fetched)) == 24  # each handed out once
        assert all(op.bundle(d).opk_id is None for d in enrolled)  # 3 each, all taken
        op.close()
    log = (tmp_path / "service.log").read_text()
    assert log.count("Started parent process") == 1 and log.count("Started server process") == 2


def test_workers_refused_with_a_broker_admin(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2EE_PROV_")}
    env.update(E2EE_PROV_DATA_DIR=str(tmp_path), E2EE_PROV_ENVIRONMENT="development",
               E2EE_PROV_BROKER_ADMIN_USER="e2ee-admin", E2EE_PROV_BROKER_ADMIN_PASSWORD="x")
    done = subprocess.run([sys.executable, "-m", "e2ee_provisioning", "--port", str(free_port()), "--workers", "2"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "client id" in done.stderr and "--workers" in done.stderr
    assert not (tmp_path / "provisioning.db").exists()  # refused before anything was made


@pytest.mark.parametrize(("setting", "pragma"), [("full", 2), ("normal", 1)])
def test_sqlite_synchronous_setting(tmp_path: Path, setting: str, pragma: int) -> None:
    engine = make_engine("sqlite:///%s" % (tmp_path / "p.db"), setting)
    with engine.connect() as c:
        assert c.execute(text("PRAGMA synchronous")).scalar() == pragma
    engine.dispose()
