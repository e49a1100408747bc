"""Request durations for /metrics, as pure ASGI middleware: e2ee_http_request_duration_seconds by
route template (`/keys/{device_id}/bundle`, never the path itself: no device id in a label),
method and status class. The outermost middleware, so refusals before any route (body limit,
NUL in the URL) are timed too; a request no route matches is `unmatched`."""
from __future__ import annotations

import time

from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from e2ee_provisioning.core.metrics import LABEL_VALUES, Metrics

__all__ = ["RequestMetrics", "UNMATCHED"]

UNMATCHED = "unmatched"


def route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The template of the route that served the request or, for a request refused before
    routing, of the first of `routes` that matches it; else UNMATCHED."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    for candidate in routes:
        match, _ = candidate.matches(scope)
        if match != Match.NONE and isinstance(getattr(candidate, "path", None), str):
            return candidate.path  # type: ignore[attr-defined, no-any-return]
    return UNMATCHED


class RequestMetrics:
    """`routes`: the app's routes with their full paths (the routers' own: they are included
    without a prefix), for requests refused before routing."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception out of the app: the server error middleware answers 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"] if scope["method"] in LABEL_VALUES["method"] else "other"
            self.metrics.observe("e2ee_http_request_duration_seconds", time.perf_counter() - started,
                                 route=route_template(scope, self.routes), method=method, status="%dxx" % (status // 100))
