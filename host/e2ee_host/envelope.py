"""Envelope encode/decode on the generated protobuf classes (docs/protocol.md §4).

Generated code, checked in on purpose: ``e2ee_host/proto/e2ee/v1/envelope_pb2.py`` (and ``.pyi``)
is protoc's output for ``proto/e2ee/v1/envelope.proto``. It is committed so the host SDK installs
and imports without a protobuf compiler; ``tests/protocol/test_envelope.py`` regenerates it into a
temporary directory and fails if the checked-in files differ by a byte. After editing the
.proto, regenerate from the repository root with the pinned grpcio-tools (pyproject dev extra)::

    python -m grpc_tools.protoc -I proto --python_out=host/e2ee_host/proto \\
        --pyi_out=host/e2ee_host/proto proto/e2ee/v1/envelope.proto

The runtime must be at least the gencode version named in envelope_pb2.py (pyproject pins it).

Both directions apply exactly the device codec's rules (``e2ee.protocol.envelope``) and raise its
error classes: ``decode`` validates the bytes with the device codec before protobuf parses them,
so host and device accept and reject the same inputs, and ``encode`` checks every field against
the same limits before protobuf serializes it. Bytes written here equal the device's.
"""
from __future__ import annotations

from typing import Union

from e2ee.protocol import envelope as device
from e2ee.protocol.envelope import (
    MAX_CIPHERTEXT,
    MAX_CONTROL_PAYLOAD,
    MAX_ENVELOPE,
    MAX_SENDER_CERTIFICATE,
    VERSION,
    BadField,
    DecodeError,
    EncodeError,
    EnvelopeError,
    Oversize,
    Truncated,
    UnknownType,
    UnknownVersion,
    VarintOverflow,
    WrongType,
)
from e2ee_host.proto.e2ee.v1 import envelope_pb2 as pb

__all__ = [
    "MAX_CIPHERTEXT", "MAX_CONTROL_PAYLOAD", "MAX_ENVELOPE", "MAX_SENDER_CERTIFICATE", "VERSION", "BadField",
    "DecodeError", "EncodeError", "EnvelopeError", "Message", "Oversize", "Truncated", "UnknownType",
    "UnknownVersion", "VarintOverflow", "WrongType", "decode", "decode_as", "encode", "pb",
]

Message = Union[pb.PreKeyMessage, pb.RatchetMessage, pb.Control]

_TYPES: dict[type, int] = {pb.PreKeyMessage: pb.PREKEY, pb.RatchetMessage: pb.RATCHET, pb.Control: pb.CONTROL}
_CLASSES: dict[int, type[Message]] = {t: cls for cls, t in _TYPES.items()}


def encode(message: Message) -> bytes:
    """Serializes a PreKeyMessage, RatchetMessage or Control inside a version 1 Envelope.

    Raises:
        EncodeError: a field breaks the §4 limits (key sizes, ciphertext size, sender certificate
            size, unknown control kind, oversize payload), exactly as the device codec's ``check()``.
    """
    msg_type = _TYPES.get(type(message))
    if msg_type is None:
        raise EncodeError("cannot encode %s" % type(message).__name__)
    _as_device_record(message).check()
    body = message.SerializeToString(deterministic=True)
    wire = pb.Envelope(version=VERSION, type=msg_type, body=body).SerializeToString(deterministic=True)
    if len(wire) > MAX_ENVELOPE:
        raise EncodeError("envelope of %d bytes exceeds %d" % (len(wire), MAX_ENVELOPE))
    return wire


def decode(data: bytes) -> Message:
    """Parses an envelope into the generated message its type names.

    Raises:
        DecodeError: a subclass saying why (Truncated, Oversize, UnknownVersion, UnknownType,
            BadField, VarintOverflow), decided by the device codec's rules.
    """
    data = bytes(data)
    device.decode(data)
    envelope = pb.Envelope.FromString(data)
    return _CLASSES[envelope.type].FromString(envelope.body)


def decode_as(data: bytes, cls: type[Message]) -> Message:
    """Like decode, but the envelope must hold a ``cls`` message (else WrongType)."""
    message = decode(data)
    if not isinstance(message, cls):
        raise WrongType("envelope type %d, expected %d (%s)" % (
            _TYPES[type(message)], _TYPES[cls], cls.__name__))
    return message


def _as_device_record(message: Message) -> device.RatchetMessage | device.PreKeyMessage | device.Control:
    if isinstance(message, pb.RatchetMessage):
        return device.RatchetMessage(message.dh, message.pn, message.n, message.ciphertext)
    if isinstance(message, pb.PreKeyMessage):
        return device.PreKeyMessage(message.identity_dh, message.identity_sign, message.base_key,
                                    message.signed_prekey_id, message.one_time_prekey_id,
                                    _as_device_record(message.message), message.sender_certificate)
    return device.Control(message.kind, message.payload)
