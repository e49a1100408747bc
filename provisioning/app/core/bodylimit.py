"""A streaming cap on request bodies, as pure ASGI middleware (docs/provisioning.md, "Request
bodies"; docs/decisions.md D19).

Audit finding 9: routes read their body whole (`request.body()`, FastAPI's JSON parsing) before
any size check, so a 400 MiB chunked body to an unauthenticated route sat in memory before the
413. This middleware runs before any route and any body read:
- a declared Content-Length above the route's cap is answered 413 at once, the body unread;
- a body without a declared length (chunked) is counted as the server receives it, and the read
  that passes the cap raises `BodyTooLarge` (a 413 HTTPException) instead of returning the bytes,
  so at most the cap plus one received piece is ever held.
Both answers carry `Connection: close`: the server closes the connection instead of reading and
discarding the rest of the body to keep it alive. So does any answer sent while the request's body
is not read to its end (a route that ignores its body): the server reads no more of it either.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit", "BodyTooLarge", "RouteLimit"]

_TOO_LARGE = 413


class BodyTooLarge(HTTPException):
    """Raised by the capped receive() when the body passes the route's cap: FastAPI passes it
    through its body parsing unchanged, and the exception handler answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(_TOO_LARGE, "request body exceeds %d bytes" % limit, headers={"Connection": "close"})
        self.limit = limit


@dataclass(frozen=True)
class RouteLimit:
    """The cap of the requests whose method is in `methods` and whose path matches `path`."""
    methods: frozenset[str]
    path: re.Pattern[str]
    limit: int


class BodyLimit:
    """Caps the body of every HTTP request at `default` bytes, or at the first matching
    RouteLimit's."""

    def __init__(self, app: ASGIApp, default: int, routes: Sequence[RouteLimit] = ()) -> None:
        self.app = app
        self.default = default
        self.routes = tuple(routes)

    def limit_for(self, method: str, path: str) -> int:
        for route in self.routes:
            if method in route.methods and route.path.match(path):
                return route.limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = _content_length(scope["headers"])
        if declared is not None and declared > limit:
            await _refuse(send, limit)  # the body stays unread
            return
        received = 0
        started = False
        body_read = declared == 0 or (declared is None and not _chunked(scope["headers"]))

        async def capped_receive() -> Message:
            nonlocal received, body_read
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                body_read = body_read or not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not body_read:  # the rest of the body is not worth reading: close after this answer
                    headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                    message = {**message, "headers": headers + [(b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, capped_receive, tracking_send)
        except BodyTooLarge:
            if started:  # a route streamed its answer before reading on: nothing else to say
                raise
            await _refuse(send, limit)


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses malformed framing; the count still applies
    return None


def _chunked(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(name == b"transfer-encoding" for name, _ in headers)


async def _refuse(send: Send, limit: int) -> None:
    body = json.dumps({"detail": "request body exceeds %d bytes" % limit}).encode()
    await send({"type": "http.response.start", "status": _TOO_LARGE,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
