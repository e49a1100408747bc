"""Alembic (provisioning/alembic/): the first revision applies to an empty database on both
engines, creates every table the models declare, and a second run is a no-op."""
from __future__ import annotations

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from e2ee_provisioning.core.db import ALEMBIC_DIR, make_engine, run_migrations
from e2ee_provisioning.models import Base


def test_migrations_apply_to_an_empty_database(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        assert inspect(engine).get_table_names() == []
        run_migrations(engine)
        run_migrations(engine)  # already at head: nothing to do, no error
        tables = set(inspect(engine).get_table_names())
        assert tables == set(Base.metadata.tables) | {"alembic_version"}
        config = Config()
        config.set_main_option("script_location", str(ALEMBIC_DIR))
        head = ScriptDirectory.from_config(config).get_current_head()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head
        # the migration and the models agree column by column
        for name, table in Base.metadata.tables.items():
            migrated = {c["name"] for c in inspect(engine).get_columns(name)}
            assert migrated == set(table.columns.keys()), name
    finally:
        engine.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine("sqlite:///%s" % (tmp_path / "p.db"))
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()
