"""Group membership on the broker (docs/groups.md): an operator adds and removes members of a
group; the service gives each member's broker client the group's role (read and write the group
topic) or takes it away, live through dynamic security. The Sender Keys themselves never reach
the service: members distribute them over their pairwise sessions."""
from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, status
from sqlalchemy import select

from e2ee_provisioning.api.deps import OperatorAuth, SessionDep, device_is_revoked
from e2ee_provisioning.api.openapi import refusals
from e2ee_provisioning.core.broker import BrokerError
from e2ee_provisioning.models import Device

log = logging.getLogger(__name__)

router = APIRouter(prefix="/groups", tags=["groups"], dependencies=[OperatorAuth])
Name = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


def _member(request: Request, session: SessionDep, fleet: str, device_id: str):  # type: ignore[no-untyped-def]
    broker = request.app.state.broker
    if broker is None or not hasattr(broker, "add_group_member"):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this service drives no broker")
    device = session.scalar(select(Device).where(Device.device_id == device_id, Device.fleet == fleet))
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such device in fleet %s" % fleet)
    return broker, device


@router.put("/{fleet}/{group}/members/{device_id}", status_code=status.HTTP_204_NO_CONTENT,
            responses=refusals({404: "no such device in the fleet",
                                410: "the device is revoked",
                                502: "the broker refused the change",
                                503: "this service drives no broker"}))
def add_member(fleet: Name, group: Name, device_id: Name, request: Request, session: SessionDep) -> None:
    broker, device = _member(request, session, fleet, device_id)
    if device_is_revoked(session, device):
        raise HTTPException(status.HTTP_410_GONE, "device is revoked")
    try:
        broker.add_group_member(fleet, group, device_id)
    except BrokerError as e:
        if "already" not in str(e):
            raise HTTPException(status.HTTP_502_BAD_GATEWAY, "the broker refused: %s" % e)
    log.info("%s joined group %s/%s", device_id, fleet, group)


@router.delete("/{fleet}/{group}/members/{device_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses=refusals({404: "no such device in the fleet, or not a member",
                                   503: "this service drives no broker"}))
def remove_member(fleet: Name, group: Name, device_id: Name, request: Request, session: SessionDep) -> None:
    broker, _ = _member(request, session, fleet, device_id)
    try:
        broker.remove_group_member(fleet, group, device_id)
    except BrokerError as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not a member: %s" % e)
    log.info("%s left group %s/%s", device_id, fleet, group)
