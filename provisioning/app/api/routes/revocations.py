"""Revocation list and certificate status (docs/provisioning.md, "Revocation").

The current signed list is public (devices and hosts verify it with the Fleet CA key, so the
channel need not be trusted); certificate status is for operators and registered devices."""
from __future__ import annotations

import binascii
import time

from fastapi import APIRouter, HTTPException, Response, status
from sqlalchemy import select

from e2ee.protocol.certificate import decode_revocation_list_unverified
from e2ee_provisioning.api.deps import CADep, RequesterAuth, SessionDep
from e2ee_provisioning.api.openapi import refusals
from e2ee_provisioning.core.authority import current_revocation_list
from e2ee_provisioning.models import Certificate, CertificateStatus, Device, RevocationListPublic

router = APIRouter(tags=["revocation"])


@router.get("/revocations", response_model=RevocationListPublic)
def get_revocation_list(session: SessionDep, ca: CADep, response: Response) -> RevocationListPublic:
    response.headers["Cache-Control"] = "no-cache"
    record = current_revocation_list(session)
    return RevocationListPublic(version=record.version, issued_at=record.issued_at,
                                revoked=len(decode_revocation_list_unverified(record.data)),
                                revocation_list=record.data, ca_keys=ca.public_keys())


@router.get("/certificates/{serial}", response_model=CertificateStatus,
            responses=refusals({404: "no certificate with this serial"}))
def get_certificate_status(serial: str, requester: RequesterAuth, session: SessionDep) -> CertificateStatus:
    """good, revoked or expired; 404 for a serial the CA never issued."""
    try:
        raw = binascii.unhexlify(serial)
    except (binascii.Error, ValueError):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "serial must be 32 hex digits")
    if len(raw) != 16:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "serial must be 32 hex digits")
    row = session.execute(select(Certificate, Device.device_id).join(Device, Device.id == Certificate.device_pk)
                          .where(Certificate.serial == raw)).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no certificate with this serial")
    cert, device_id = row
    state = "revoked" if cert.revoked_at is not None else "expired" if cert.not_after <= time.time() else "good"
    return CertificateStatus(serial=raw.hex(), device_id=device_id, status=state, not_before=cert.not_before,
                             not_after=cert.not_after, revoked_at=cert.revoked_at, revoke_reason=cert.revoke_reason)
