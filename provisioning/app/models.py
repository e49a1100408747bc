"""Database tables (SQLAlchemy 2) and the API models (pydantic, split Base/Create/Public).

The service stores public keys only: identity keys, signed prekeys and one-time prekeys as
published by devices, claim tokens as SHA-256 hashes. No private key or plaintext has a column.
"""
from __future__ import annotations

import base64
import binascii
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, PlainSerializer
from sqlalchemy import (
    BigInteger, Boolean, DateTime, ForeignKey, Identity, Index, Integer, LargeBinary, String, TypeDecorator, UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Backup", "BackupFetch", "BackupParams", "Base", "Certificate", "Device", "DeviceIdentity", "Link", "LinkApproval",
    "OwnerDevicePublic", "RelayClient", "RelayMessage", "RelayMessagePublic", "RelaySend", "RendezvousMessage", "EnrollmentChallenge", "EnrollmentClaim", "OneTimePrekey", "Revocation",
    "RevocationListRecord", "SignedPrekey", "SignedRequest",
    "B64Bytes", "ChallengePublic", "ClaimCreate", "ClaimPublic", "ClaimsCreated", "CertificateStatus",
    "DevicePublic", "EnrollmentRequest", "EnrollmentResult", "MqttCredentials", "RegistrationLockSet",
    "RevocationListPublic", "RevokeRequest", "RevokeResult",
    "BundlePublic", "InventoryPublic", "OneTimePrekeyUpload", "PrekeyUpload", "SignedPrekeyUpload",
]

# Limits of the API (docs/provisioning.md); the one-time prekey batch matches the device's
# e2ee.protocol.keys.MAX_ONE_TIME_PREKEYS.
DEVICE_ID_MAX = 64
FLEET_MAX = 64
MAX_UPLOAD_BATCH = 100
MAX_CLAIM_QUOTA = 100_000
MAX_CLAIMS_PER_REQUEST = 100
MAX_CLAIM_LIFETIME = 366 * 86_400
MAX_ROLES = 8  # as in certificates (e2ee.protocol.certificate.MAX_ROLES)
ROLE_MAX = 32
MAX_BOARD_UID = 32  # e2ee.protocol.enrollment.MAX_BOARD_UID
PIN_MIN, PIN_MAX = 4, 64
# Free text (labels, reasons, tokens, PINs) carries no NUL: PostgreSQL's text columns cannot hold
# one, so it was a 500 there (issue 12, finding 11); refused with 422 on both engines.
NO_NUL = r"^[^\x00]*$"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every engine (SQLite stores them without a zone)."""
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


# --- tables ---------------------------------------------------------------------------------

class Base(DeclarativeBase):
    pass


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(DEVICE_ID_MAX), unique=True)
    fleet: Mapped[str] = mapped_column(String(FLEET_MAX), index=True)
    ik_pub: Mapped[bytes] = mapped_column(LargeBinary(32))
    is_pub: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    fingerprint: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # newest accepted signed-write timestamp (Unix ms; seconds in rows older than issue 12, which
    # are smaller than any ms value): older writes are refused
    last_signed_at: Mapped[int] = mapped_column(BigInteger, default=0)
    # who the device belongs to inside the fleet (from its claim); "" when the claim named nobody
    owner: Mapped[str] = mapped_column(String(FLEET_MAX), default="", index=True)
    roles: Mapped[str] = mapped_column(String(MAX_ROLES * (ROLE_MAX + 1)), default="")  # comma-separated
    board_uid: Mapped[bytes | None] = mapped_column(LargeBinary(MAX_BOARD_UID), nullable=True)
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # registration lock: scrypt hash of the PIN ("" when unlocked) and failed attempts so far
    lock_hash: Mapped[str] = mapped_column(String(200), default="")
    lock_failures: Mapped[int] = mapped_column(Integer, default=0)


class EnrollmentClaim(Base):
    __tablename__ = "enrollment_claims"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    fleet: Mapped[str] = mapped_column(String(FLEET_MAX), index=True)
    label: Mapped[str] = mapped_column(String(128), default="")
    quota: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    owner: Mapped[str] = mapped_column(String(FLEET_MAX), default="")
    roles: Mapped[str] = mapped_column(String(MAX_ROLES * (ROLE_MAX + 1)), default="")  # comma-separated
    # devices enrolling with this claim must present hardware binding evidence
    require_hardware: Mapped[bool] = mapped_column(Boolean, default=False)
    # an operator's revocation (POST /claims/{id}/revoke): no enrollment spends the claim after it
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoke_reason: Mapped[str] = mapped_column(String(128), default="")


class EnrollmentChallenge(Base):
    """A fresh server challenge for proof of possession; deleted by the enrollment that uses it."""
    __tablename__ = "enrollment_challenges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    nonce: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Certificate(Base):
    """A certificate the Fleet CA issued (public data: the signed bytes and their fields)."""
    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    serial: Mapped[bytes] = mapped_column(LargeBinary(16), unique=True)
    not_before: Mapped[int] = mapped_column(BigInteger)
    not_after: Mapped[int] = mapped_column(BigInteger, index=True)
    data: Mapped[bytes] = mapped_column(LargeBinary(768))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoke_reason: Mapped[str] = mapped_column(String(128), default="")


class Backup(Base):
    """A device's encrypted backup (docs/backup.md): the blob lives in the blob store; the row
    holds what a restore needs before it can decrypt (salt, Argon2id parameters) and SHA-256 of
    the fetch token."""
    __tablename__ = "backups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), unique=True)
    blob_name: Mapped[str] = mapped_column(String(80))
    size: Mapped[int] = mapped_column(Integer)
    salt: Mapped[bytes] = mapped_column(LargeBinary(16))
    memory_kib: Mapped[int] = mapped_column(Integer)
    iterations: Mapped[int] = mapped_column(Integer)
    lanes: Mapped[int] = mapped_column(Integer)
    auth_sha256: Mapped[str] = mapped_column(String(64))
    failures: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Link(Base):
    """A device linked to its owner by the owner's primary (docs/linking.md), with the primary's
    signature over e2ee.protocol.linking.approval_message()."""
    __tablename__ = "links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(FLEET_MAX), index=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), unique=True)
    primary_pk: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    approval: Mapped[bytes] = mapped_column(LargeBinary(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RendezvousMessage(Base):
    """One sealed linking-channel message waiting for the other side (short-lived)."""
    __tablename__ = "rendezvous"
    __table_args__ = (UniqueConstraint("channel", "slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    slot: Mapped[str] = mapped_column(String(8))
    data: Mapped[bytes] = mapped_column(LargeBinary(2048))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class RelayClient(Base):
    """A client that receives through the HTTP relay instead of MQTT (docs/broker.md, "Relay")."""
    __tablename__ = "relay_clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), unique=True)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RelayMessage(Base):
    """An envelope that arrived in a relay client's inbox and waits until the client acknowledges it.

    Ids are never reused (alembic 0007), so they increase in the order the relay stored the
    envelopes and a client's `after=` cursor stays valid: SQLite's INTEGER PRIMARY KEY
    AUTOINCREMENT (its rowid without the keyword hands out max(id) + 1, which reuses the ids of an
    acknowledged, emptied table) and a 64-bit identity on PostgreSQL."""
    __tablename__ = "relay_messages"
    __table_args__ = (Index("ix_relay_messages_device_digest", "device_pk", "digest", unique=True),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), Identity(always=True),
                                    primary_key=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    sender: Mapped[str] = mapped_column(String(DEVICE_ID_MAX))
    envelope: Mapped[bytes] = mapped_column(LargeBinary(8192))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # SHA-256 of sender and envelope (core/relay.py relay_digest): a copy the broker delivers again
    # is not stored twice (alembic 0009; None on rows stored before it)
    digest: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)


class SignedRequest(Base):
    """A signed request the service accepted (docs/provisioning.md, "Authentication"): SHA-256 of
    its signed message, kept until its timestamp leaves the accepted window (expires_at, Unix
    seconds); a second request with the same message is a replay (issue 12, finding 10)."""
    __tablename__ = "signed_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


class RevocationListRecord(Base):
    """Every revocation list the CA signed; the highest version is the current one."""
    __tablename__ = "revocation_lists"

    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    issued_at: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary(9400))


class SignedPrekey(Base):
    """The current signed prekey of a device (one row per device, replaced on upload)."""
    __tablename__ = "signed_prekeys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), unique=True)
    spk_id: Mapped[int] = mapped_column(BigInteger)
    spk_pub: Mapped[bytes] = mapped_column(LargeBinary(32))
    spk_sig: Mapped[bytes] = mapped_column(LargeBinary(64))
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OneTimePrekey(Base):
    """A published one-time prekey; deleted in the statement that hands it out."""
    __tablename__ = "one_time_prekeys"
    __table_args__ = (UniqueConstraint("device_pk", "opk_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    opk_id: Mapped[int] = mapped_column(BigInteger)
    opk_pub: Mapped[bytes] = mapped_column(LargeBinary(32))


class Revocation(Base):
    __tablename__ = "revocations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), unique=True)
    reason: Mapped[str] = mapped_column(String(128), default="")
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# --- API models -----------------------------------------------------------------------------

def _b64decode(value: object) -> object:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError("not valid base64") from e
    return value


# bytes carried as standard base64 in JSON
B64Bytes = Annotated[
    bytes, BeforeValidator(_b64decode), PlainSerializer(lambda b: base64.b64encode(b).decode(), return_type=str)]
Key32 = Annotated[B64Bytes, Field(min_length=32, max_length=32)]

_P25519 = 2**255 - 19


def _canonical_x25519(key: bytes) -> bytes:
    """RFC 7748 §5: X25519 ignores bit 255 and reduces u mod p, so an encoding with bit 255 set or
    u >= 2^255-19 aliases a canonical key (two byte strings, one key: issue 12, finding 7).
    Other lengths are left to the checks that name them."""
    if len(key) == 32 and int.from_bytes(key, "little") >= _P25519:
        raise ValueError("X25519 public key is not canonical (bit 255 set or u >= 2^255-19)")
    return key


def _canonical_ed25519(key: bytes) -> bytes:
    """RFC 8032 §5.1.3: y < p, and x = 0 (y = 1 or p - 1) never with the sign bit set."""
    y = int.from_bytes(key, "little") & ((1 << 255) - 1)
    if len(key) == 32 and (y >= _P25519 or (key[31] & 0x80 and y in (1, _P25519 - 1))):
        raise ValueError("Ed25519 public key is not canonical (RFC 8032 section 5.1.3)")
    return key


# public keys in their one canonical encoding (422 otherwise)
X25519Pub = Annotated[B64Bytes, AfterValidator(_canonical_x25519)]
Ed25519Pub = Annotated[B64Bytes, AfterValidator(_canonical_ed25519)]
DeviceIdStr = Annotated[str, Field(min_length=1, max_length=DEVICE_ID_MAX, pattern=r"^[A-Za-z0-9._-]+$")]
FleetStr = Annotated[str, Field(min_length=1, max_length=FLEET_MAX, pattern=r"^[A-Za-z0-9._-]+$")]
Uint32 = Annotated[int, Field(ge=0, le=0xFFFFFFFF)]


RoleStr = Annotated[str, Field(min_length=1, max_length=ROLE_MAX, pattern=r"^[A-Za-z0-9._-]+$")]
OwnerStr = Annotated[str, Field(max_length=FLEET_MAX, pattern=r"^[A-Za-z0-9._-]*$")]


class DeviceBase(BaseModel):
    device_id: DeviceIdStr
    fleet: FleetStr


class DevicePublic(DeviceBase):
    owner: str
    roles: list[str]
    ik_pub: B64Bytes
    is_pub: B64Bytes
    fingerprint: str
    board_uid: B64Bytes | None
    created_at: datetime
    enrolled_at: datetime
    revoked: bool = False
    registration_lock: bool = False
    # hex serial of the newest certificate issued to the device
    certificate_serial: str | None = None
    certificate_not_after: int | None = None


class ClaimBase(BaseModel):
    fleet: FleetStr
    label: str = Field("", max_length=128, pattern=NO_NUL)
    quota: int = Field(1, ge=1, le=MAX_CLAIM_QUOTA, description="enrollments one token allows (1: single-use)")
    owner: OwnerStr = Field("", description="owner the enrolled devices belong to (device list per owner)")
    roles: list[RoleStr] = Field(default_factory=list, max_length=MAX_ROLES,
                                 description="roles/groups written into the devices' certificates")
    require_hardware: bool = Field(False, description="enrollment must carry hardware binding evidence")


class ClaimCreate(ClaimBase):
    expires_in: int = Field(86_400, ge=60, le=MAX_CLAIM_LIFETIME, description="seconds until expiry")
    count: int = Field(1, ge=1, le=MAX_CLAIMS_PER_REQUEST, description="tokens to create")
    mqtt: bool = Field(False, description="also a broker credential per token that may only enroll over MQTT "
                       "(zero-touch; username claim:<id>, the token as password; needs a broker)")


class ClaimPublic(ClaimBase):
    id: int
    used: int
    expires_at: datetime
    created_at: datetime
    # set once an operator revoked the claim (None: not revoked)
    revoked_at: datetime | None = None
    revoke_reason: str = ""


class ClaimsCreated(BaseModel):
    claims: list[ClaimPublic]
    # the tokens, in the order of `claims`: shown once, stored only as SHA-256 hashes
    tokens: list[str]


class SignedPrekeyUpload(BaseModel):
    spk_id: Uint32
    spk_pub: X25519Pub
    spk_sig: B64Bytes


class OneTimePrekeyUpload(BaseModel):
    opk_id: Uint32
    opk_pub: X25519Pub


class PrekeyUpload(BaseModel):
    """A device's upload: a new signed prekey and/or one-time prekeys (checked with
    e2ee.protocol.keys, docs/protocol.md §1)."""
    signed_prekey: SignedPrekeyUpload | None = None
    one_time_prekeys: list[OneTimePrekeyUpload] = Field(default_factory=list, max_length=MAX_UPLOAD_BATCH)


class InventoryPublic(BaseModel):
    device_id: str
    one_time_prekeys: int
    signed_prekey_id: int | None
    replenish: bool


class BundlePublic(BaseModel):
    device_id: str
    # e2ee.protocol.keys.PrekeyBundle.to_bytes() (docs/protocol.md §1), base64
    bundle: B64Bytes
    one_time_prekey: bool


class ChallengePublic(BaseModel):
    # 32 random bytes the device signs (proof of possession); single use
    challenge: B64Bytes
    expires_at: datetime
    # whether POST /enroll hands out MQTT credentials (the service drives a broker and knows the
    # address devices reach it at): a host client refuses a service without before enrolling
    broker: bool = False


class EnrollmentRequest(BaseModel):
    """POST /enroll: e2ee.protocol.enrollment.enrollment_fields() plus the claim and names."""
    claim_token: str = Field(min_length=16, max_length=128, pattern=NO_NUL)
    challenge: Key32
    device_id: DeviceIdStr
    fleet: FleetStr
    ik_pub: Annotated[Key32, AfterValidator(_canonical_x25519)]
    is_pub: Annotated[Key32, AfterValidator(_canonical_ed25519)]
    proof: Annotated[B64Bytes, Field(min_length=64, max_length=64)]
    board_uid: Annotated[B64Bytes, Field(min_length=1, max_length=MAX_BOARD_UID)] | None = None
    evidence: Key32 | None = None
    # the PIN of the registration lock, when re-enrolling a locked identity
    registration_lock_pin: str | None = Field(None, min_length=PIN_MIN, max_length=PIN_MAX, pattern=NO_NUL)


class MqttCredentials(BaseModel):
    host: str
    port: int
    username: str
    client_id: str
    # shown once; the broker keeps only its own salted hash
    password: str


class EnrollmentResult(BaseModel):
    device_id: str
    fleet: str
    # serialized SignedCertificate (proto/e2ee/v1/certificate.proto), base64
    certificate: B64Bytes
    serial: str
    not_after: int
    # every Fleet CA public key devices must trust (several during a rotation), base64
    ca_keys: list[B64Bytes]
    # the current SignedRevocationList, base64
    revocation_list: B64Bytes
    mqtt: MqttCredentials | None


class RevokeRequest(BaseModel):
    reason: str = Field("", max_length=128, pattern=NO_NUL)


class RevocationListPublic(BaseModel):
    version: int
    issued_at: int
    revoked: int
    # serialized SignedRevocationList, base64
    revocation_list: B64Bytes
    ca_keys: list[B64Bytes]


class RevokeResult(BaseModel):
    device_id: str
    revoked_serials: list[str]
    revocation_list_version: int


class CertificateStatus(BaseModel):
    serial: str
    device_id: str
    status: Literal["good", "revoked", "expired"]
    not_before: int
    not_after: int
    revoked_at: datetime | None
    revoke_reason: str


class BackupParams(BaseModel):
    salt: B64Bytes
    memory_kib: int
    iterations: int
    lanes: int
    size: int
    updated_at: datetime


class BackupFetch(BaseModel):
    # the fetch token derived from the passphrase (e2ee_host.backup.auth_token)
    auth: Key32


class LinkApproval(BaseModel):
    owner: Annotated[str, Field(min_length=1, max_length=FLEET_MAX, pattern=r"^[A-Za-z0-9._-]+$")]
    device_id: DeviceIdStr
    fingerprint: Annotated[B64Bytes, Field(min_length=16, max_length=16)]
    # Ed25519 by the primary's IS over e2ee.protocol.linking.approval_message(owner, device_id, fingerprint)
    approval: Annotated[B64Bytes, Field(min_length=64, max_length=64)]
    # Ed25519 by the new device's IS over e2ee.protocol.linking.consent_message(owner, primary's
    # device id, the new device's fingerprint): the new device agrees (issue 12, finding 5)
    consent: Annotated[B64Bytes, Field(min_length=64, max_length=64)]


class DeviceIdentity(BaseModel):
    device_id: str
    fleet: str
    ik_pub: B64Bytes
    is_pub: B64Bytes
    # the newest unrevoked SignedCertificate, base64
    certificate: B64Bytes


class OwnerDevicePublic(BaseModel):
    device_id: str
    fleet: str
    ik_pub: B64Bytes
    is_pub: B64Bytes
    fingerprint: str
    primary: str | None  # the device that approved the link; None for the owner's enrolled primary
    approval: B64Bytes | None


class RelaySend(BaseModel):
    to: DeviceIdStr
    fleet: FleetStr | None = None
    envelope: Annotated[B64Bytes, Field(min_length=1, max_length=5120)]


class RelayMessagePublic(BaseModel):
    id: int
    sender: str
    envelope: B64Bytes
    received_at: datetime


class RegistrationLockSet(BaseModel):
    pin: str = Field(min_length=PIN_MIN, max_length=PIN_MAX, pattern=NO_NUL)


class ServiceTime(BaseModel):
    """The service's clock (GET /time and the service channel): boards without a real-time clock
    set theirs from it before they check certificate validity or sign requests."""
    now_ms: int


class ChannelBundle(BundlePublic):
    """The service channel's bundle answer: GET /keys/{id}/bundle and the device's newest valid
    certificate (GET /identities/{id}) in one answer, what a board needs to start a session."""
    certificate: B64Bytes
