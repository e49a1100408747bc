"""The e2ee-iot provisioning service and key directory (docs/provisioning.md)."""
from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str) -> object:
    # `from e2ee_provisioning import create_app` without importing FastAPI at package import
    if name == "create_app":
        from e2ee_provisioning.main import create_app

        return create_app
    raise AttributeError(name)
