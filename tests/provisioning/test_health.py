"""/healthz (api/routes/health.py) on both engines."""
from __future__ import annotations

from sqlalchemy import create_engine

from e2ee_provisioning.core.db import make_sessionmaker


def test_healthz_answers_without_credentials(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_healthz_reports_a_dead_database(client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a database file in a directory that does not exist cannot be opened
    client.app.state.sessionmaker = make_sessionmaker(create_engine("sqlite:///%s" % (tmp_path / "no" / "x.db")))
    r = client.get("/healthz")
    assert r.status_code == 503
    assert r.json() == {"detail": "database unavailable"}
