"""Fixtures of the provisioning service tests: each API test runs on SQLite and on PostgreSQL.

PostgreSQL: 127.0.0.1:5432, user postgres, trust auth (override with E2EE_TEST_POSTGRES, an
admin URL). The test session creates its own uniquely named database and drops it at the end;
each test starts from an empty schema that the service migrates at startup. An unreachable
server fails the PostgreSQL tests with the reason; nothing is skipped.
"""
from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from service_support import OPERATOR_KEY

from e2ee_provisioning.core.config import Settings
from e2ee_provisioning.main import create_app

POSTGRES_ADMIN = os.environ.get("E2EE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """psycopg URL of a database created for this test session (dropped at its end)."""
    name = "e2ee_test_%d_%s" % (os.getpid(), secrets.token_hex(4))
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail("PostgreSQL at %s is unreachable (%s): the provisioning tests run on PostgreSQL as "
                    "well as SQLite; start it or point E2EE_TEST_POSTGRES at an admin URL" % (POSTGRES_ADMIN, e))
    with admin:
        admin.execute('CREATE DATABASE "%s"' % name)
        try:
            yield POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
        finally:
            admin.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)


def _empty_postgres_schema(url: str) -> None:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """An empty database on each engine in turn."""
    if request.param == "sqlite":
        return "sqlite:///%s" % (tmp_path / "provisioning.db")
    url: str = request.getfixturevalue("postgres_database")
    _empty_postgres_schema(url)
    return url


@pytest.fixture
def database_url_postgres(postgres_database: str) -> str:
    """The session's PostgreSQL database, emptied."""
    _empty_postgres_schema(postgres_database)
    return postgres_database


@pytest.fixture
def settings(database_url: str, tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(_env_file=None, environment="development", data_dir=tmp_path,  # type: ignore[call-arg]
                    database_url=database_url, operator_api_key=OPERATOR_KEY,
                    bundle_rate_capacity=1000, bundle_rate_per_second=100,
                    enroll_rate_capacity=1000, enroll_rate_per_second=100)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:  # runs the lifespan: migrations, engine
        yield c


@dataclass
class LiveServer:
    app: FastAPI
    url: str


@pytest.fixture
def live_server(app: FastAPI) -> Iterator[LiveServer]:
    """The app under a real uvicorn server on a free local port, in a thread."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start on port %d" % port)
        time.sleep(0.02)
    try:
        yield LiveServer(app, "http://127.0.0.1:%d" % port)
    finally:
        server.should_exit = True
        thread.join(10)
