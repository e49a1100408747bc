"""e2ee-iot host SDK (CPython): the device protocol core plus what hosts need around it.

`e2ee_host.Client` (e2ee_host.sdk) is the application's entry point: docs/host-client.md, "The SDK".
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from e2ee_host.sdk import Client, ClientClosed, ClientError, Message, Outgoing

__all__ = ["Client", "ClientClosed", "ClientError", "Message", "Outgoing"]


def __getattr__(name: str) -> Any:  # imported on first use: `import e2ee_host.cli` stays light
    if name in __all__:
        from e2ee_host import sdk
        return getattr(sdk, name)
    raise AttributeError("module 'e2ee_host' has no attribute %r" % name)
