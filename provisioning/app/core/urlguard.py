"""Refuses request URLs that carry a NUL character (pure ASGI middleware, issue 12, finding 11).

No id, name, token or serial of the API contains NUL, and PostgreSQL's text columns cannot hold
one: a `%00` in a path or query parameter that reached a query was a driver error (500) on
PostgreSQL and a useless lookup on SQLite. It is answered 422 before routing, on both engines.
JSON text fields refuse NUL in their models (models.py, `NO_NUL`).
"""
from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["RefuseNul"]

_UNPROCESSABLE = 422


class RefuseNul:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope["query_string"]
                                        or b"\x00" in scope["query_string"]):
            body = json.dumps({"detail": "NUL character in the request path or query"}).encode()
            await send({"type": "http.response.start", "status": _UNPROCESSABLE,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
