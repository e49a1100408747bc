"""The service's OpenAPI document (api/openapi.py; issue 15 item 5): security schemes for the
operator key and the device signature (Swagger UI's Authorize button), a security requirement on
every authenticated operation, tags on every operation, and every refusal a route's code can raise
documented on that route. The refusals are found by reading the code, not the document: the
statuses (`status.HTTP_4xx`/`5xx`) in the route's function, its dependencies and every function of
the service they call, transitively. Also: every route appears in docs/provisioning.md."""
from __future__ import annotations

import ast
import inspect
import re
import textwrap
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from e2ee_provisioning.api.routes import (
    backups, ca, claims, devices, enrollment, groups, health, keys, links, me, metrics, relay, reports, revocations,
)
from e2ee_provisioning.core.config import Settings
from e2ee_provisioning.main import create_app

ROOT = Path(__file__).resolve().parents[2]
ROUTERS = (health, metrics, ca, claims, enrollment, devices, me, keys, revocations, backups, links, relay, groups,
           reports)
OPERATOR = {"OperatorKey": []}
DEVICE = {"DeviceId": [], "DeviceTimestamp": [], "DeviceSignature": []}


def _routes() -> list[APIRoute]:
    return [r for module in ROUTERS for r in module.router.routes if isinstance(r, APIRoute)]


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """/openapi.json as the running service serves it (SQLite, development key)."""
    data = tmp_path_factory.mktemp("openapi")
    app = create_app(Settings(environment="development", data_dir=data))
    with TestClient(app) as client:
        r = client.get("/openapi.json")
        assert r.status_code == 200
        assert client.get("/docs").status_code == 200
        return r.json()  # type: ignore[no-any-return]


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_security_schemes_operator_key_and_device_signature(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["OperatorKey"] == {**schemes["OperatorKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert {(s["type"], s["in"], s["name"]) for k, s in schemes.items() if k in DEVICE} == {
        ("apiKey", "header", "X-E2EE-Device"), ("apiKey", "header", "X-E2EE-Timestamp"),
        ("apiKey", "header", "X-E2EE-Signature")}
    assert all(s.get("description") for s in schemes.values())


def _requires(route: APIRoute, name: str) -> bool:
    def walk(dependant: Any) -> Iterator[str]:
        for dep in dependant.dependencies:
            yield getattr(dep.call, "__name__", "")
            yield from walk(dep)
    return name in set(walk(route.dependant))


def test_every_authenticated_operation_says_what_it_accepts(document: dict[str, Any]) -> None:
    checked = 0
    for route in _routes():
        for method in route.methods:
            operation = document["paths"][route.path_format][method.lower()]
            security = operation.get("security")
            headers = {p["name"].lower() for p in operation.get("parameters", []) if p["in"] == "header"}
            assert not headers & {"x-api-key", "x-e2ee-device", "x-e2ee-timestamp", "x-e2ee-signature"}, (
                method, route.path)  # they are the security schemes', not parameters
            if _requires(route, "require_requester"):
                assert security == [OPERATOR, DEVICE], (method, route.path)
            elif _requires(route, "require_operator"):
                assert security == [OPERATOR], (method, route.path)
            elif _requires(route, "require_device") or _requires(route, "require_device_backup"):
                assert security == [DEVICE], (method, route.path)
            elif route.endpoint is enrollment.post_enroll:  # a claim enrolls; an operator key may re-register
                assert security == [{}, OPERATOR], security
            else:
                assert security is None, (method, route.path)
                continue
            checked += 1
    assert checked >= 25


def test_every_operation_has_a_described_tag(document: dict[str, Any]) -> None:
    described = {t["name"] for t in document["tags"] if t.get("description")}
    for method, path, operation in _operations(document):
        assert operation.get("tags"), (method, path)
        assert set(operation["tags"]) <= described, (method, path, operation["tags"])


def _function(value: Any) -> Callable[..., Any] | None:
    """The service's own Python function behind a name, if it is one."""
    if isinstance(value, types.FunctionType) and value.__module__.startswith("e2ee_provisioning"):
        return value
    return None


def _statuses(func: Callable[..., Any], seen: set[Callable[..., Any]]) -> set[int]:
    """The HTTP error statuses named in `func` and in every service function it calls."""
    if func in seen:
        return set()
    seen.add(func)
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    found = set()
    names = func.__globals__
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            m = re.fullmatch(r"HTTP_([45]\d\d)_\w+", node.attr)
            if m:
                found.add(int(m.group(1)))
            if isinstance(node.value, ast.Name) and isinstance(names.get(node.value.id), types.ModuleType):
                called = _function(getattr(names[node.value.id], node.attr, None))
                if called:
                    found |= _statuses(called, seen)
        elif isinstance(node, ast.Name):
            called = _function(names.get(node.id))
            if called:
                found |= _statuses(called, seen)
    return found


def _route_statuses(route: APIRoute) -> set[int]:
    seen: set[Callable[..., Any]] = set()
    found = _statuses(route.endpoint, seen)

    def walk(dependant: Any) -> None:
        nonlocal found
        for dep in dependant.dependencies:
            if dep.call is not None and _function(dep.call):
                found |= _statuses(dep.call, seen)
            walk(dep)
    walk(route.dependant)
    return found


def test_every_refusal_a_route_can_answer_is_documented(document: dict[str, Any]) -> None:
    missing = []
    for route in _routes():
        raised = _route_statuses(route)
        for method in route.methods:
            operation = document["paths"][route.path_format][method.lower()]
            expected = raised | ({413} if "requestBody" in operation else set())
            documented = {int(code) for code in operation["responses"]}
            missing += ["%s %s: %d" % (method, route.path, code) for code in sorted(expected - documented)]
            for code in documented & {401, 403, 409, 410, 413, 423, 429}:
                answer = operation["responses"][str(code)]
                assert answer["description"] and "application/json" in answer.get("content", {}), (
                    method, route.path, code)
            if 429 in documented:
                assert "Retry-After" in operation["responses"]["429"]["headers"], (method, route.path)
    assert not missing, missing


def test_the_scan_finds_what_routes_raise() -> None:
    # the check above is only as good as the scan: known answers, through dependencies and helpers
    by_endpoint = {r.endpoint: r for r in _routes()}
    assert _route_statuses(by_endpoint[backups.fetch_backup]) >= {403, 404, 410, 423, 429}
    assert _route_statuses(by_endpoint[links.owner_revoke]) >= {401, 403, 404, 409, 502, 503}  # devices.revoke_...
    assert _route_statuses(by_endpoint[keys.get_bundle]) >= {401, 403, 404, 409, 410, 429}
    assert _route_statuses(by_endpoint[health.get_time]) == set()


def test_every_route_is_in_the_provisioning_doc() -> None:
    text = (ROOT / "docs" / "provisioning.md").read_text()
    missing = []
    for route in _routes():
        # a path parameter may have another name in the doc ({id} for {device_id})
        path = re.sub(r"\\\{\w+\\\}", r"\\{\\w+\\}", re.escape(route.path))
        for method in sorted(route.methods):
            if not re.search(r"`%s\s+%s[`?\[\s]" % (method, path), text):
                missing.append("%s %s" % (method, route.path))
    assert not missing, missing
