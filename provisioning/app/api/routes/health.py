"""Liveness and readiness: /healthz answers 200 when the database answers; /time is the service's
clock for boards without a real-time clock (also over the MQTT service channel)."""
from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from e2ee_provisioning.api.deps import SessionDep
from e2ee_provisioning.api.openapi import refusals
from e2ee_provisioning.models import ServiceTime

router = APIRouter(tags=["health"])


@router.get("/healthz",
            responses=refusals({503: "the database is unavailable"}))
def healthz(session: SessionDep) -> dict[str, str]:
    try:
        session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "database unavailable")
    return {"status": "ok"}


@router.get("/time", response_model=ServiceTime)
def get_time() -> ServiceTime:
    """Unix time in milliseconds. Unauthenticated, as a clock needs to be: a device that has no
    time cannot sign a request within the allowed skew yet (docs/provisioning.md, "Service channel")."""
    return ServiceTime(now_ms=time.time_ns() // 1_000_000)
