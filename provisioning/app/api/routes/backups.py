"""Encrypted backups (docs/backup.md): a device stores a blob sealed on the client under its
owner's passphrase; a new install fetches it back with the token derived from that passphrase.
The service cannot read blobs; wrong tokens count, and after E2EE_PROV_BACKUP_FETCH_ATTEMPTS of
them the backup locks until an operator unlocks it."""
from __future__ import annotations

import hashlib
import hmac
import logging

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from e2ee_host.backup import BackupError, read_params
from e2ee_provisioning.api.deps import (
    DeviceAuth, DeviceBackupAuth, EnrollRateLimit, MetricsDep, OperatorAuth, SessionDep, SettingsDep,
    accept_signed_write, backup_body, device_is_revoked,
)
from e2ee_provisioning.api.openapi import refusals
from e2ee_provisioning.core.blobstore import BlobStore
from e2ee_provisioning.models import Backup, BackupFetch, BackupParams, Device, utcnow

log = logging.getLogger(__name__)

router = APIRouter(prefix="/backups", tags=["backups"])

_AUTH_HASH_SIZE = 32  # the upload body starts with SHA-256(fetch token)


def _device(session: Session, device_id: str) -> Device:
    device = session.scalar(select(Device).where(Device.device_id == device_id))
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such device")
    return device


def _backup(session: Session, device: Device, for_update: bool = False) -> Backup:
    query = select(Backup).where(Backup.device_pk == device.id)
    backup = session.scalar(query.with_for_update() if for_update else query)
    if backup is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no backup for this device")
    return backup


def _store(request: Request) -> BlobStore:
    return request.app.state.blobs  # type: ignore[no-any-return]


def _own(auth: DeviceAuth | DeviceBackupAuth, device_id: str) -> None:
    if auth.device.device_id != device_id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a device manages only its own backup")


@router.put("/{device_id}", response_model=BackupParams,
            responses=refusals({403: "a device stores only its own backup",
                                409: "the request timestamp is not newer than the device's last write"}))
def put_backup(device_id: str, request: Request, auth: DeviceBackupAuth, session: SessionDep,
               body: Annotated[bytes, Depends(backup_body)], metrics: MetricsDep) -> BackupParams:
    """Body: SHA-256 of the fetch token (32 bytes) || the blob (e2ee_host.backup format)."""
    _own(auth, device_id)
    auth_sha256, blob = body[:_AUTH_HASH_SIZE], body[_AUTH_HASH_SIZE:]
    try:
        salt, params = read_params(blob)
    except BackupError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e))
    if len(auth_sha256) != _AUTH_HASH_SIZE:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "body must start with the 32-byte token hash")
    if not accept_signed_write(session, auth):
        raise HTTPException(status.HTTP_409_CONFLICT, "request timestamp is not newer than the last write")
    device = auth.device
    name = "device-%d.bin" % device.id
    _store(request).put(name, blob)
    backup = session.scalar(select(Backup).where(Backup.device_pk == device.id)) or Backup(device_pk=device.id)
    backup.blob_name, backup.size, backup.salt = name, len(blob), salt
    backup.memory_kib, backup.iterations, backup.lanes = params.memory_kib, params.iterations, params.lanes
    backup.auth_sha256, backup.failures, backup.updated_at = auth_sha256.hex(), 0, utcnow()
    session.add(backup)
    session.commit()
    metrics.inc("e2ee_backup_uploads_total", fleet=device.fleet)
    log.info("backup of %s stored (%d bytes)", device_id, len(blob))
    return _params(backup)


def _params(backup: Backup) -> BackupParams:
    return BackupParams(salt=backup.salt, memory_kib=backup.memory_kib, iterations=backup.iterations,
                        lanes=backup.lanes, size=backup.size, updated_at=backup.updated_at)


@router.get("/{device_id}/params", response_model=BackupParams, dependencies=[EnrollRateLimit],
            responses=refusals({404: "no such device, or it has no backup"}))
def get_params(device_id: str, session: SessionDep) -> BackupParams:
    """What a new install needs to derive the fetch token from the passphrase (public)."""
    return _params(_backup(session, _device(session, device_id)))


@router.post("/{device_id}/fetch", dependencies=[EnrollRateLimit], response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}}}, **refusals({
                 403: "wrong passphrase (the attempts left are in the detail)",
                 404: "no such device, or it has no backup",
                 410: "the device is revoked",
                 423: "locked after too many wrong passphrases: an operator unlocks it "
                      "(DELETE /backups/{device_id}/lock)"})})
def fetch_backup(device_id: str, body: BackupFetch, request: Request, session: SessionDep,
                 settings: SettingsDep, metrics: MetricsDep) -> Response:
    device = _device(session, device_id)
    if device_is_revoked(session, device):
        raise HTTPException(status.HTTP_410_GONE, "device is revoked")
    # FOR UPDATE: fetches of one backup take turns on PostgreSQL (SQLite's BEGIN IMMEDIATE already
    # serializes them), so parallel wrong tokens cannot all read the same count and pass the limit
    # (issue 12, finding 11)
    backup = _backup(session, device, for_update=True)
    if backup.failures >= settings.backup_fetch_attempts:
        metrics.inc("e2ee_backup_fetches_total", fleet=device.fleet, result="locked")
        raise HTTPException(status.HTTP_423_LOCKED, "backup locked after too many wrong passphrases; an operator "
                            "must unlock it")
    if not hmac.compare_digest(hashlib.sha256(body.auth).hexdigest(), backup.auth_sha256):
        left = settings.backup_fetch_attempts - backup.failures - 1
        session.execute(update(Backup).where(Backup.id == backup.id).values(failures=Backup.failures + 1))
        session.commit()
        metrics.inc("e2ee_backup_fetches_total", fleet=device.fleet, result="wrong_passphrase")
        if left == 0:
            metrics.inc("e2ee_backup_lockouts_total", fleet=device.fleet)
        log.warning("wrong backup fetch token for %s", device_id)
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong passphrase (%d attempts left)" % left)
    blob = _store(request).get(backup.blob_name)
    if backup.failures:
        backup.failures = 0
        session.commit()
    metrics.inc("e2ee_backup_fetches_total", fleet=device.fleet, result="ok")
    return Response(blob, media_type="application/octet-stream", headers={"Cache-Control": "no-store"})


@router.delete("/{device_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses=refusals({403: "a device deletes only its own backup",
                                   404: "the device has no backup",
                                   409: "the request timestamp is not newer than the device's last write"}))
def delete_backup(device_id: str, request: Request, auth: DeviceAuth, session: SessionDep) -> None:
    _own(auth, device_id)
    backup = _backup(session, auth.device)
    if not accept_signed_write(session, auth):
        raise HTTPException(status.HTTP_409_CONFLICT, "request timestamp is not newer than the last write")
    _store(request).delete(backup.blob_name)
    session.delete(backup)
    session.commit()


@router.delete("/{device_id}/lock", status_code=status.HTTP_204_NO_CONTENT, dependencies=[OperatorAuth],
               responses=refusals({404: "no such device, or it has no backup"}))
def unlock_backup(device_id: str, session: SessionDep) -> None:
    """An operator resets the wrong-attempt counter of a locked backup."""
    backup = _backup(session, _device(session, device_id))
    backup.failures = 0
    session.commit()
