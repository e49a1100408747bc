"""The service's Fleet CA: issuing device certificates and keeping the signed revocation list
(docs/provisioning.md, "Certificates and revocation lists", "Revocation").

Revocation lists are numbered 1, 2, 3, ... and stored, every one of them, in `revocation_lists`;
the highest version is the current list. A new list is signed inside the transaction that
revokes, so the list a client fetches always matches the certificates table.
"""
from __future__ import annotations

import time

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from e2ee_host.fleet_ca import CAKeystore, sign_revocation_list
from e2ee_provisioning.models import Certificate, RevocationListRecord

__all__ = ["current_revocation_list", "ensure_revocation_list", "publish_revocation_list", "revoked_unexpired_serials"]


def revoked_unexpired_serials(session: Session, now: int) -> list[bytes]:
    """Serials of revoked certificates that have not expired (expired ones need no listing)."""
    return list(session.scalars(select(Certificate.serial).where(
        Certificate.revoked_at.is_not(None), Certificate.not_after > now).order_by(Certificate.serial)))


def publish_revocation_list(session: Session, ca: CAKeystore) -> RevocationListRecord:
    """Signs the next revocation list from the certificates table and adds it to the session
    (committed by the caller, with the revocation that caused it). On PostgreSQL two concurrent
    publishers can pick the same version: the loser's commit fails on the primary key and its
    transaction (revocation included) rolls back, so the caller retries it."""
    now = int(time.time())
    latest = session.scalar(select(func.max(RevocationListRecord.version))) or 0
    data = sign_revocation_list(ca, version=latest + 1, revoked_serials=revoked_unexpired_serials(session, now),
                                issued_at=now)
    record = RevocationListRecord(version=latest + 1, issued_at=now, data=data)
    session.add(record)
    return record


def current_revocation_list(session: Session) -> RevocationListRecord:
    """The newest signed list (version 1 exists from the service's first start)."""
    return session.scalars(select(RevocationListRecord).order_by(RevocationListRecord.version.desc())
                           .limit(1)).one()


def ensure_revocation_list(session: Session, ca: CAKeystore) -> None:
    """Signs list version 1 (empty) when the database holds none yet; called at startup. Two
    replicas starting at once: one insert wins, the other finds its version taken and stops."""
    if session.scalar(select(func.count(RevocationListRecord.version))):
        return
    publish_revocation_list(session, ca)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
