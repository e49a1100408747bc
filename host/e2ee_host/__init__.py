"""e2ee-iot host SDK (CPython): the device protocol core plus what hosts need around it."""
from __future__ import annotations

__all__: list[str] = []
