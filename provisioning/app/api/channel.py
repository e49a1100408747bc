"""The service channel over MQTT (docs/provisioning.md, "Service channel"): what a board asks of
the service when its MQTT connection is its only link, as AWS IoT's jobs and fleet-provisioning
topics do. The broker admin (e2ee_host.broker.DynSec(on_request=...)) hands every request to
`ServiceChannel.on_request` on a worker thread of its own; the answer goes back on the asker's
answer topic through the same admin.

    e2ee/v1/<fleet>/svc/<device_id>/req   a device's requests, signed by its identity key IS
    e2ee/v1/<fleet>/svc/<device_id>/resp  the answers (only that device reads them)
    e2ee/v1/<fleet>/enroll/<claim>/req    enrollment by claim (zero-touch): the claim's credential
    e2ee/v1/<fleet>/enroll/<claim>/resp   writes req and reads resp, nothing else

A request is one JSON line and the body after it:
    {"id": "<request id>", "m": "GET", "p": "/keys/gw-1/bundle", "ts": <Unix ms>, "sig": "<base64>"}\\n<body>
`ts` and `sig` are the X-E2EE-Timestamp and X-E2EE-Signature of the HTTP API over the same bytes,
signed_request_message(m, p, ts, device_id, body) with the device id of the topic, checked by the
same code (api/deps.py verify_signed: skew, revoked devices, single use). An answer is
    {"id": "<request id>", "status": 200, "body": {...the HTTP answer's JSON...}}
    {"id": "<request id>", "status": 404, "detail": "no such device"}
with the status and detail the HTTP route gives. Every operation calls the HTTP routes' own
functions: the business logic is not forked. A request that is not one (no JSON line, a field of
the wrong type, an operation the channel does not serve) gets an error answer (400/404/413/422),
never an exception out of the worker; `id` is null when the request's own could not be read.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from types import SimpleNamespace
from typing import Any, Callable

from fastapi import FastAPI, HTTPException, Response, status
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from e2ee.transport import topics
from e2ee_provisioning.api.deps import (
    AuthenticatedDevice, Requester, SignedHeaders, bundle_rate_allows, verify_signed,
)
from e2ee_provisioning.api.routes import enrollment, health, keys, links, reports, revocations
from e2ee_provisioning.core.broker import BrokerAdmin, BrokerError
from e2ee_provisioning.core.security import timestamp_ms
from e2ee_provisioning.models import (
    DEVICE_ID_MAX, ChannelBundle, ClaimPublic, EnrollmentClaim, EnrollmentRequest, PrekeyUpload, utcnow,
)

__all__ = ["MAX_HEADER", "ServiceChannel", "provision_claim_credentials", "retire_revoked_claim"]

log = logging.getLogger(__name__)

# The JSON line before the body: an id, a method, a path of at most a device id's length plus
# "/keys//inventory", a Unix ms timestamp and a base64 signature fit in 300 bytes; 1024 leaves room.
MAX_HEADER = 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_DEVICE_ID = r"[A-Za-z0-9._-]{1,%d}" % DEVICE_ID_MAX
_BUNDLE = re.compile(r"^/keys/(%s)/bundle$" % _DEVICE_ID)
_INVENTORY = re.compile(r"^/keys/(%s)/inventory$" % _DEVICE_ID)
# A broker password a board chooses for itself at enrollment by claim: URL-safe base64 of 18..48
# random bytes (the service makes 24 for HTTP enrollments).
_PASSWORD = re.compile(r"^[A-Za-z0-9_-]{24,64}$")


class _Request:
    def __init__(self, rid: str, method: str, path: str, ts: int | None, sig: bytes | None, body: bytes) -> None:
        self.id, self.method, self.path, self.ts, self.sig, self.body = rid, method, path, ts, sig, body


def _parse(payload: bytes, limit: int) -> _Request:
    """The request in `payload`; HTTPException 400/413 when it is not one."""
    if len(payload) > MAX_HEADER + limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "request of %d bytes exceeds %d" % (
            len(payload), MAX_HEADER + limit))
    line, _, body = payload.partition(b"\n")
    if len(line) > MAX_HEADER:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "request line over %d bytes" % MAX_HEADER)
    try:
        head = json.loads(line)
    except (ValueError, UnicodeError):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "request line is not JSON") from None
    if not isinstance(head, dict):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "request line is not a JSON object")
    rid, method, path = head.get("id"), head.get("m"), head.get("p")
    if not isinstance(rid, str) or not _REQUEST_ID.match(rid):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "request id must be 1..32 of A-Z a-z 0-9 _ -")
    if method not in ("GET", "POST") or not isinstance(path, str) or not path.startswith("/") or len(path) > 256:
        raise _Refusal(rid, status.HTTP_400_BAD_REQUEST, "request needs m (GET or POST) and p (a path)")
    ts, sig = head.get("ts"), head.get("sig")
    if ts is None and sig is None:
        return _Request(rid, method, path, None, None, body)
    if type(ts) is not int or not 0 < ts < 2**63 or not isinstance(sig, str):
        raise _Refusal(rid, status.HTTP_401_UNAUTHORIZED, "a signed request needs ts (Unix ms) and sig (base64)")
    try:
        signature = base64.b64decode(sig, validate=True)
    except (ValueError, binascii.Error):
        raise _Refusal(rid, status.HTTP_401_UNAUTHORIZED, "malformed sig") from None
    return _Request(rid, method, path, ts, signature, body)


class _Refusal(HTTPException):
    """An HTTPException raised before the request could be served, once its id is known."""

    def __init__(self, rid: str, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.rid = rid


def _json_body(model: type[BaseModel], body: bytes) -> Any:
    """The body as `model`; 400 (not JSON) or 422 (the model's first complaint), as HTTP says."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        errors = e.errors()
        if errors and errors[0].get("type") == "json_invalid":
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "body is not JSON") from None
        where = ".".join(str(p) for p in errors[0].get("loc", ())) if errors else ""
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "%s: %s" % (
            where or "body", errors[0].get("msg", "invalid") if errors else "invalid")) from None


class ServiceChannel:
    """Serves the channel's requests for the service `app` (its settings, database, CA, metrics,
    rate limits and broker admin, read from app.state when a request comes)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def on_request(self, topic: str, payload: bytes) -> None:
        """Serves one request and publishes its answer (DynSec's request worker). Raises only
        BrokerError (the answer could not be published: the asker's request times out)."""
        parts = topic.split("/")
        if len(parts) != 6 or parts[5] != "req" or parts[3] not in ("svc", "enroll"):
            return
        fleet, kind, who = parts[2], parts[3], parts[4]
        answer_topic = topics.service_response(fleet, who) if kind == "svc" else topics.enroll_response(fleet, who)
        rid: str | None = None
        after: Callable[[], None] | None = None
        try:
            request = _parse(payload, self.app.state.settings.max_upload_bytes)
            rid = request.id
            with self.app.state.sessionmaker() as session:
                if kind == "svc":
                    body = self._serve_device(session, fleet, who, request)
                else:
                    body, after = self._serve_claim(session, fleet, who, request)
            answer: dict[str, Any] = {"id": rid, "status": 200, "body": body}
        except HTTPException as e:
            rid = getattr(e, "rid", rid)
            answer = {"id": rid, "status": e.status_code, "detail": str(e.detail)}
            if after is None and kind == "enroll" and who.isdigit():
                with self.app.state.sessionmaker() as session:
                    after = self._retire_if_spent(session, fleet, who)
        except Exception as e:  # a fault of ours: the asker learns it, the worker goes on
            log.error("service channel: %s on %s", type(e).__name__, topic)
            answer = {"id": rid, "status": 500, "detail": "internal error"}
        self.app.state.metrics.inc("e2ee_channel_requests_total", kind="device" if kind == "svc" else "claim",
                                   status="%dxx" % (answer["status"] // 100))
        self.app.state.broker.publish_answer(answer_topic, json.dumps(answer, separators=(",", ":")).encode())
        if after is not None:
            after()

    # --- devices: e2ee/v1/<fleet>/svc/<device_id>/req ---

    def _serve_device(self, session: Session, fleet: str, device_id: str, request: _Request) -> Any:
        state = self.app.state
        if not state.channel_buckets.allow("svc:%s/%s" % (fleet, device_id)):
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "service channel rate limit")
        route = (request.method, request.path)
        if route == ("GET", "/time"):
            return health.get_time().model_dump(mode="json")
        if route == ("GET", "/revocations"):
            return revocations.get_revocation_list(session, state.ca, Response()).model_dump(mode="json")
        if request.ts is None or request.sig is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "device signature required (ts, sig)")
        device = verify_signed(session, state.settings, state.metrics, request.method, request.path,
                               SignedHeaders(device_id, request.ts, request.sig), request.body)
        if device.fleet != fleet:  # the broker's ACLs keep a device to its own topics anyway
            raise HTTPException(status.HTTP_403_FORBIDDEN, "this device is not in fleet %s" % fleet)
        bundle = _BUNDLE.match(request.path)
        if request.method == "GET" and bundle:
            peer = bundle.group(1)
            ident = links.identity(session=session, requester=device, device_id=peer)  # before the OPK is taken
            bundle_rate_allows(state.bundle_buckets, Requester(device).rate_key, state.metrics)
            served = keys.serve_bundle(session=session, metrics=state.metrics, requester=device, device_id=peer)
            return ChannelBundle(**served.model_dump(), certificate=ident.certificate).model_dump(mode="json")
        inventory = _INVENTORY.match(request.path)
        if request.method == "GET" and inventory:
            return keys.get_inventory(inventory.group(1), Requester(device), session, state.settings).model_dump(
                mode="json")
        if route == ("POST", "/keys"):
            upload = _json_body(PrekeyUpload, request.body)
            auth = AuthenticatedDevice(device, timestamp_ms(request.ts))
            return keys.upload_prekeys(upload, auth, session, state.settings, state.metrics).model_dump(mode="json")
        if route == ("POST", "/reports"):
            report = _json_body(reports.ClientReport, request.body)
            reports.record_report(report, AuthenticatedDevice(device, timestamp_ms(request.ts)), state.report_buckets,
                                  state.metrics)
            return {}
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the service channel has no %s %s" % route)

    # --- claims: e2ee/v1/<fleet>/enroll/<claim id>/req ---

    def _serve_claim(self, session: Session, fleet: str, claim: str, request: _Request) -> tuple[
            Any, Callable[[], None] | None]:
        state = self.app.state
        if not claim.isdigit() or not state.enroll_buckets.allow("claim:%s/%s" % (fleet, claim)):
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "enrollment rate limit")
        if _unusable(session, fleet, int(claim)):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "this claim is spent, expired or revoked")
        route = (request.method, request.path)
        if route == ("POST", "/enroll/challenge"):
            # the route reads request.app.state.broker only: the channel's app stands in for an HTTP request
            challenge = enrollment.post_challenge(SimpleNamespace(app=self.app), session, state.settings,  # type: ignore[arg-type]
                                                  state.metrics)
            return challenge.model_dump(mode="json"), None
        if route != ("POST", "/enroll"):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "the enrollment channel has no %s %s" % route)
        try:
            doc = json.loads(request.body)
        except (ValueError, UnicodeError):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "body is not JSON") from None
        if not isinstance(doc, dict):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "body must be a JSON object")
        password = doc.pop("mqtt_password", None)
        if not isinstance(password, str) or not _PASSWORD.match(password):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                "mqtt_password: 24..64 of A-Z a-z 0-9 _ - (the broker password the board chose)")
        req = _json_body(EnrollmentRequest, json.dumps(doc).encode())
        if req.fleet != fleet:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "this claim credential is for fleet %s" % fleet)
        spent = session.scalar(select(EnrollmentClaim.id).where(
            EnrollmentClaim.token_sha256 == hashlib.sha256(req.claim_token.encode()).hexdigest()))
        if spent is not None and spent != int(claim):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "the claim token is not this credential's claim")
        result = enrollment.enroll(req, session=session, settings=state.settings, metrics=state.metrics, ca=state.ca,
                                   broker=state.broker, operator=False, mqtt_password=password,
                                   retire_spent_claim=False)
        body = result.model_dump(mode="json")
        if body.get("mqtt"):
            body["mqtt"].pop("password", None)  # the board chose it: it never travels back
        return body, self._retire_if_spent(session, fleet, claim)  # after the answer: it goes over that credential

    def _retire_if_spent(self, session: Session, fleet: str, claim: str) -> Callable[[], None] | None:
        """After an enrollment request: the credential of a claim that can no longer be spent goes
        (its holder is disconnected once the answer is out)."""
        if not _unusable(session, fleet, int(claim)):
            return None
        broker: BrokerAdmin = self.app.state.broker

        def retire() -> None:
            try:
                broker.remove_claim(fleet, int(claim))
                self.app.state.metrics.inc("e2ee_claim_credentials_retired_total")
            except BrokerError:
                log.warning("the broker did not remove the credential of claim %s", claim)
        return retire


def _unusable(session: Session, fleet: str, claim_id: int) -> bool:
    """The claim does not exist in this fleet, or is used up, expired or revoked."""
    claim = session.get(EnrollmentClaim, claim_id)
    return (claim is None or claim.fleet != fleet or claim.used >= claim.quota or claim.expires_at <= utcnow()
            or claim.revoked_at is not None)


def retire_revoked_claim(app: FastAPI) -> Callable[[ClaimPublic], None]:
    """The hook (routes/claims.py on_claim_revoked) that deletes a revoked claim's broker
    credential, ending a connection it holds; BrokerError when the broker does not answer."""
    def retire(claim: ClaimPublic) -> None:
        broker: BrokerAdmin | None = app.state.broker
        if broker is not None:
            broker.remove_claim(claim.fleet, claim.id)
    return retire


def provision_claim_credentials(session: Session, broker: BrokerAdmin, claims: list[EnrollmentClaim],
                                tokens: list[str]) -> None:
    """Broker credentials for just-created claims (POST /claims with mqtt): username claim:<id>,
    the token as password, only their enroll topics. When the broker refuses one, those made are
    removed, the claims deleted (their tokens were never shown) and the answer is 503."""
    made: list[EnrollmentClaim] = []
    try:
        for claim, token in zip(claims, tokens):
            broker.provision_claim(claim.fleet, claim.id, token)
            made.append(claim)
    except BrokerError:
        for claim in made:
            try:
                broker.remove_claim(claim.fleet, claim.id)
            except BrokerError:
                pass
        for claim in claims:
            session.delete(claim)
        session.commit()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the broker did not take the claims' "
                            "credentials; no claim was created") from None
