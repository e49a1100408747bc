"""Dependencies of the routes, as Annotated aliases: settings, DB session, operator and device
authentication, the bundle-fetch rate limit.

FastAPI runs every plain `def` dependency in its thread pool, a hop of two thread switches
each; the ones here that do no I/O are `async def` and run on the event loop (issue 16: the
hops were most of a bundle fetch's CPU). Whatever talks to the database stays in the pool."""
from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Query, Request, status
from starlette.concurrency import run_in_threadpool
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from e2ee import crypto
from e2ee.crypto.errors import CryptoError
from e2ee_host.fleet_ca import CAKeystore
from e2ee_provisioning.core.config import Settings
from e2ee_provisioning.core.metrics import Metrics
from e2ee_provisioning.core.ratelimit import SharedTokenBuckets, TokenBuckets
from e2ee_provisioning.core.security import operator_key_matches, signed_request_message, timestamp_ms
from e2ee_provisioning.models import Device, Revocation, SignedRequest

__all__ = [
    "AuthenticatedDevice", "BundleRateLimit", "CADep", "DeviceBackupAuth", "DeviceAuth", "EnrollRateLimit", "MetricsDep",
    "OperatorAuth", "Requester", "RequesterAuth", "SessionDep", "SettingsDep", "SignedHeaders", "accept_signed_write",
    "bundle_rate_allows", "device_is_revoked", "verify_signed", "MAX_SQL_INTEGER", "Offset", "PageLimit", "RelayId",
]


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session (made without touching the database); closed after the response, in the thread
    pool when it still holds a connection (closing rolls back: a database round trip)."""
    session: Session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


async def get_ca(request: Request) -> CAKeystore:
    return request.app.state.ca  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
CADep = Annotated[CAKeystore, Depends(get_ca)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
SessionDep = Annotated[Session, Depends(get_session)]


def _refuse(metrics: Metrics, code: int, detail: str) -> HTTPException:
    metrics.inc("e2ee_auth_failures_total")
    headers = {"WWW-Authenticate": "ApiKey"} if code == status.HTTP_401_UNAUTHORIZED else None
    return HTTPException(code, detail, headers=headers)


# --- operators ------------------------------------------------------------------------------

def _check_operator(key: str | None, settings: Settings, metrics: Metrics) -> None:
    # 401: no credentials at all; 403: credentials given but not an operator's
    if not key:
        raise _refuse(metrics, status.HTTP_401_UNAUTHORIZED, "operator API key required (X-API-Key)")
    if not operator_key_matches(key, settings.operator_key_hashes()):
        raise _refuse(metrics, status.HTTP_403_FORBIDDEN, "invalid operator API key")


async def require_operator(settings: SettingsDep, metrics: MetricsDep,
                     x_api_key: Annotated[str | None, Header()] = None) -> None:
    _check_operator(x_api_key, settings, metrics)


OperatorAuth = Depends(require_operator)


# --- devices --------------------------------------------------------------------------------

async def _limited_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "body of %s bytes exceeds %d" % (declared, limit))
    body = await request.body()
    if len(body) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "body of %d bytes exceeds %d" % (len(body), limit))
    return body


async def raw_body(request: Request, settings: SettingsDep) -> bytes:
    return await _limited_body(request, settings.max_upload_bytes)


async def backup_body(request: Request, settings: SettingsDep) -> bytes:
    return await _limited_body(request, settings.max_backup_bytes)


@dataclass(frozen=True)
class SignedHeaders:
    device_id: str
    timestamp: int
    signature: bytes


def _signed_headers(device: str | None, timestamp: str | None, signature: str | None,
                    metrics: Metrics) -> SignedHeaders | None:
    if device is None and timestamp is None and signature is None:
        return None
    if not device or not timestamp or not signature:
        raise _refuse(metrics, status.HTTP_401_UNAUTHORIZED,
                      "signed request needs X-E2EE-Device, X-E2EE-Timestamp and X-E2EE-Signature")
    try:
        ts = int(timestamp)
        sig = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error):
        raise _refuse(metrics, status.HTTP_401_UNAUTHORIZED, "malformed X-E2EE-Timestamp or X-E2EE-Signature")
    return SignedHeaders(device, ts, sig)


def device_is_revoked(session: Session, device: Device) -> bool:
    return session.scalar(select(Revocation.id).where(Revocation.device_pk == device.id)) is not None


def _verify_device(request: Request, session: Session, settings: Settings, metrics: Metrics,
                   signed: SignedHeaders, body: bytes) -> Device:
    target = request.url.path + ("?" + request.url.query if request.url.query else "")  # the query is signed too
    return verify_signed(session, settings, metrics, request.method, target, signed, body)


def verify_signed(session: Session, settings: Settings, metrics: Metrics, method: str, target: str,
                  signed: SignedHeaders, body: bytes) -> Device:
    """The registered, unrevoked device whose IS signed `method target` with `body` at
    `signed.timestamp` (within the skew), the signed message spent (single use); HTTPException
    401/403/409 otherwise. HTTP requests and the MQTT service channel (api/channel.py) both
    come through here, over the same signed bytes."""
    if abs(time.time() * 1000 - timestamp_ms(signed.timestamp)) > settings.request_max_skew * 1000:
        raise _refuse(metrics, status.HTTP_401_UNAUTHORIZED,
                      "request timestamp is more than %d s from server time" % settings.request_max_skew)
    device = session.scalar(select(Device).where(Device.device_id == signed.device_id))
    if device is None:
        raise _refuse(metrics, status.HTTP_401_UNAUTHORIZED, "unknown device")
    message = signed_request_message(method, target, signed.timestamp, signed.device_id, body)
    try:
        crypto.ed25519_verify(device.is_pub, message, signed.signature)
    except CryptoError:
        raise _refuse(metrics, status.HTTP_401_UNAUTHORIZED, "request signature does not verify")
    if device_is_revoked(session, device):
        raise _refuse(metrics, status.HTTP_403_FORBIDDEN, "device is revoked")
    _spend(session, settings, metrics, message, signed.timestamp)
    return device


# Expired single-use records deleted per signed request: more than the one each request adds, so
# the table stays near (requests in the last 300 s) rows.
_EXPIRED_PER_REQUEST = 64


def _spend(session: Session, settings: Settings, metrics: Metrics, message: bytes, timestamp: int) -> None:
    """Records the verified request's message as used, committed before the route runs, so a
    signed request is single use whatever the route answers; the same message again is a replay:
    409 (issue 12, finding 10). Records leave once their timestamp is outside the window."""
    # expired records, a bounded batch, skipping rows a concurrent request is deleting (PostgreSQL)
    expired = (select(SignedRequest.id).where(SignedRequest.expires_at < int(time.time()))
               .limit(_EXPIRED_PER_REQUEST).with_for_update(skip_locked=True))
    session.execute(delete(SignedRequest).where(SignedRequest.id.in_(expired))
                    .execution_options(synchronize_session=False))
    session.add(SignedRequest(digest=hashlib.sha256(message).digest(),
                              expires_at=timestamp_ms(timestamp) // 1000 + settings.request_max_skew + 2))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise _refuse(metrics, status.HTTP_409_CONFLICT, "this signed request was used already (a replay)")


@dataclass(frozen=True)
class AuthenticatedDevice:
    device: Device
    timestamp: int  # the signed timestamp in Unix ms; writes store it as the device's newest


def _require_device(request: Request, session: Session, settings: Settings, metrics: Metrics, body: bytes,
                    device: str | None, timestamp: str | None, signature: str | None) -> AuthenticatedDevice:
    signed = _signed_headers(device, timestamp, signature, metrics)
    if signed is None:
        raise _refuse(metrics, status.HTTP_401_UNAUTHORIZED, "device signature required (X-E2EE-Signature)")
    device = _verify_device(request, session, settings, metrics, signed, body)
    return AuthenticatedDevice(device, timestamp_ms(signed.timestamp))


def require_device(request: Request, session: SessionDep, settings: SettingsDep, metrics: MetricsDep,
                   body: Annotated[bytes, Depends(raw_body)],
                   x_e2ee_device: Annotated[str | None, Header()] = None,
                   x_e2ee_timestamp: Annotated[str | None, Header()] = None,
                   x_e2ee_signature: Annotated[str | None, Header()] = None) -> AuthenticatedDevice:
    return _require_device(request, session, settings, metrics, body, x_e2ee_device, x_e2ee_timestamp,
                           x_e2ee_signature)


def require_device_backup(request: Request, session: SessionDep, settings: SettingsDep, metrics: MetricsDep,
                          body: Annotated[bytes, Depends(backup_body)],
                          x_e2ee_device: Annotated[str | None, Header()] = None,
                          x_e2ee_timestamp: Annotated[str | None, Header()] = None,
                          x_e2ee_signature: Annotated[str | None, Header()] = None) -> AuthenticatedDevice:
    """A device-signed request whose body may be as large as a backup blob."""
    return _require_device(request, session, settings, metrics, body, x_e2ee_device, x_e2ee_timestamp,
                           x_e2ee_signature)


DeviceAuth = Annotated[AuthenticatedDevice, Depends(require_device)]
DeviceBackupAuth = Annotated[AuthenticatedDevice, Depends(require_device_backup)]


def accept_signed_write(session: Session, auth: AuthenticatedDevice) -> bool:
    """Records the signed timestamp of a device's write as its newest; False (and the
    transaction rolled back) when it is not newer than an earlier accepted write: a replay."""
    newer = session.execute(update(Device).where(Device.id == auth.device.id,
                                                  Device.last_signed_at < auth.timestamp)
                            .values(last_signed_at=auth.timestamp))
    if newer.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return False
    return True


@dataclass(frozen=True)
class Requester:
    """Who made a read request: an operator (device None) or a registered device."""
    device: Device | None

    @property
    def rate_key(self) -> str:
        return "operator" if self.device is None else "device:%d" % self.device.id


async def require_requester(request: Request, session: SessionDep, settings: SettingsDep, metrics: MetricsDep,
                            body: Annotated[bytes, Depends(raw_body)],
                            x_api_key: Annotated[str | None, Header()] = None,
                            x_e2ee_device: Annotated[str | None, Header()] = None,
                            x_e2ee_timestamp: Annotated[str | None, Header()] = None,
                            x_e2ee_signature: Annotated[str | None, Header()] = None) -> Requester:
    """An operator key or a device signature, whichever the request carries (the signature's
    check reads and writes the database: in the thread pool)."""
    if x_api_key is not None:
        _check_operator(x_api_key, settings, metrics)
        return Requester(None)
    signed = _signed_headers(x_e2ee_device, x_e2ee_timestamp, x_e2ee_signature, metrics)
    if signed is None:
        raise _refuse(metrics, status.HTTP_401_UNAUTHORIZED, "operator API key or device signature required")
    return Requester(await run_in_threadpool(_verify_device, request, session, settings, metrics, signed, body))


RequesterAuth = Annotated[Requester, Depends(require_requester)]


# --- rate limits ----------------------------------------------------------------------------

async def limit_bundle_fetches(request: Request, requester: RequesterAuth, metrics: MetricsDep) -> Requester:
    """One token per bundle fetch from the requester's bucket (per device, or per client address
    for operator keys); 429 with Retry-After when it is empty."""
    key = requester.rate_key
    if requester.device is None:
        key += ":" + request.app.state.proxies.client_address(request)
    await _on_loop_or_pool(request.app.state.bundle_buckets, bundle_rate_allows, request.app.state.bundle_buckets,
                           key, metrics)
    return requester


async def _on_loop_or_pool(buckets: TokenBuckets, check: Callable[..., None], *args: Any) -> None:
    """check(*args) on the event loop for in-process buckets; in the thread pool for the shared
    store's, whose allow() is a Redis round trip (it must not hold up the loop)."""
    if isinstance(buckets, SharedTokenBuckets):
        await run_in_threadpool(check, *args)
    else:
        check(*args)


def bundle_rate_allows(buckets: TokenBuckets, key: str, metrics: Metrics) -> None:
    """Takes a token from `key`'s bucket (Requester.rate_key: devices share one bucket across
    HTTP and the service channel); 429 with Retry-After when it is empty."""
    if not buckets.allow(key):
        metrics.inc("e2ee_bundle_fetches_rate_limited_total")
        retry = max(1, int(1 / buckets.per_second))
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "bundle fetch rate limit",
                            headers={"Retry-After": str(retry)})


BundleRateLimit = Annotated[Requester, Depends(limit_bundle_fetches)]


async def limit_enrollment(request: Request, metrics: MetricsDep) -> None:
    """One token per challenge or enrollment request from the client address's bucket (behind a
    trusted proxy, the address it forwarded: core/proxies.py); 429 with Retry-After when it is
    empty (before anything is read or written)."""
    buckets: TokenBuckets = request.app.state.enroll_buckets
    await _on_loop_or_pool(buckets, _enrollment_allows, buckets, request, metrics)


def _enrollment_allows(buckets: TokenBuckets, request: Request, metrics: Metrics) -> None:
    if not buckets.allow(request.app.state.proxies.client_address(request)):
        metrics.inc("e2ee_enrollments_rate_limited_total")
        retry = max(1, int(1 / buckets.per_second))
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "enrollment rate limit",
                            headers={"Retry-After": str(retry)})


EnrollRateLimit = Depends(limit_enrollment)


# --- integers that reach the database ---------------------------------------------------------

# The largest integer both engines take as a parameter (SQL BIGINT): a larger offset or id was a
# driver error, 500 (issue 12, finding 11); bounded here it is a 422 like any malformed query.
MAX_SQL_INTEGER = 2**63 - 1
# Rows per page of a list.
MAX_PAGE = 1000

Offset = Annotated[int, Query(ge=0, le=MAX_SQL_INTEGER, description="rows to skip")]
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="rows to return, at most %d" % MAX_PAGE)]
# A relay message id a client got from the service: BIGINT on PostgreSQL, SQLite's 64-bit rowid
# (alembic 0007; up to 0006 they were 32-bit INTEGER columns, bounded to 2^31 - 1 here).
RelayId = Annotated[int, Query(ge=0, le=MAX_SQL_INTEGER)]
