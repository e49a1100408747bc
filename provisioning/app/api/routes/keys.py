"""Key directory (docs/provisioning.md, "Key directory"): devices upload their signed prekey and
one-time prekeys; peers fetch a prekey bundle, each one-time prekey handed out at most once.

Uploads are signed by the device's identity key (api/deps.py) and checked with the device
package's own classes (e2ee.protocol.keys, docs/protocol.md §1): every one-time prekey must form
a valid PrekeyBundle with the signed prekey it will be served with, and the signed prekey's
signature must verify under the device's IS. A refused upload changes nothing.
"""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from e2ee import crypto
from e2ee.crypto.errors import CryptoError
from e2ee.protocol import keys
from e2ee_provisioning.api.deps import (
    BundleRateLimit, DeviceAuth, MetricsDep, RequesterAuth, SessionDep, SettingsDep, accept_signed_write,
)
from e2ee_provisioning.api.openapi import refusals
from e2ee_provisioning.core.config import Settings
from e2ee_provisioning.core.metrics import Metrics
from e2ee_provisioning.models import (
    BundlePublic, Device, InventoryPublic, OneTimePrekey, PrekeyUpload, Revocation, SignedPrekey, utcnow,
)

router = APIRouter(prefix="/keys", tags=["keys"])


def _reject(metrics: object, code: int, detail: str) -> HTTPException:
    metrics.inc("e2ee_prekey_uploads_rejected_total")  # type: ignore[attr-defined]
    return HTTPException(code, detail)


def inventory(*, session: Session, settings: Settings, device: Device) -> InventoryPublic:
    count = session.scalar(select(func.count(OneTimePrekey.id)).where(OneTimePrekey.device_pk == device.id)) or 0
    spk_id = session.scalar(select(SignedPrekey.spk_id).where(SignedPrekey.device_pk == device.id))
    return InventoryPublic(device_id=device.device_id, one_time_prekeys=count, signed_prekey_id=spk_id,
                           replenish=count < settings.replenish_threshold)


def _validated(device: Device, upload: PrekeyUpload, stored: SignedPrekey | None) -> tuple[
        keys.PrekeyBundle, list[keys.PrekeyBundle]]:
    """The signed-prekey bundle and one bundle per one-time prekey this upload would serve.
    Raises keys.KeyFormatError (malformed) or CryptoError (signature)."""
    if upload.signed_prekey is not None:
        spk = upload.signed_prekey
        base = keys.PrekeyBundle(device.ik_pub, device.is_pub, spk.spk_id, spk.spk_pub, spk.spk_sig)
        crypto.ed25519_verify(device.is_pub, keys.spk_signature_message(base.ik_pub, base.spk_id, base.spk_pub),
                              base.spk_sig)
    elif stored is not None:
        base = keys.PrekeyBundle(device.ik_pub, device.is_pub, stored.spk_id, stored.spk_pub, stored.spk_sig)
    else:
        raise keys.KeyFormatError("no signed prekey published yet: upload one with the first one-time prekeys")
    with_opks = []
    for opk in upload.one_time_prekeys:
        if opk.opk_id == keys.LAST_RESORT_ID:
            raise keys.InvalidBundle("opk_id 0x%08x is the last-resort prekey, not a one-time prekey" % opk.opk_id)
        with_opks.append(keys.PrekeyBundle(base.ik_pub, base.is_pub, base.spk_id, base.spk_pub, base.spk_sig,
                                           opk.opk_id, opk.opk_pub))
    return base, with_opks


@router.post("", response_model=InventoryPublic,
             responses=refusals({409: "a one-time prekey id is taken, or the request timestamp is not newer than the last upload"}))
def upload_prekeys(upload: PrekeyUpload, auth: DeviceAuth, session: SessionDep, settings: SettingsDep,
                   metrics: MetricsDep) -> InventoryPublic:
    """Stores a device's new signed prekey and/or one-time prekeys (signed by the device)."""
    device = auth.device
    if upload.signed_prekey is None and not upload.one_time_prekeys:
        raise _reject(metrics, status.HTTP_422_UNPROCESSABLE_CONTENT, "empty upload")
    stored = session.scalar(select(SignedPrekey).where(SignedPrekey.device_pk == device.id))
    try:
        base, with_opks = _validated(device, upload, stored)
    except keys.KeyFormatError as e:
        raise _reject(metrics, status.HTTP_422_UNPROCESSABLE_CONTENT, str(e))
    except CryptoError:
        raise _reject(metrics, status.HTTP_422_UNPROCESSABLE_CONTENT, "signed prekey signature does not verify")
    new_ids = [b.opk_id for b in with_opks]
    if len(set(new_ids)) != len(new_ids):
        raise _reject(metrics, status.HTTP_422_UNPROCESSABLE_CONTENT, "one-time prekey ids repeat in the upload")
    if new_ids:
        taken = session.scalars(select(OneTimePrekey.opk_id).where(
            OneTimePrekey.device_pk == device.id, OneTimePrekey.opk_id.in_(new_ids))).all()
        if taken:
            raise _reject(metrics, status.HTTP_409_CONFLICT,
                          "%d one-time prekey ids are already published (first: %d)" % (len(taken), min(taken)))
    held = session.scalar(select(func.count(OneTimePrekey.id)).where(OneTimePrekey.device_pk == device.id)) or 0
    if held + len(new_ids) > settings.max_one_time_prekeys:
        raise _reject(metrics, status.HTTP_422_UNPROCESSABLE_CONTENT, "would hold %d one-time prekeys, limit %d" % (
            held + len(new_ids), settings.max_one_time_prekeys))
    if not accept_signed_write(session, auth):
        raise _reject(metrics, status.HTTP_409_CONFLICT, "request timestamp is not newer than the last upload")
    if upload.signed_prekey is not None:
        session.execute(delete(SignedPrekey).where(SignedPrekey.device_pk == device.id))
        session.add(SignedPrekey(device_pk=device.id, spk_id=base.spk_id, spk_pub=base.spk_pub,
                                 spk_sig=base.spk_sig, uploaded_at=utcnow()))
    session.add_all([OneTimePrekey(device_pk=device.id, opk_id=b.opk_id, opk_pub=b.opk_pub) for b in with_opks])
    session.commit()
    metrics.inc("e2ee_prekey_uploads_total", fleet=device.fleet)
    return inventory(session=session, settings=settings, device=device)


def _device(session: Session, device_id: str) -> Device:
    device = session.scalar(select(Device).where(Device.device_id == device_id))
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such device")
    return device


@router.get("/{device_id}/inventory", response_model=InventoryPublic,
            responses=refusals({403: "a device reads only its own inventory",
                                404: "no such device"}))
def get_inventory(device_id: str, requester: RequesterAuth, session: SessionDep,
                  settings: SettingsDep) -> InventoryPublic:
    """The device's stored one-time prekey count and whether it should replenish; for operators
    and the device itself (another device gets 403, before learning whether the id exists)."""
    if requester.device is not None and requester.device.device_id != device_id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a device may read only its own inventory")
    return inventory(session=session, settings=settings, device=_device(session, device_id))


def take_one_time_prekey(*, session: Session, device_pk: int) -> tuple[int, bytes] | None:
    """Deletes and returns one of the device's one-time prekeys (lowest id first), or None.

    One statement, DELETE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING:
    on PostgreSQL concurrent fetches lock different rows and skip each other's, so no key is
    returned twice and none is skipped while free ones remain; SQLite ignores FOR UPDATE and
    the surrounding BEGIN IMMEDIATE transaction serializes fetches (core/db.py)."""
    pick = (select(OneTimePrekey.id).where(OneTimePrekey.device_pk == device_pk)
            .order_by(OneTimePrekey.opk_id).limit(1).with_for_update(skip_locked=True).scalar_subquery())
    row = session.execute(delete(OneTimePrekey).where(OneTimePrekey.id == pick)
                          .returning(OneTimePrekey.opk_id, OneTimePrekey.opk_pub)).first()
    return None if row is None else (row[0], row[1])


@router.get("/{device_id}/bundle", response_model=BundlePublic,
            responses=refusals({404: "no such device, or it has published no signed prekey",
                                410: "the device is revoked"}))
def get_bundle(device_id: str, requester: BundleRateLimit, session: SessionDep, metrics: MetricsDep,
               response: Response) -> BundlePublic:
    """A prekey bundle for starting a session with the device (docs/protocol.md §2): its signed
    prekey and, while any are left, one one-time prekey that no other fetch gets. Operators, and
    devices of the same fleet: another fleet's device gets 404 (issue 12, finding 10)."""
    response.headers["Cache-Control"] = "no-store"
    return serve_bundle(session=session, metrics=metrics, requester=requester.device, device_id=device_id)


def serve_bundle(*, session: Session, metrics: Metrics, requester: Device | None, device_id: str) -> BundlePublic:
    """The bundle of get_bundle for `requester` (a device, or None for an operator), its one-time
    prekey taken; HTTP and the service channel (api/channel.py) serve bundles through here.
    HTTPException 404 (unknown, another fleet, no signed prekey) or 410 (revoked).

    Two statements and the commit (issue 16): the device, its signed prekey and whether it is
    revoked in one SELECT, then the one-time prekey's DELETE ... RETURNING."""
    row = session.execute(
        select(Device.id, Device.fleet, Device.ik_pub, Device.is_pub, Revocation.id, SignedPrekey.spk_id,
               SignedPrekey.spk_pub, SignedPrekey.spk_sig)
        .outerjoin(Revocation, Revocation.device_pk == Device.id)
        .outerjoin(SignedPrekey, SignedPrekey.device_pk == Device.id)
        .where(Device.device_id == device_id).limit(1)).first()
    if row is None or (requester is not None and requester.fleet != row[1]):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such device")
    device_pk, fleet, ik_pub, is_pub, revocation, spk_id, spk_pub, spk_sig = row
    if revocation is not None:
        raise HTTPException(status.HTTP_410_GONE, "device is revoked")
    if spk_id is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "device has not published a signed prekey")
    taken = take_one_time_prekey(session=session, device_pk=device_pk)
    bundle = keys.PrekeyBundle(ik_pub, is_pub, spk_id, spk_pub, spk_sig, *(taken or (None, None)))
    session.commit()
    metrics.inc("e2ee_bundle_fetches_total", fleet=fleet)
    if taken is None:
        metrics.inc("e2ee_bundle_fetches_without_one_time_prekey_total", fleet=fleet)
    return BundlePublic(device_id=device_id, bundle=bundle.to_bytes(), one_time_prekey=taken is not None)
