from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TYPE_UNSPECIFIED: _ClassVar[Type]
    PREKEY: _ClassVar[Type]
    RATCHET: _ClassVar[Type]
    SENDER_KEY: _ClassVar[Type]
    CONTROL: _ClassVar[Type]
TYPE_UNSPECIFIED: Type
PREKEY: Type
RATCHET: Type
SENDER_KEY: Type
CONTROL: Type

class Envelope(_message.Message):
    __slots__ = ("version", "type", "body")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    version: int
    type: Type
    body: bytes
    def __init__(self, version: _Optional[int] = ..., type: _Optional[_Union[Type, str]] = ..., body: _Optional[bytes] = ...) -> None: ...

class RatchetMessage(_message.Message):
    __slots__ = ("dh", "pn", "n", "ciphertext")
    DH_FIELD_NUMBER: _ClassVar[int]
    PN_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    dh: bytes
    pn: int
    n: int
    ciphertext: bytes
    def __init__(self, dh: _Optional[bytes] = ..., pn: _Optional[int] = ..., n: _Optional[int] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class PreKeyMessage(_message.Message):
    __slots__ = ("identity_dh", "identity_sign", "base_key", "signed_prekey_id", "one_time_prekey_id", "message", "sender_certificate")
    IDENTITY_DH_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_SIGN_FIELD_NUMBER: _ClassVar[int]
    BASE_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNED_PREKEY_ID_FIELD_NUMBER: _ClassVar[int]
    ONE_TIME_PREKEY_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SENDER_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    identity_dh: bytes
    identity_sign: bytes
    base_key: bytes
    signed_prekey_id: int
    one_time_prekey_id: int
    message: RatchetMessage
    sender_certificate: bytes
    def __init__(self, identity_dh: _Optional[bytes] = ..., identity_sign: _Optional[bytes] = ..., base_key: _Optional[bytes] = ..., signed_prekey_id: _Optional[int] = ..., one_time_prekey_id: _Optional[int] = ..., message: _Optional[_Union[RatchetMessage, _Mapping]] = ..., sender_certificate: _Optional[bytes] = ...) -> None: ...

class Control(_message.Message):
    __slots__ = ("kind", "payload")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Control.Kind]
        SESSION_RESET: _ClassVar[Control.Kind]
    KIND_UNSPECIFIED: Control.Kind
    SESSION_RESET: Control.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    kind: Control.Kind
    payload: bytes
    def __init__(self, kind: _Optional[_Union[Control.Kind, str]] = ..., payload: _Optional[bytes] = ...) -> None: ...
