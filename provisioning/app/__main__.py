"""python -m e2ee_provisioning [--host H] [--port P] [--log-level L]: runs the service with
uvicorn (settings from E2EE_PROV_* variables, core/config.py)."""
from __future__ import annotations

import argparse
import logging

import uvicorn

from e2ee_provisioning.main import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="e2ee_provisioning", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
