"""python -m e2ee_provisioning [--host H] [--port P] [--log-level L]: runs the service with
uvicorn (settings from E2EE_PROV_* variables, core/config.py), over HTTPS when
E2EE_PROV_TLS_CERTFILE and E2EE_PROV_TLS_KEYFILE name a certificate chain and its key.

Settings that do not validate (on defaults: production with the development operator key, D19)
stop it before it listens: one line per problem on stderr, exit status 2. The lines name the
setting and the rule, never the value, which may be a key."""
from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="e2ee_provisioning", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args()
    settings = _settings()
    configure_logging(args.log_level, settings.log_format)
    # log_config=None: uvicorn's loggers keep the one handler and format configured here;
    # proxy_headers=False: the client address is the TCP peer, X-Forwarded-For is read by the
    # service from E2EE_PROV_TRUSTED_PROXIES only (core/proxies.py), not from uvicorn's own list.
    # HTTPS when E2EE_PROV_TLS_CERTFILE/KEYFILE are set (both or neither, checked by Settings)
    tls = {}
    if settings.tls_certfile is not None and settings.tls_keyfile is not None:
        tls = {"ssl_certfile": str(settings.tls_certfile), "ssl_keyfile": str(settings.tls_keyfile)}
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level, log_config=None,
                proxy_headers=False, **tls)


if __name__ == "__main__":
    main()
