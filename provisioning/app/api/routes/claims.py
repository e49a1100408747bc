"""Enrollment claims: operators create single-use (quota 1) or batch (quota n) tokens with an
expiry, and list them. Tokens are returned once and stored as SHA-256 hashes; enrollment that
spends them comes with attestation (docs/provisioning.md, "Not built yet")."""
from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from fastapi import APIRouter, Query, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from e2ee_provisioning.api.deps import MetricsDep, OperatorAuth, SessionDep
from e2ee_provisioning.models import ClaimCreate, ClaimPublic, ClaimsCreated, EnrollmentClaim, utcnow

router = APIRouter(prefix="/claims", tags=["claims"], dependencies=[OperatorAuth])

# Claim tokens: 32 random bytes, URL-safe base64 (256 bits: not guessable, so a plain hash at rest).
_TOKEN_BYTES = 32


def create_claims(*, session: Session, claim_in: ClaimCreate) -> tuple[list[EnrollmentClaim], list[str]]:
    now = utcnow()
    claims, tokens = [], []
    for _ in range(claim_in.count):
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        claim = EnrollmentClaim(token_sha256=hashlib.sha256(token.encode()).hexdigest(), fleet=claim_in.fleet,
                                label=claim_in.label, quota=claim_in.quota, used=0,
                                expires_at=now + timedelta(seconds=claim_in.expires_in), created_at=now)
        session.add(claim)
        claims.append(claim)
        tokens.append(token)
    session.commit()
    return claims, tokens


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ClaimsCreated)
def post_claims(claim_in: ClaimCreate, session: SessionDep, metrics: MetricsDep) -> ClaimsCreated:
    claims, tokens = create_claims(session=session, claim_in=claim_in)
    metrics.inc("e2ee_enrollment_claims_created_total", len(claims))
    return ClaimsCreated(claims=[ClaimPublic.model_validate(c, from_attributes=True) for c in claims], tokens=tokens)


@router.get("", response_model=list[ClaimPublic])
def list_claims(session: SessionDep, fleet: str | None = None,
                offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)) -> list[ClaimPublic]:
    query = select(EnrollmentClaim).order_by(EnrollmentClaim.id).offset(offset).limit(limit)
    if fleet is not None:
        query = query.where(EnrollmentClaim.fleet == fleet)
    return [ClaimPublic.model_validate(c, from_attributes=True) for c in session.scalars(query)]
