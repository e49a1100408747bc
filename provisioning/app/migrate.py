"""python -m e2ee_provisioning.migrate: upgrades the database (E2EE_PROV_DATABASE_URL, or the
default SQLite file under E2EE_PROV_DATA_DIR) to the newest Alembic revision and exits.

The one-off step of a deployment with several replicas (docs/deployment.md): it runs once, before
the replicas, which start with E2EE_PROV_MIGRATE_AT_STARTUP=false and only check the revision. It
reads the database settings only: migrating takes no operator key (docs/decisions.md D19)."""
from __future__ import annotations

import sys

from e2ee_provisioning.core.config import DatabaseSettings
from e2ee_provisioning.core.db import make_engine, run_migrations


def main() -> None:
    engine = make_engine(DatabaseSettings().sqlalchemy_url)
    try:
        run_migrations(engine)
    finally:
        engine.dispose()
    print("e2ee_provisioning.migrate: database at the newest revision", file=sys.stderr)


if __name__ == "__main__":
    main()
