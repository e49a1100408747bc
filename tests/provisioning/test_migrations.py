"""Alembic (provisioning/alembic/): the revisions apply to an empty database on both engines,
create every table the models declare, and a second run is a no-op; 0007 carries relay messages
over with ids that are never reused."""
from __future__ import annotations

from datetime import datetime, timezone

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from e2ee_provisioning.core.db import ALEMBIC_DIR, make_engine, run_migrations
from e2ee_provisioning.models import Base, Device


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


def _migrate(engine: Engine, revision: str, down: bool = False) -> None:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def _relay_row(conn: Connection, envelope: bytes) -> int:
    return conn.execute(text("INSERT INTO relay_messages (device_pk, sender, envelope, received_at) "
                             "VALUES (1, 'pump-1', :e, :t) RETURNING id"),
                        {"e": envelope, "t": datetime.now(timezone.utc)}).scalar_one()


def test_0007_relay_ids_continue_past_every_id_of_the_old_schema(database_url: str) -> None:
    # issue 13: 0006's relay_messages reused ids on SQLite; 0007 keeps the rows and their ids, and
    # hands out ids above any a client could hold from before (SQLite kept no record of them: above
    # the old API's bound 2^31 - 1; PostgreSQL: where the old sequence stood)
    engine = make_engine(database_url)
    try:
        _migrate(engine, "0006")
        with engine.begin() as conn:
            conn.execute(Device.__table__.insert().values(  # the devices table is the same at 0006
                id=1, device_id="web-1", fleet="plant-north", ik_pub=b"\x01" * 32, is_pub=b"\x01" * 32,
                fingerprint="0" * 32))
            old = [_relay_row(conn, b"env %d" % i) for i in range(3)]
            conn.execute(text("DELETE FROM relay_messages WHERE id <> :kept"), {"kept": old[1]})  # acknowledged
        _migrate(engine, "head")
        with engine.begin() as conn:
            assert conn.execute(text("SELECT id, envelope FROM relay_messages")).all() == [(old[1], b"env 1")]
            new = _relay_row(conn, b"after the upgrade")
            if engine.dialect.name == "sqlite":
                assert new == 2**31
                ddl = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'relay_messages'")).scalar_one()
                assert "AUTOINCREMENT" in ddl and "ON DELETE CASCADE" in ddl, ddl
            else:
                assert new == old[-1] + 1
                assert conn.execute(text(
                    "SELECT data_type, is_identity, identity_generation FROM information_schema.columns "
                    "WHERE table_name = 'relay_messages' AND column_name = 'id'")).one() == (
                        "bigint", "YES", "ALWAYS")
            conn.execute(text("DELETE FROM relay_messages"))
            assert _relay_row(conn, b"after an emptied table") == new + 1  # never reused
        assert {ix["column_names"][0] for ix in inspect(engine).get_indexes("relay_messages")} == {"device_pk"}
        _migrate(engine, "0006", down=True)  # the downgrade works and keeps the rows
        with engine.begin() as conn:
            assert conn.execute(text("SELECT envelope FROM relay_messages")).scalars().all() == [
                b"after an emptied table"]
            _relay_row(conn, b"on 0006 again")
        _migrate(engine, "head")
        with engine.connect() as conn:
            assert len(conn.execute(text("SELECT id FROM relay_messages")).all()) == 2
    finally:
        engine.dispose()


def test_0008_claims_carry_over_unrevoked(database_url: str) -> None:
    # issue 14: 0008 adds claim revocation; claims made before it are not revoked, and the
    # downgrade drops the columns with their revocations
    engine = make_engine(database_url)
    now = datetime.now(timezone.utc)
    try:
        _migrate(engine, "0007")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO enrollment_claims (token_sha256, fleet, label, quota, used, expires_at, "
                              "created_at, owner, roles, require_hardware) VALUES ('ab', 'plant-north', '', 5, 1, "
                              ":t, :t, '', '', false)"), {"t": now})
        _migrate(engine, "head")
        with engine.begin() as conn:
            assert conn.execute(text("SELECT used, revoked_at, revoke_reason FROM enrollment_claims")).one() == (
                1, None, "")
            conn.execute(text("UPDATE enrollment_claims SET revoked_at = :t, revoke_reason = 'leaked'"), {"t": now})
        _migrate(engine, "0007", down=True)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT used FROM enrollment_claims")).scalar_one() == 1
        assert "revoked_at" not in {c["name"] for c in inspect(engine).get_columns("enrollment_claims")}
    finally:
        engine.dispose()
