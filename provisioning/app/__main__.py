"""python -m e2ee_provisioning [--host H] [--port P] [--log-level L] [--workers N]: runs the
service with uvicorn (settings from E2EE_PROV_* variables, core/config.py), over HTTPS when
E2EE_PROV_TLS_CERTFILE and E2EE_PROV_TLS_KEYFILE name a certificate chain and its key.

--workers N > 1: N uvicorn worker processes on one listening socket, one database (PostgreSQL;
SQLite serializes their writes), sharing the Fleet CA file. The migrations (unless
E2EE_PROV_MIGRATE_AT_STARTUP is off) and the first revocation list are done here once, before any
worker starts. State held in a process is per worker (docs/performance.md, "Several workers"):
rate limits (N x the allowance), the /metrics counters (a scrape sees one worker's), and a
configured broker admin connection: the workers would share one MQTT client id, so a broker is
refused with more than one worker.

Settings that do not validate (on defaults: production with the development operator key, D19)
stop it before it listens: one line per problem on stderr, exit status 2. The lines name the
setting and the rule, never the value, which may be a key."""
from __future__ import annotations

import argparse
import os
import sys

import uvicorn
from pydantic import ValidationError

from e2ee_provisioning.core.config import Settings
from e2ee_provisioning.core.logs import configure_logging
from e2ee_provisioning.main import create_app

# Exit status for a configuration the service refuses (as argparse's for a bad command line).
EXIT_BAD_SETTINGS = 2


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as e:
        for error in e.errors(include_url=False, include_context=False, include_input=False):
            where = ".".join(str(part) for part in error["loc"])
            name = "E2EE_PROV_" + where.upper() if where else "settings"
            print("e2ee_provisioning: refusing to start: %s: %s" % (name, error["msg"]), file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)


# The log level of --workers N, for the workers (spawned processes build their app themselves).
_WORKER_LOG_LEVEL = "E2EE_PROVISIONING_WORKER_LOG_LEVEL"


def worker_app() -> object:
    """The app of one of N workers (uvicorn's factory, in the worker process)."""
    settings = _settings()
    configure_logging(os.environ.get(_WORKER_LOG_LEVEL, "info"), settings.log_format)
    return create_app(settings)


def _prepare(settings: Settings) -> None:
    """What every worker's startup would otherwise race for on a new database: migrations and
    the first revocation list (signed with the CA file's key, created here if new)."""
    from e2ee_host.fleet_ca import FileCAKeystore
    from e2ee_provisioning.core.authority import ensure_revocation_list
    from e2ee_provisioning.core.db import check_migrations, make_engine, make_sessionmaker, run_migrations
    engine = make_engine(settings.sqlalchemy_url, settings.sqlite_synchronous)
    try:
        if settings.migrate_at_startup:
            run_migrations(engine)
        else:  # the one-off migration ran before (docs/deployment.md)
            check_migrations(engine)
        with make_sessionmaker(engine)() as session:
            ensure_revocation_list(session, FileCAKeystore(settings.ca_path))
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="e2ee_provisioning", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    args = parser.parse_args()
    settings = _settings()
    configure_logging(args.log_level, settings.log_format)
    # HTTPS when E2EE_PROV_TLS_CERTFILE/KEYFILE are set (both or neither, checked by Settings)
    tls = {}
    if settings.tls_certfile is not None and settings.tls_keyfile is not None:
        tls = {"ssl_certfile": str(settings.tls_certfile), "ssl_keyfile": str(settings.tls_keyfile)}
    if args.workers > 1:
        if settings.broker_admin_user:
            parser.error("--workers > 1 with a broker admin (E2EE_PROV_BROKER_ADMIN_USER): the workers would "
                         "share its MQTT client id; run one worker per service replica")
        _prepare(settings)
        os.environ[_WORKER_LOG_LEVEL] = args.log_level
        uvicorn.run("e2ee_provisioning.__main__:worker_app", factory=True, workers=args.workers, host=args.host,
                    port=args.port, log_level=args.log_level, log_config=None, proxy_headers=False, **tls)
        return
    # log_config=None: uvicorn's loggers keep the one handler and format configured here;
    # proxy_headers=False: the client address is the TCP peer, X-Forwarded-For is read by the
    # service from E2EE_PROV_TRUSTED_PROXIES only (core/proxies.py), not from uvicorn's own list.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level, log_config=None,
                proxy_headers=False, **tls)


if __name__ == "__main__":
    main()
