"""The Fleet CA's public keys (docs/provisioning.md, "Fleet CA keys"): what devices and hosts
trust. Public information, no authentication."""
from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from e2ee_provisioning.api.deps import CADep
from e2ee_provisioning.models import B64Bytes

router = APIRouter(tags=["ca"])


class CAKeyPublic(BaseModel):
    key_id: str
    public_key: B64Bytes
    active: bool


class CAPublic(BaseModel):
    keys: list[CAKeyPublic]


@router.get("/ca", response_model=CAPublic)
def get_ca(ca: CADep) -> CAPublic:
    return CAPublic(keys=[CAKeyPublic(key_id=k.key_id.hex(), public_key=k.public_key, active=k.active)
                          for k in ca.keys()])
