"""python -m e2ee_provisioning [--host H] [--port P]: runs the service with uvicorn
(settings from E2EE_PROV_* variables, core/config.py)."""
from __future__ import annotations

import argparse

import uvicorn

from e2ee_provisioning.main import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="e2ee_provisioning", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
