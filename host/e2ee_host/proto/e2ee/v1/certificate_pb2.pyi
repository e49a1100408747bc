from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceCertificate(_message.Message):
    __slots__ = ("version", "serial", "device_id", "fleet", "identity_dh", "identity_sign", "roles", "not_before", "not_after", "issuer_key_id")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_DH_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_SIGN_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    ISSUER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    version: int
    serial: bytes
    device_id: str
    fleet: str
    identity_dh: bytes
    identity_sign: bytes
    roles: _containers.RepeatedScalarFieldContainer[str]
    not_before: int
    not_after: int
    issuer_key_id: bytes
    def __init__(self, version: _Optional[int] = ..., serial: _Optional[bytes] = ..., device_id: _Optional[str] = ..., fleet: _Optional[str] = ..., identity_dh: _Optional[bytes] = ..., identity_sign: _Optional[bytes] = ..., roles: _Optional[_Iterable[str]] = ..., not_before: _Optional[int] = ..., not_after: _Optional[int] = ..., issuer_key_id: _Optional[bytes] = ...) -> None: ...

class SignedCertificate(_message.Message):
    __slots__ = ("certificate", "signature")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    certificate: bytes
    signature: bytes
    def __init__(self, certificate: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class RevocationList(_message.Message):
    __slots__ = ("version", "issued_at", "revoked_serials", "issuer_key_id")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_SERIALS_FIELD_NUMBER: _ClassVar[int]
    ISSUER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    version: int
    issued_at: int
    revoked_serials: _containers.RepeatedScalarFieldContainer[bytes]
    issuer_key_id: bytes
    def __init__(self, version: _Optional[int] = ..., issued_at: _Optional[int] = ..., revoked_serials: _Optional[_Iterable[bytes]] = ..., issuer_key_id: _Optional[bytes] = ...) -> None: ...

class SignedRevocationList(_message.Message):
    __slots__ = ("revocation_list", "signature")
    REVOCATION_LIST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    revocation_list: bytes
    signature: bytes
    def __init__(self, revocation_list: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...
