"""A device's own settings, in signed requests (docs/provisioning.md, "Registration lock"):
setting or removing the registration lock that keeps its identity from being re-registered
without the PIN."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from e2ee_provisioning.api.deps import DeviceAuth, SessionDep, accept_signed_write
from e2ee_provisioning.api.openapi import refusals
from e2ee_provisioning.core.security import hash_pin
from e2ee_provisioning.models import RegistrationLockSet

router = APIRouter(prefix="/me", tags=["device"])


def _accept(session: SessionDep, auth: DeviceAuth) -> None:
    if not accept_signed_write(session, auth):
        raise HTTPException(status.HTTP_409_CONFLICT, "request timestamp is not newer than the last write")


@router.put("/registration-lock", status_code=status.HTTP_204_NO_CONTENT,
            responses=refusals({409: "the request timestamp is not newer than the device's last write"}))
def set_registration_lock(body: RegistrationLockSet, auth: DeviceAuth, session: SessionDep) -> None:
    _accept(session, auth)
    device = session.merge(auth.device)
    device.lock_hash, device.lock_failures = hash_pin(body.pin), 0
    session.commit()


@router.delete("/registration-lock", status_code=status.HTTP_204_NO_CONTENT,
               responses=refusals({409: "the request timestamp is not newer than the device's last write"}))
def remove_registration_lock(auth: DeviceAuth, session: SessionDep) -> None:
    _accept(session, auth)
    device = session.merge(auth.device)
    device.lock_hash, device.lock_failures = "", 0
    session.commit()
