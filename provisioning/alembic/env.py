"""Alembic environment: runs on the connection the service passes in (core.db.run_migrations),
or on E2EE_PROV_DATABASE_URL / the default SQLite file when run from the alembic command (database
settings only: migrating takes no operator key, docs/decisions.md D19)."""
from __future__ import annotations

from alembic import context

from e2ee_provisioning.models import Base

target_metadata = Base.metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    from e2ee_provisioning.core.config import DatabaseSettings
    from e2ee_provisioning.core.db import make_engine

    engine = make_engine(DatabaseSettings().sqlalchemy_url)
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
