"""Enrollment with attestation (docs/provisioning.md, "Enrollment"): a device that holds an
enrollment claim asks for a fresh challenge, signs it with its identity key (proof of
possession), adds hardware binding evidence where its board has it, and receives a device
certificate signed by the Fleet CA (and MQTT credentials when a broker is configured).

Private keys are generated on the device and never sent: the request carries public keys, the
proof signature and the evidence MAC. Every check runs before any write; a refused enrollment
changes nothing except, for a wrong registration-lock PIN, the attempt counter.

New keys for an enrolled device id (re-registration) need a claim of the device's owner or an
operator key, the recorded board's evidence when a board is on record, then the registration
lock's PIN when one is set (docs/provisioning.md, "Re-registration"; issue 12, finding 4).
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import time
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Request, status
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from e2ee import crypto
from e2ee.crypto.errors import CryptoError
from e2ee.protocol import enrollment, keys
from e2ee.protocol.certificate import decode_certificate_unverified
from e2ee_host.fleet_ca import CAKeystore, issue_certificate
from e2ee_provisioning.api.deps import CADep, EnrollRateLimit, MetricsDep, SessionDep, SettingsDep, raw_body
from e2ee_provisioning.api.openapi import OPERATOR, refusals
from e2ee_provisioning.core.authority import current_revocation_list, publish_revocation_list
from e2ee_provisioning.core.broker import BrokerAdmin, BrokerError
from e2ee_provisioning.core.config import Settings
from e2ee_provisioning.core.metrics import Metrics
from e2ee_provisioning.core.security import operator_key_matches, pin_matches
from e2ee_provisioning.models import (
    Certificate, ChallengePublic, Device, EnrollmentChallenge, EnrollmentClaim, EnrollmentRequest,
    EnrollmentResult, MqttCredentials, OneTimePrekey, Revocation, SignedPrekey, utcnow,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/enroll", tags=["enrollment"], dependencies=[EnrollRateLimit, Depends(raw_body)])

# Clock skew allowed for a certificate's start: not_before is set this far in the past.
_NOT_BEFORE_SLACK = 300


def _refuse(metrics: Metrics, code: int, detail: str) -> HTTPException:
    metrics.inc("e2ee_enrollments_rejected_total")
    log.warning("enrollment refused (%d): %s", code, detail)
    return HTTPException(code, detail)


@router.post("/challenge", status_code=status.HTTP_201_CREATED, response_model=ChallengePublic)
def post_challenge(request: Request, session: SessionDep, settings: SettingsDep, metrics: MetricsDep) -> ChallengePublic:
    """A fresh 32-byte challenge, valid for E2EE_PROV_CHALLENGE_LIFETIME seconds, single use;
    `broker` says whether the enrollment will hand out MQTT credentials."""
    now = utcnow()
    session.execute(delete(EnrollmentChallenge).where(EnrollmentChallenge.expires_at <= now))
    challenge = EnrollmentChallenge(nonce=secrets.token_bytes(enrollment.CHALLENGE_SIZE),
                                    expires_at=now + timedelta(seconds=settings.challenge_lifetime))
    session.add(challenge)
    session.commit()
    metrics.inc("e2ee_enrollment_challenges_total")
    return ChallengePublic(challenge=challenge.nonce, expires_at=challenge.expires_at,
                           broker=request.app.state.broker is not None and bool(settings.mqtt_host))


def _check_evidence(req: EnrollmentRequest, claim: EnrollmentClaim, settings: Settings, metrics: Metrics) -> None:
    if req.evidence is None and req.board_uid is None:
        if claim.require_hardware:
            raise _refuse(metrics, status.HTTP_403_FORBIDDEN, "this claim requires hardware binding evidence")
        return
    if req.evidence is None or req.board_uid is None:
        raise _refuse(metrics, status.HTTP_422_UNPROCESSABLE_CONTENT, "board_uid and evidence go together")
    factory_keys = settings.factory_key_list()
    if not factory_keys:
        raise _refuse(metrics, status.HTTP_503_SERVICE_UNAVAILABLE, "hardware evidence cannot be verified: "
                      "the service has no factory key (E2EE_PROV_FACTORY_KEYS)")
    message = enrollment.evidence_message(req.challenge, req.is_pub, req.board_uid)
    for factory_key in factory_keys:  # every key is tried: the timing does not tell which matched
        expected = crypto.hmac_sha256(enrollment.board_key(factory_key, req.board_uid), message)
        if crypto.ct_equal(expected, req.evidence):
            return
    raise _refuse(metrics, status.HTTP_403_FORBIDDEN, "hardware evidence does not verify")


def _usable_claim(session: Session, token: str, fleet: str, metrics: Metrics) -> EnrollmentClaim:
    claim = session.scalar(select(EnrollmentClaim).where(
        EnrollmentClaim.token_sha256 == hashlib.sha256(token.encode()).hexdigest()))
    if claim is None:
        raise _refuse(metrics, status.HTTP_403_FORBIDDEN, "unknown enrollment claim")
    if claim.revoked_at is not None:
        raise _refuse(metrics, status.HTTP_403_FORBIDDEN, "enrollment claim is revoked")
    if claim.expires_at <= utcnow():
        raise _refuse(metrics, status.HTTP_403_FORBIDDEN, "enrollment claim has expired")
    if claim.used >= claim.quota:
        raise _refuse(metrics, status.HTTP_403_FORBIDDEN, "enrollment claim is used up")
    if claim.fleet != fleet:
        raise _refuse(metrics, status.HTTP_403_FORBIDDEN, "enrollment claim is for another fleet")
    return claim


def _known_identities(session: Session, req: EnrollmentRequest, metrics: Metrics) -> Device | None:
    """The device enrolled under req.device_id (locked for the update, PostgreSQL), or None;
    refused when the device id or either identity key belongs to a revoked device (403), or an
    identity key or the board is enrolled as another device (409). One SELECT of every device
    sharing an identifier with the request (issue 16: it was three)."""
    rows = session.execute(select(Device, Revocation.id).outerjoin(Revocation, Revocation.device_pk == Device.id)
                           .where(or_(Device.device_id == req.device_id, Device.is_pub == req.is_pub,
                                      Device.ik_pub == req.ik_pub,
                                      *([Device.board_uid == req.board_uid] if req.board_uid else [])))
                           .with_for_update(of=Device)).all()
    if any(revoked is not None and (d.device_id == req.device_id or d.is_pub == req.is_pub or d.ik_pub == req.ik_pub)
           for d, revoked in rows):
        raise _refuse(metrics, status.HTTP_403_FORBIDDEN, "this identity is revoked and cannot enroll again")
    if any(d.device_id != req.device_id for d, _ in rows):
        raise _refuse(metrics, status.HTTP_409_CONFLICT, "identity key or board already enrolled as another device")
    return next((d for d, _ in rows if d.device_id == req.device_id), None)


def _check_operator_key(key: str | None, settings: Settings, metrics: Metrics) -> bool:
    """True for a valid X-API-Key, False without one; a wrong key is refused (403)."""
    if key is None:
        return False
    if not operator_key_matches(key, settings.operator_key_hashes()):
        raise _refuse(metrics, status.HTTP_403_FORBIDDEN, "invalid operator API key")
    return True


def _check_re_registration(device: Device, req: EnrollmentRequest, claim: EnrollmentClaim, operator: bool,
                           metrics: Metrics) -> None:
    """New keys for an enrolled device id: a claim naming the device's (non-empty) owner, or an
    operator; and where a board is on record, that board's evidence (verified by
    _check_evidence). Runs before the registration lock, so a stranger spends none of its PIN
    attempts (issue 12, finding 4)."""
    if not operator and not (device.owner and claim.owner == device.owner):
        raise _refuse(metrics, status.HTTP_403_FORBIDDEN, "re-registering an enrolled device id with new "
                      "keys needs a claim of the device's owner or an operator key")
    if device.board_uid is not None and req.board_uid != device.board_uid:
        raise _refuse(metrics, status.HTTP_403_FORBIDDEN, "this device id is bound to a board: "
                      "re-registration needs that board's hardware evidence")


def _check_registration_lock(session: Session, device: Device, req: EnrollmentRequest, settings: Settings,
                             metrics: Metrics) -> None:
    """A locked identity re-registers only with its PIN; wrong PINs count, and after
    E2EE_PROV_REGISTRATION_LOCK_ATTEMPTS of them only an operator can clear the lock."""
    if not device.lock_hash:
        return
    if device.lock_failures >= settings.registration_lock_attempts:
        raise _refuse(metrics, status.HTTP_423_LOCKED,
                      "registration lock: too many wrong PINs; an operator must clear the lock")
    if req.registration_lock_pin is None:
        raise _refuse(metrics, status.HTTP_423_LOCKED, "registration lock: this identity needs its PIN")
    if not pin_matches(req.registration_lock_pin, device.lock_hash):
        left = settings.registration_lock_attempts - device.lock_failures - 1
        session.execute(update(Device).where(Device.id == device.id)
                        .values(lock_failures=Device.lock_failures + 1))
        session.commit()
        metrics.inc("e2ee_registration_lock_failures_total", fleet=device.fleet)
        if left == 0:
            metrics.inc("e2ee_registration_lockouts_total", fleet=device.fleet)
        raise _refuse(metrics, status.HTTP_423_LOCKED, "registration lock: wrong PIN (%d attempts left)" % left)


def _broker_credentials(broker: BrokerAdmin | None, settings: Settings, device: Device, metrics: Metrics,
                        password: str | None) -> MqttCredentials | None:
    """The device's broker password (a fresh random one, or the one the device chose when it
    enrolls over MQTT), set on the broker before the enrollment commits (core/broker.py); None
    when the service drives no broker."""
    if broker is None:
        return None
    password = password or secrets.token_urlsafe(24)
    try:
        broker.provision_device(device.fleet, device.device_id, password)
    except BrokerError:
        raise _refuse(metrics, status.HTTP_503_SERVICE_UNAVAILABLE, "the broker did not accept the device; retry")
    return MqttCredentials(host=settings.mqtt_host, port=settings.mqtt_port, username=device.device_id,
                           client_id=device.device_id, password=password)


def _publish_revocation_list(broker: BrokerAdmin | None, fleet: str, data: bytes, metrics: Metrics) -> None:
    """The list that revokes the superseded certificates, retained on the fleet's crl topic
    (docs/broker.md), after the commit; a broker that does not take it is logged and counted:
    the enrollment stands and the next list published carries the serials too."""
    if broker is None:
        return
    try:
        broker.publish_revocation_list(fleet, data)
    except BrokerError:
        metrics.inc("e2ee_revocation_list_publish_failures_total")
        log.warning("the broker did not take the revocation list of fleet %s; GET /revocations serves it",
                    fleet)


# the claim in the body authorizes an enrollment; an operator key (optional) a re-registration
@router.post("", status_code=status.HTTP_201_CREATED, response_model=EnrollmentResult,
             openapi_extra={"security": [{}, OPERATOR]}, responses=refusals({
                 401: "unknown or expired challenge, or the proof of possession does not verify",
                 403: "the claim is unknown, revoked, expired, used up or for another fleet; hardware evidence "
                      "missing or not verifying; an invalid operator key; a revoked identity; re-registration "
                      "without the owner's claim or the recorded board",
                 409: "the identity key or board is enrolled as another device, the device id in another fleet, "
                      "or a concurrent enrollment won; retry",
                 423: "registration lock: the identity needs its PIN, the PIN is wrong, or too many wrong PINs "
                      "(an operator clears the lock)",
                 503: "hardware evidence cannot be verified here, or the broker did not accept the device; retry"}))
def post_enroll(req: EnrollmentRequest, request: Request, session: SessionDep, settings: SettingsDep,
                metrics: MetricsDep, ca: CADep,
                x_api_key: Annotated[str | None, Header()] = None) -> EnrollmentResult:
    """X-API-Key (optional): an operator's key, which authorizes re-registering a device id with
    new keys without its owner's claim."""
    operator = _check_operator_key(x_api_key, settings, metrics)
    return enroll(req, session=session, settings=settings, metrics=metrics, ca=ca, broker=request.app.state.broker,
                  operator=operator)


def _retire_spent_claim(session: Session, broker: BrokerAdmin | None, claim: EnrollmentClaim) -> None:
    """A claim whose last use this enrollment took loses its broker credential (zero-touch
    enrollment by claim, api/channel.py): useless once spent. A broker that does not take the
    command is logged; the credential can do nothing but ask for enrollments, which the claim
    now refuses (and the service channel then retires it again)."""
    if broker is None:
        return
    used, quota = session.execute(select(EnrollmentClaim.used, EnrollmentClaim.quota)
                                  .where(EnrollmentClaim.id == claim.id)).one()
    session.rollback()  # the read ends here: SQLite's BEGIN IMMEDIATE must not hold the lock
    if used < quota:
        return
    try:
        broker.remove_claim(claim.fleet, claim.id)
    except BrokerError:
        log.warning("the broker did not remove the credential of spent claim %d", claim.id)


def enroll(req: EnrollmentRequest, *, session: Session, settings: Settings, metrics: Metrics, ca: CAKeystore,
           broker: BrokerAdmin | None, operator: bool, mqtt_password: str | None = None,
           retire_spent_claim: bool = True) -> EnrollmentResult:
    """The enrollment of POST /enroll (checks in the documented order, then the writes), for
    HTTP and the service channel's enroll-by-claim (api/channel.py), which passes the broker
    password the device chose and retires a spent claim's credential itself, once its answer
    went out over that credential's connection. HTTPException for every refusal."""
    now = utcnow()
    # 1. a fresh challenge of ours
    challenge = session.scalar(select(EnrollmentChallenge).where(EnrollmentChallenge.nonce == req.challenge))
    if challenge is None or challenge.expires_at <= now:
        raise _refuse(metrics, status.HTTP_401_UNAUTHORIZED, "unknown or expired enrollment challenge")
    # 2. a claim that can still be spent, for this fleet
    claim = _usable_claim(session, req.claim_token, req.fleet, metrics)
    # 3. proof of possession of IS over the challenge, the claim and every field enrolled
    message = enrollment.proof_message(req.challenge, enrollment.claim_hash(req.claim_token), req.device_id,
                                       req.fleet, req.ik_pub, req.is_pub, req.board_uid or b"")
    try:
        crypto.ed25519_verify(req.is_pub, message, req.proof)
    except CryptoError:
        raise _refuse(metrics, status.HTTP_401_UNAUTHORIZED, "proof of possession does not verify")
    # 4. hardware binding evidence
    _check_evidence(req, claim, settings, metrics)
    # 5. revoked identities stay out; 6. conflicts: the identity key or the board under another
    # device id. FOR UPDATE: enrollments of one device id take turns from here on PostgreSQL
    # (SQLite's BEGIN IMMEDIATE already serializes them), so the PIN attempts below never outrun
    # their limit and a re-registration supersedes the certificate of the one before it (issue
    # 12, finding 11)
    device = _known_identities(session, req, metrics)
    if device is not None and device.fleet != req.fleet:
        raise _refuse(metrics, status.HTTP_409_CONFLICT, "device id is enrolled in another fleet")
    rekey = device is not None and (device.ik_pub != req.ik_pub or device.is_pub != req.is_pub)
    if rekey:
        assert device is not None
        _check_re_registration(device, req, claim, operator, metrics)
        _check_registration_lock(session, device, req, settings, metrics)

    # --- every check passed: spend the claim and the challenge, then write ---
    spent = session.execute(update(EnrollmentClaim).where(
        EnrollmentClaim.id == claim.id, EnrollmentClaim.used < EnrollmentClaim.quota,
        EnrollmentClaim.expires_at > now, EnrollmentClaim.revoked_at.is_(None)).values(used=EnrollmentClaim.used + 1))
    used = session.execute(delete(EnrollmentChallenge).where(EnrollmentChallenge.id == challenge.id))
    if spent.rowcount != 1 or used.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()  # a concurrent enrollment took the last use or the challenge
        raise _refuse(metrics, status.HTTP_409_CONFLICT,
                      "claim or challenge was used or revoked concurrently; retry")
    roles = claim.roles
    if device is None:
        device = Device(device_id=req.device_id, fleet=req.fleet, created_at=now, last_signed_at=0,
                        lock_hash="", lock_failures=0)
        session.add(device)
    elif rekey:
        # a re-registered identity: its old certificates are superseded, its prekeys are gone
        session.execute(update(Certificate).where(Certificate.device_pk == device.id,
                                                  Certificate.revoked_at.is_(None))
                        .values(revoked_at=now, revoke_reason="superseded"))
        session.execute(delete(OneTimePrekey).where(OneTimePrekey.device_pk == device.id))
        session.execute(delete(SignedPrekey).where(SignedPrekey.device_pk == device.id))
        device.last_signed_at = 0
        device.lock_failures = 0
    device.ik_pub, device.is_pub = req.ik_pub, req.is_pub
    device.fingerprint = keys.fingerprint(req.ik_pub, req.is_pub).hex()
    device.owner, device.roles, device.enrolled_at = claim.owner, roles, now
    if req.board_uid is not None:
        device.board_uid = req.board_uid
    try:
        session.flush()  # a new device id that a concurrent enrollment just created: unique violation
    except IntegrityError:
        session.rollback()
        raise _refuse(metrics, status.HTTP_409_CONFLICT, "device was enrolled concurrently; retry")
    issued = int(time.time())
    not_before, not_after = issued - _NOT_BEFORE_SLACK, issued + settings.certificate_lifetime
    data = issue_certificate(ca, device_id=req.device_id, fleet=req.fleet, identity_dh=req.ik_pub,
                             identity_sign=req.is_pub, not_before=not_before, not_after=not_after,
                             roles=[r for r in roles.split(",") if r])
    serial = decode_certificate_unverified(data).serial
    session.add(Certificate(device_pk=device.id, serial=serial, not_before=not_before, not_after=not_after,
                            data=data, issued_at=now, revoke_reason=""))
    if rekey:
        publish_revocation_list(session, ca)
        metrics.inc("e2ee_revocation_lists_signed_total")
    crl = current_revocation_list(session)  # read before the commit: no second transaction for it
    mqtt = _broker_credentials(broker, settings, device, metrics, mqtt_password)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise _refuse(metrics, status.HTTP_409_CONFLICT, "device was enrolled concurrently; retry")
    metrics.inc("e2ee_enrollments_total", fleet=device.fleet)
    if retire_spent_claim:
        _retire_spent_claim(session, broker, claim)
    log.info("enrolled %s in fleet %s: certificate %s until %d%s", device.device_id, device.fleet, serial.hex(),
             not_after, " (re-registered with new keys)" if rekey else "")
    if rekey:
        _publish_revocation_list(broker, device.fleet, crl.data, metrics)
    return EnrollmentResult(device_id=device.device_id, fleet=device.fleet, certificate=data, serial=serial.hex(),
                            not_after=not_after, ca_keys=ca.public_keys(), revocation_list=crl.data,
                            mqtt=mqtt)
