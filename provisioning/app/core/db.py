"""Database engine and sessions (SQLAlchemy 2), and Alembic migrations: applied at startup, or
once by `python -m e2ee_provisioning.migrate` and only checked at startup (E2EE_PROV_MIGRATE_AT_STARTUP).

SQLite (the embedded default) runs in WAL mode with foreign keys on, and every transaction
starts with BEGIN IMMEDIATE: writers queue on the database lock at BEGIN instead of failing at
their first write, which is what makes the one-time prekey hand-out atomic there.
PostgreSQL is the production database (psycopg 3).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from e2ee_host import resources

__all__ = ["ALEMBIC_DIR", "DatabaseNotMigrated", "check_migrations", "make_engine", "make_sessionmaker",
           "run_migrations"]

# provisioning/alembic/ in a checkout, e2ee_provisioning/alembic/ in a wheel
ALEMBIC_DIR = resources.folder("provisioning/alembic")
# How long a SQLite writer waits for the database lock before "database is locked", ms.
_SQLITE_BUSY_TIMEOUT_MS = 10_000


def make_engine(url: str, sqlite_synchronous: str = "full") -> Engine:
    """An engine for `url`; creates the SQLite file's directory when needed. `sqlite_synchronous`:
    SQLite's PRAGMA synchronous, "full" or "normal" (core/config.py)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        _configure_sqlite(engine, {"full": "FULL", "normal": "NORMAL"}[sqlite_synchronous])
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own BEGIN handling off: SQLAlchemy's "begin" event below emits it
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=%s" % synchronous)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=%d" % _SQLITE_BUSY_TIMEOUT_MS)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def run_migrations(engine: Engine) -> None:
    """Upgrades the database to the newest Alembic revision (provisioning/alembic/)."""
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class DatabaseNotMigrated(RuntimeError):
    """The database is not at the newest revision and the service does not migrate it itself."""


def check_migrations(engine: Engine) -> None:
    """Raises DatabaseNotMigrated unless the database is at the newest Alembic revision."""
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current != head:
        raise DatabaseNotMigrated(
            "database at revision %s, the service needs %s: run `python -m e2ee_provisioning.migrate` "
            "(E2EE_PROV_MIGRATE_AT_STARTUP is false)" % (current or "none", head))
