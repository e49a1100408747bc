"""Enrollment claims: operators create single-use (quota 1) or batch (quota n) tokens with an
expiry, an owner and the roles written into certificates, and list them. Tokens are returned
once and stored as SHA-256 hashes; routes/enrollment.py spends them."""
from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from fastapi import APIRouter, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from e2ee_provisioning.api.deps import MetricsDep, Offset, OperatorAuth, PageLimit, SessionDep
from e2ee_provisioning.models import ClaimCreate, ClaimPublic, ClaimsCreated, EnrollmentClaim, utcnow

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
                       created_at=claim.created_at)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ClaimsCreated)
def post_claims(claim_in: ClaimCreate, session: SessionDep, metrics: MetricsDep) -> ClaimsCreated:
    claims, tokens = create_claims(session=session, claim_in=claim_in)
    metrics.inc("e2ee_enrollment_claims_created_total", len(claims))
    return ClaimsCreated(claims=[to_public(c) for c in claims], tokens=tokens)


@router.get("", response_model=list[ClaimPublic])
def list_claims(session: SessionDep, fleet: str | None = None,
                offset: Offset = 0, limit: PageLimit = 100) -> list[ClaimPublic]:
    query = select(EnrollmentClaim).order_by(EnrollmentClaim.id).offset(offset).limit(limit)
    if fleet is not None:
        query = query.where(EnrollmentClaim.fleet == fleet)
    return [to_public(c) for c in session.scalars(query)]
