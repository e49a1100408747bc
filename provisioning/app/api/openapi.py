"""The OpenAPI document's authentication and refusals (docs/provisioning.md, "OpenAPI"; issue 15).

FastAPI documents the headers of api/deps.py as plain parameters and only the 2xx and 422 answers.
`install()` completes the document once, when it is first built:
- `components.securitySchemes`: the operator key (`X-API-Key`) and the three headers of a device
  signature, so Swagger UI at /docs has an Authorize button; each operation's `security` says
  what its dependencies accept (operator, device, either), and those headers leave its parameters;
- the refusals its dependencies can answer (401/403 authentication, 409 a replayed signed request,
  429 rate limits, 413 bodies over the cap), added beside the route's own (404, 409, 410, 423,
  ..., declared on its decorator with `refusals()`), each with the `Refusal` body
  `{"detail": "..."}` that HTTPException sends.
A route's own declaration comes first; what a dependency adds for the same status is appended to
its description.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.routing import BaseRoute

from e2ee_provisioning.api import deps

__all__ = ["DEVICE", "OPERATOR", "SECURITY_SCHEMES", "TAGS", "Refusal", "install", "refusals"]


class Refusal(BaseModel):
    """The body of every refusal (FastAPI's HTTPException): a short reason, never a secret."""
    detail: str


_REFUSAL_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/Refusal"}}}
_RETRY_AFTER = {"description": "seconds to wait before the next request", "schema": {"type": "integer"}}

SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "OperatorKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                    "description": "an operator API key (E2EE_PROV_OPERATOR_API_KEY / _HASHES)"},
    "DeviceId": {"type": "apiKey", "in": "header", "name": "X-E2EE-Device",
                 "description": "device signature, 1 of 3: the signing device's id"},
    "DeviceTimestamp": {"type": "apiKey", "in": "header", "name": "X-E2EE-Timestamp",
                        "description": "device signature, 2 of 3: Unix time in ms, within "
                                       "E2EE_PROV_REQUEST_MAX_SKEW of the service's clock"},
    "DeviceSignature": {"type": "apiKey", "in": "header", "name": "X-E2EE-Signature",
                        "description": "device signature, 3 of 3: base64 Ed25519 signature by the device's "
                                       "identity key over the request (docs/provisioning.md, \"Authentication\")"},
}
# security requirements: the keys of one requirement are all needed, the requirements are alternatives
OPERATOR: dict[str, list[str]] = {"OperatorKey": []}
DEVICE: dict[str, list[str]] = {"DeviceId": [], "DeviceTimestamp": [], "DeviceSignature": []}

# Tags of the routers (api/routes/), described for Swagger UI in this order.
TAGS: list[dict[str, str]] = [
    {"name": "health", "description": "liveness and the service's clock"},
    {"name": "metrics", "description": "Prometheus metrics, no content"},
    {"name": "ca", "description": "the Fleet CA's public keys"},
    {"name": "claims", "description": "enrollment claims (operators)"},
    {"name": "enrollment", "description": "a device enrolls with a claim and proof of possession"},
    {"name": "devices", "description": "the device registry: list, show, revoke, clear a registration lock "
                                       "(operators)"},
    {"name": "device", "description": "a device's own settings (signed)"},
    {"name": "keys", "description": "key directory: prekey uploads, inventory, bundles"},
    {"name": "revocation", "description": "the signed revocation list and certificate status"},
    {"name": "backups", "description": "encrypted backup blobs, sealed on the client"},
    {"name": "linking", "description": "QR linking: rendezvous, identities, links, an owner's devices"},
    {"name": "relay", "description": "the HTTP relay for clients without MQTT"},
    {"name": "groups", "description": "group topics on the broker (operators)"},
    {"name": "reports", "description": "clients' delivery counters"},
]

_OPERATOR_REFUSALS = {401: "no operator API key (X-API-Key)", 403: "the key is not an operator's"}
_DEVICE_REFUSALS = {
    401: "device signature missing, malformed, out of the clock window, of an unknown device or not verifying",
    403: "the signing device is revoked",
    409: "this signed request was used already (a replay)",
}
_BODY_REFUSAL = {413: "the body is over the route's cap (E2EE_PROV_MAX_UPLOAD_BYTES; backup uploads: "
                      "E2EE_PROV_MAX_BACKUP_BYTES)"}
_SECURITY_HEADERS = {scheme["name"].lower() for scheme in SECURITY_SCHEMES.values()}

# What each dependency of api/deps.py accepts and can answer: (security requirements, refusals).
_BY_DEPENDENCY: dict[Callable[..., Any], tuple[list[dict[str, list[str]]], Mapping[int, str]]] = {
    deps.require_operator: ([OPERATOR], _OPERATOR_REFUSALS),
    deps.require_device: ([DEVICE], _DEVICE_REFUSALS),
    deps.require_device_backup: ([DEVICE], _DEVICE_REFUSALS),
    deps.require_requester: ([OPERATOR, DEVICE], {
        401: "neither an operator key nor a device signature, or the signature does not verify",
        403: "the key is not an operator's, or the signing device is revoked",
        409: _DEVICE_REFUSALS[409]}),
    deps.limit_enrollment: ([], {429: "the client address's enrollment rate limit; Retry-After says when to retry"}),
    deps.limit_bundle_fetches: ([], {429: "the requester's bundle fetch rate limit; Retry-After says when to retry"}),
    deps.raw_body: ([], _BODY_REFUSAL),
    deps.backup_body: ([], _BODY_REFUSAL),
}


def refusals(described: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """A route decorator's `responses=` for the refusals the route itself answers."""
    return {code: {"description": text, "model": Refusal} for code, text in described.items()}


def _dependencies(dependant: Dependant) -> Iterable[Callable[..., Any]]:
    for dep in dependant.dependencies:
        if dep.call is not None:
            yield dep.call
        yield from _dependencies(dep)


def _add(added: dict[int, list[str]], code: int, text: str) -> None:
    texts = added.setdefault(code, [])
    if text not in texts:
        texts.append(text)


def _document(doc: dict[str, Any], routes: Sequence[BaseRoute]) -> None:
    doc.setdefault("components", {}).setdefault("schemas", {}).setdefault("Refusal", Refusal.model_json_schema())
    doc["components"]["securitySchemes"] = SECURITY_SCHEMES
    doc["tags"] = TAGS
    for route in routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        security: list[dict[str, list[str]]] = []
        added: dict[int, list[str]] = {}
        for call in _dependencies(route.dependant):
            requirements, answers = _BY_DEPENDENCY.get(call, ([], {}))
            security += [r for r in requirements if r not in security]
            for code, text in answers.items():
                _add(added, code, text)
        for method in route.methods or ():
            operation = doc["paths"][route.path_format].get(method.lower())
            if operation is None:
                continue
            if "requestBody" in operation:  # core/bodylimit.py caps every body
                _add(added, 413, _BODY_REFUSAL[413])
            if security and "security" not in operation:
                operation["security"] = security
            if "parameters" in operation:
                operation["parameters"] = [p for p in operation["parameters"]
                                           if not (p["in"] == "header" and p["name"].lower() in _SECURITY_HEADERS)]
                if not operation["parameters"]:
                    del operation["parameters"]
            responses = operation.setdefault("responses", {})
            for code, texts in sorted(added.items()):
                own = responses.get(str(code))
                if own is None:
                    responses[str(code)] = {"description": "; ".join(texts), "content": _REFUSAL_REF}
                else:
                    own["description"] = "; ".join([own["description"], *texts])
            if "429" in responses:
                responses["429"].setdefault("headers", {})["Retry-After"] = _RETRY_AFTER
            operation["responses"] = dict(sorted(responses.items()))


def install(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """Completes `app`'s OpenAPI document (built once, on first request of /openapi.json) with the
    security schemes, tags and refusals of `routes` (the routers' own APIRoutes)."""
    generate = app.openapi
    state = {"done": False}

    def openapi() -> dict[str, Any]:
        doc = generate()
        if not state["done"]:
            _document(doc, routes)
            state["done"] = True
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
