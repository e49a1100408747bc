"""Enrollment claims: operators create single-use (quota 1) or batch (quota n) tokens with an
expiry, an owner and the roles written into certificates, list them and revoke them. Tokens are
returned once and stored as SHA-256 hashes; routes/enrollment.py spends them.

Whatever else a claim unlocks (the service channel's broker credential for zero-touch
enrollment) registers a hook with `on_claim_revoked(app, hook)`: a revocation calls every hook
after it committed."""
from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, FastAPI, HTTPException, Path, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from e2ee_provisioning.api.deps import MetricsDep, Offset, OperatorAuth, PageLimit, SessionDep
from e2ee_provisioning.api.openapi import refusals
from e2ee_provisioning.core.broker import BrokerError
from e2ee_provisioning.models import (
    ClaimCreate, ClaimPublic, ClaimsCreated, EnrollmentClaim, RevokeRequest, utcnow,
)

__all__ = ["ClaimRevokedHook", "TOKEN_PREFIX", "create_claims", "on_claim_revoked", "revoke_claim", "router",
           "to_public"]

log = logging.getLogger(__name__)

# Called with the revoked claim once its revocation committed; raises BrokerError when what it
# undoes (a broker credential) could not be undone: the answer is then a 502 and the operator
# revokes again (a revocation is idempotent and calls the hooks each time).
ClaimRevokedHook = Callable[[ClaimPublic], None]

# A claim id in a path: enrollment_claims.id is a 32-bit INTEGER, so 1..2^31 - 1 (a larger id was
# a PostgreSQL "integer out of range", a 500; bounded here it is a 422).
MAX_CLAIM_ID = 2**31 - 1
ClaimId = Annotated[int, Path(ge=1, le=MAX_CLAIM_ID)]

router = APIRouter(prefix="/claims", tags=["claims"], dependencies=[OperatorAuth])

# Claim tokens: a fixed prefix and 32 random bytes, URL-safe base64 (256 bits: not guessable, so
# a plain hash at rest). The prefix lets secret scanners find leaked tokens, and a token never
# starts with "-", which command lines would take for an option (`e2ee provision --claim -x...`).
TOKEN_PREFIX = "e2c_"
_TOKEN_BYTES = 32


def create_claims(*, session: Session, claim_in: ClaimCreate) -> tuple[list[EnrollmentClaim], list[str]]:
    now = utcnow()
    claims, tokens = [], []
    for _ in range(claim_in.count):
        token = TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)
        claim = EnrollmentClaim(token_sha256=hashlib.sha256(token.encode()).hexdigest(), fleet=claim_in.fleet,
                                label=claim_in.label, quota=claim_in.quota, used=0, owner=claim_in.owner,
                                roles=",".join(dict.fromkeys(claim_in.roles)),
                                require_hardware=claim_in.require_hardware,
                                expires_at=now + timedelta(seconds=claim_in.expires_in), created_at=now)
        session.add(claim)
        claims.append(claim)
        tokens.append(token)
    session.commit()
    return claims, tokens


def to_public(claim: EnrollmentClaim) -> ClaimPublic:
    return ClaimPublic(id=claim.id, fleet=claim.fleet, label=claim.label, quota=claim.quota, used=claim.used,
                       owner=claim.owner, roles=[r for r in claim.roles.split(",") if r],
                       require_hardware=claim.require_hardware, expires_at=claim.expires_at,
                       created_at=claim.created_at, revoked_at=claim.revoked_at,
                       revoke_reason=claim.revoke_reason)


def on_claim_revoked(app: FastAPI, hook: ClaimRevokedHook) -> None:
    """Registers `hook` to run after each claim revocation (in registration order)."""
    app.state.claim_revoked_hooks.append(hook)


def revoke_claim(*, session: Session, claim_id: int, reason: str) -> tuple[EnrollmentClaim, bool]:
    """Marks the claim revoked (routes/enrollment.py refuses it from then on) and commits.
    Returns the claim and whether this call revoked it (False: it was revoked before, and keeps
    its first time and reason). Raises HTTPException 404 for an unknown id."""
    claim = session.get(EnrollmentClaim, claim_id)
    if claim is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such claim")
    if claim.revoked_at is not None:
        return claim, False
    claim.revoked_at, claim.revoke_reason = utcnow(), reason
    session.commit()
    return claim, True


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ClaimsCreated,
             responses=refusals({503: "claims with mqtt need the service to drive a broker"}))
def post_claims(claim_in: ClaimCreate, request: Request, session: SessionDep, metrics: MetricsDep) -> ClaimsCreated:
    """`mqtt`: each token also becomes a broker credential that may only enroll over MQTT
    (zero-touch enrollment, docs/provisioning.md "Service channel"); 503 without a broker."""
    broker = request.app.state.broker
    if claim_in.mqtt and broker is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "claims with mqtt need the service to drive a broker")
    claims, tokens = create_claims(session=session, claim_in=claim_in)
    if claim_in.mqtt:
        from e2ee_provisioning.api.channel import provision_claim_credentials
        provision_claim_credentials(session, broker, claims, tokens)
    metrics.inc("e2ee_enrollment_claims_created_total", len(claims), fleet=claim_in.fleet)
    return ClaimsCreated(claims=[to_public(c) for c in claims], tokens=tokens)


@router.get("", response_model=list[ClaimPublic])
def list_claims(session: SessionDep, fleet: str | None = None,
                offset: Offset = 0, limit: PageLimit = 100) -> list[ClaimPublic]:
    query = select(EnrollmentClaim).order_by(EnrollmentClaim.id).offset(offset).limit(limit)
    if fleet is not None:
        query = query.where(EnrollmentClaim.fleet == fleet)
    return [to_public(c) for c in session.scalars(query)]


@router.post("/{claim_id}/revoke", response_model=ClaimPublic,
             responses=refusals({404: "no such claim",
                                 502: "the claim is revoked, but the broker did not remove its zero-touch credential"}))
def post_revoke(claim_id: ClaimId, body: RevokeRequest, request: Request, session: SessionDep,
                metrics: MetricsDep) -> ClaimPublic:
    """Revokes a claim: no enrollment spends it from now on (403), devices it enrolled keep their
    certificates (revoke those with POST /devices/{id}/revoke). Idempotent: revoking a revoked
    claim changes nothing and runs the hooks again (502 when one of them failed)."""
    claim, first = revoke_claim(session=session, claim_id=claim_id, reason=body.reason)
    public = to_public(claim)
    session.rollback()  # ends the read that reloaded the claim: SQLite's BEGIN IMMEDIATE holds the lock
    if first:
        metrics.inc("e2ee_enrollment_claims_revoked_total", fleet=claim.fleet)
        log.info("claim %d of fleet %s revoked (%d of %d enrollments used)", claim.id, claim.fleet, claim.used,
                 claim.quota)
    for hook in request.app.state.claim_revoked_hooks:
        try:
            hook(public)
        except BrokerError:
            raise HTTPException(status.HTTP_502_BAD_GATEWAY, "claim revoked, but the broker did not remove "
                                "its credential; revoke the claim again")
    return public
