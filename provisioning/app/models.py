"""Database tables (SQLAlchemy 2) and the API models (pydantic, split Base/Create/Public).

The service stores public keys only: identity keys, signed prekeys and one-time prekeys as
published by devices, claim tokens as SHA-256 hashes. No private key or plaintext has a column.
"""
from __future__ import annotations

import base64
import binascii
from datetime import datetime, timezone
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, Field, PlainSerializer
from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, LargeBinary, String, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base", "Device", "EnrollmentClaim", "OneTimePrekey", "Revocation", "SignedPrekey",
    "B64Bytes", "ClaimCreate", "ClaimPublic", "ClaimsCreated", "DeviceCreate", "DevicePublic",
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
    # newest accepted signed-request timestamp (unix seconds): replayed writes are refused
    last_signed_at: Mapped[int] = mapped_column(BigInteger, default=0)


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
DeviceIdStr = Annotated[str, Field(min_length=1, max_length=DEVICE_ID_MAX, pattern=r"^[A-Za-z0-9._-]+$")]
FleetStr = Annotated[str, Field(min_length=1, max_length=FLEET_MAX, pattern=r"^[A-Za-z0-9._-]+$")]
Uint32 = Annotated[int, Field(ge=0, le=0xFFFFFFFF)]


class DeviceBase(BaseModel):
    device_id: DeviceIdStr
    fleet: FleetStr


class DeviceCreate(DeviceBase):
    ik_pub: Key32
    is_pub: Key32


class DevicePublic(DeviceBase):
    ik_pub: B64Bytes
    is_pub: B64Bytes
    fingerprint: str
    created_at: datetime
    revoked: bool = False


class ClaimBase(BaseModel):
    fleet: FleetStr
    label: str = Field("", max_length=128)
    quota: int = Field(1, ge=1, le=MAX_CLAIM_QUOTA, description="enrollments one token allows (1: single-use)")


class ClaimCreate(ClaimBase):
    expires_in: int = Field(86_400, ge=60, le=MAX_CLAIM_LIFETIME, description="seconds until expiry")
    count: int = Field(1, ge=1, le=MAX_CLAIMS_PER_REQUEST, description="tokens to create")


class ClaimPublic(ClaimBase):
    id: int
    used: int
    expires_at: datetime
    created_at: datetime


class ClaimsCreated(BaseModel):
    claims: list[ClaimPublic]
    # the tokens, in the order of `claims`: shown once, stored only as SHA-256 hashes
    tokens: list[str]


class SignedPrekeyUpload(BaseModel):
    spk_id: Uint32
    spk_pub: B64Bytes
    spk_sig: B64Bytes


class OneTimePrekeyUpload(BaseModel):
    opk_id: Uint32
    opk_pub: B64Bytes


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
