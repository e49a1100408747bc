# The envelope: the device's hand-written codec of the protobuf wire format in
# proto/e2ee/v1/envelope.proto (docs/protocol.md §4). The host reads and writes the same bytes with
# the protobuf runtime (e2ee_host.envelope); docs/vectors/envelope.txt pins both.
#
# Writing: fields in field-number order, proto3 defaults (0) left out, so the bytes equal
# protobuf's serialization. Reading follows protobuf's rules for what the schema allows (fields in
# any order, unknown field numbers skipped, non-minimal varints) and rejects, with a DecodeError
# subclass, what version 1 does not allow: another version, an unknown or reserved type, a key of
# the wrong size, an oversize field or envelope, truncation, a varint longer than its type, a
# known field twice or with the wrong wire type, field number 0, groups (proto3 has none).
# Error messages carry field numbers, sizes and offsets, never payload bytes.
import struct

# Canonical public keys (finding 7): the codec refuses other encodings of peer keys.
from e2ee.protocol.public_key import canonical_ed25519, canonical_x25519  # noqa: F401

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

VERSION = const(1)  # §4: Envelope.version; anything else is UnknownVersion

# §4 Envelope.type values (enum Type)
PREKEY = const(1)
RATCHET = const(2)
SENDER_KEY = const(3)  # reserved for groups: version 1 rejects it as UnknownType
CONTROL = const(4)

SESSION_RESET = const(1)  # Control.Kind: the receiver has no usable session, start a new one

KEY_SIZE = const(32)  # §1: X25519 and Ed25519 public keys
TAG_SIZE = const(16)  # §3: Poly1305 tag, the smallest possible ciphertext (empty plaintext)
HEADER_SIZE = const(40)  # §3: H = dh || be32(pn) || be32(n)
# §4: largest ciphertext a device accepts: a 4096-byte plaintext (one MQTT payload buffer on
# the smallest boards) plus its tag. Bounds the one buffer decryption needs.
MAX_CIPHERTEXT = const(4112)
# §4: largest envelope; a PreKeyMessage around a full ciphertext with the largest sender
# certificate is 5056 bytes (4285 without one), so any valid message fits and a receiver can
# refuse anything longer before parsing it.
MAX_ENVELOPE = const(5120)
# §4: Control payloads are small (reasons, ids); nothing else needs more than this.
MAX_CONTROL_PAYLOAD = const(256)
# §4: PreKeyMessage.sender_certificate, a SignedCertificate (docs/provisioning.md): the same limit
# as certificate.MAX_SIGNED_CERTIFICATE (a test pins both; certificate.py imports this module).
MAX_SENDER_CERTIFICATE = const(768)

_UINT32_MAX = const(0xFFFFFFFF)
_VARINT64_BYTES = const(10)  # an unknown varint field may hold 64 bits (protobuf's limit)

# Wire types (protobuf encoding spec)
_VARINT = const(0)
_I64 = const(1)
_LEN = const(2)
_SGROUP = const(3)
_EGROUP = const(4)
_I32 = const(5)

# Wire type of each known field, field number 1 first.
_ENVELOPE_FIELDS = b"\x00\x00\x02"  # version, type, body
_RATCHET_FIELDS = b"\x02\x00\x00\x02"  # dh, pn, n, ciphertext
# identity_dh, identity_sign, base_key, spk, opk, message, sender_certificate
_PREKEY_FIELDS = b"\x02\x02\x02\x00\x00\x02\x02"
_CONTROL_FIELDS = b"\x00\x02"  # kind, payload


# Base of every envelope error (decoding and encoding).
class EnvelopeError(ValueError):
    pass


# Bytes that are not a valid version 1 envelope. Catch this one; subclasses say why.
class DecodeError(EnvelopeError):
    pass


# The input ends inside a field, a varint or a length-delimited value.
class Truncated(DecodeError):
    pass


# The envelope, a ciphertext or a control payload is longer than its limit.
class Oversize(DecodeError):
    pass


# Envelope.version is missing or not 1.
class UnknownVersion(DecodeError):
    pass


# Envelope.type is missing, reserved (SENDER_KEY) or not in the Type enum.
class UnknownType(DecodeError):
    pass


# A field breaks the schema: wrong size, wrong wire type, repeated, missing, out of range.
class BadField(DecodeError):
    pass


# A varint longer than its type allows (over 5 bytes or over 32 bits for uint32, tags and lengths).
class VarintOverflow(BadField):
    pass


# A valid envelope of another type than the one asked for (RatchetMessage.decode of a PREKEY).
class WrongType(DecodeError):
    pass


# A record field that cannot be encoded (wrong key size, counter out of range, oversize).
class EncodeError(EnvelopeError):
    pass


# Writes the §3 header H = dh || be32(pn) || be32(n) into out at pos; returns the end offset.
def header_into(out, pos, dh, pn, n):
    _check_key("dh", dh)
    _check_uint32("pn", pn)
    _check_uint32("n", n)
    out[pos:pos + KEY_SIZE] = dh
    struct.pack_into(">II", out, pos + KEY_SIZE, pn, n)
    return pos + HEADER_SIZE


# The 40-byte §3 header H = dh || be32(pn) || be32(n), the bytes the AEAD authenticates after AD.
def header_bytes(dh, pn, n):
    out = bytearray(HEADER_SIZE)
    header_into(out, 0, dh, pn, n)
    return out


# Decodes one envelope of any supported type: a PreKeyMessage, RatchetMessage or Control.
def decode(buf):
    msg_type, body = _open(buf)
    if msg_type == RATCHET:
        return RatchetMessage.decode_body(body)
    if msg_type == PREKEY:
        return PreKeyMessage.decode_body(body)
    return Control.decode_body(body)


# Encodes a record (PreKeyMessage, RatchetMessage or Control) as an envelope.
def encode(record):
    return record.encode()


# ---- records -------------------------------------------------------------------------------


# Shared envelope framing of the three record kinds. A subclass sets TYPE and NAME and provides
# check(), _body_size(), _put_body() and decode_body(). Records hold bytes and ints and have no
# mutating methods; encode() checks every field first. Decoding copies the 32-byte keys but not
# the ciphertext or control payload: those are memoryviews into the input buffer (no second 4 KB
# block on a fragmented heap), valid while the caller leaves that buffer unchanged.
class _Record:
    # Encodes this record as an envelope into a new bytearray of the exact size.
    def encode(self):
        body = self._checked_body_size()
        out = bytearray(_envelope_size(body))
        self._put_envelope(out, 0, body)
        return out

    # Encodes the envelope into out (a preallocated bytearray) at pos; returns the end offset.
    def encode_into(self, out, pos=0):
        body = self._checked_body_size()
        size = _envelope_size(body)
        if len(out) - pos < size:
            raise EncodeError("buffer has %d bytes from %d, envelope needs %d" % (len(out) - pos, pos, size))
        return self._put_envelope(out, pos, body)

    # Size in bytes of the encoded envelope; EncodeError if a field is invalid.
    def size(self):
        return _envelope_size(self._checked_body_size())

    def _checked_body_size(self):
        self.check()
        body = self._body_size()
        if _envelope_size(body) > MAX_ENVELOPE:  # cannot happen within the field limits
            raise EncodeError("envelope of %d bytes exceeds %d" % (_envelope_size(body), MAX_ENVELOPE))
        return body

    def _put_envelope(self, out, pos, body):
        pos = _put_uint(out, pos, 1, VERSION)
        pos = _put_uint(out, pos, 2, self.TYPE)
        pos = _put_head(out, pos, 3, body)
        return self._put_body(out, pos)

    # The body alone: the serialized protobuf message, without the Envelope around it.
    def encode_body(self):
        self.check()
        out = bytearray(self._body_size())
        self._put_body(out, 0)
        return out

    # Decodes an envelope that must hold this record type (WrongType if it holds another).
    @classmethod
    def decode(cls, buf):
        msg_type, body = _open(buf)
        if msg_type != cls.TYPE:
            raise WrongType("envelope type %d, expected %d (%s)" % (msg_type, cls.TYPE, cls.NAME))
        return cls.decode_body(body)

    def __eq__(self, other):
        return type(self) is type(other) and self._fields() == other._fields()

    def __ne__(self, other):
        return not self.__eq__(other)


# RatchetMessage (§3, §4): the header fields and the AEAD ciphertext of one message.
class RatchetMessage(_Record):
    TYPE = RATCHET
    NAME = "RatchetMessage"

    def __init__(self, dh, pn, n, ciphertext):
        self.dh = dh
        self.pn = pn
        self.n = n
        self.ciphertext = ciphertext

    # The §3 header H of this message (40 bytes).
    def header(self):
        return header_bytes(self.dh, self.pn, self.n)

    # Raises EncodeError unless every field can be encoded.
    def check(self):
        _check_key("dh", self.dh)
        _check_canonical("dh", self.dh, canonical_x25519)
        _check_uint32("pn", self.pn)
        _check_uint32("n", self.n)
        size = len(self.ciphertext)
        if size < TAG_SIZE or size > MAX_CIPHERTEXT:
            raise EncodeError("ciphertext is %d bytes, expected %d..%d" % (size, TAG_SIZE, MAX_CIPHERTEXT))

    def _body_size(self):
        return (_len_size(KEY_SIZE) + _uint_size(self.pn) + _uint_size(self.n)
                + _len_size(len(self.ciphertext)))

    def _put_body(self, out, pos):
        pos = _put_bytes(out, pos, 1, self.dh)
        pos = _put_uint(out, pos, 2, self.pn)
        pos = _put_uint(out, pos, 3, self.n)
        return _put_bytes(out, pos, 4, self.ciphertext)

    # Decodes a serialized RatchetMessage (no Envelope around it).
    @classmethod
    def decode_body(cls, buf):
        v = _read_fields(buf, cls.NAME, _RATCHET_FIELDS)
        ciphertext = v[4]
        size = 0 if ciphertext is None else len(ciphertext)
        if size > MAX_CIPHERTEXT:
            raise Oversize("RatchetMessage field 4 (ciphertext): %d bytes exceeds %d" % (
                size, MAX_CIPHERTEXT))
        if size < TAG_SIZE:
            raise BadField("RatchetMessage field 4 (ciphertext): %d bytes, less than the %d-byte tag" % (
                size, TAG_SIZE))
        return cls(_key(v, 1, cls.NAME, "dh", canonical_x25519), v[2] or 0, v[3] or 0, ciphertext)

    def _fields(self):
        return (self.dh, self.pn, self.n, self.ciphertext)

    def __repr__(self):
        return "RatchetMessage(pn=%d, n=%d, ciphertext=%d bytes)" % (self.pn, self.n, len(self.ciphertext))


# PreKeyMessage (§2, §4, §6): the X3DH initiator's public keys, the responder prekey ids it used,
# the first RatchetMessage of the session and, from a device with a TrustStore, the initiator's
# SignedCertificate (b"" = none; a memoryview into the input after decoding, like ciphertext).
class PreKeyMessage(_Record):
    TYPE = PREKEY
    NAME = "PreKeyMessage"

    def __init__(self, identity_dh, identity_sign, base_key, signed_prekey_id, one_time_prekey_id, message,
                 sender_certificate=b""):
        self.identity_dh = identity_dh
        self.identity_sign = identity_sign
        self.base_key = base_key
        self.signed_prekey_id = signed_prekey_id
        self.one_time_prekey_id = one_time_prekey_id  # 0 = no one-time prekey
        self.message = message
        self.sender_certificate = sender_certificate

    # Raises EncodeError unless every field, the inner message included, can be encoded.
    def check(self):
        _check_key("identity_dh", self.identity_dh)
        _check_key("identity_sign", self.identity_sign)
        _check_key("base_key", self.base_key)
        _check_canonical("identity_dh", self.identity_dh, canonical_x25519)
        _check_canonical("identity_sign", self.identity_sign, canonical_ed25519)
        _check_canonical("base_key", self.base_key, canonical_x25519)
        _check_uint32("signed_prekey_id", self.signed_prekey_id)
        _check_uint32("one_time_prekey_id", self.one_time_prekey_id)
        if not isinstance(self.message, RatchetMessage):
            raise EncodeError("message must be a RatchetMessage")
        self.message.check()
        if len(self.sender_certificate) > MAX_SENDER_CERTIFICATE:
            raise EncodeError("sender_certificate is %d bytes, limit %d" % (
                len(self.sender_certificate), MAX_SENDER_CERTIFICATE))

    def _body_size(self):
        cert = len(self.sender_certificate)
        return (3 * _len_size(KEY_SIZE) + _uint_size(self.signed_prekey_id)
                + _uint_size(self.one_time_prekey_id) + _len_size(self.message._body_size())
                + (_len_size(cert) if cert else 0))

    def _put_body(self, out, pos):
        pos = _put_bytes(out, pos, 1, self.identity_dh)
        pos = _put_bytes(out, pos, 2, self.identity_sign)
        pos = _put_bytes(out, pos, 3, self.base_key)
        pos = _put_uint(out, pos, 4, self.signed_prekey_id)
        pos = _put_uint(out, pos, 5, self.one_time_prekey_id)
        pos = _put_head(out, pos, 6, self.message._body_size())
        pos = self.message._put_body(out, pos)
        if len(self.sender_certificate):
            pos = _put_bytes(out, pos, 7, self.sender_certificate)
        return pos

    # Decodes a serialized PreKeyMessage (no Envelope around it).
    @classmethod
    def decode_body(cls, buf):
        v = _read_fields(buf, cls.NAME, _PREKEY_FIELDS)
        if v[6] is None:
            raise BadField("PreKeyMessage field 6 (message) is missing")
        cert = b"" if v[7] is None else v[7]
        if len(cert) > MAX_SENDER_CERTIFICATE:
            raise Oversize("PreKeyMessage field 7 (sender_certificate): %d bytes exceeds %d" % (
                len(cert), MAX_SENDER_CERTIFICATE))
        return cls(_key(v, 1, cls.NAME, "identity_dh", canonical_x25519),
                   _key(v, 2, cls.NAME, "identity_sign", canonical_ed25519),
                   _key(v, 3, cls.NAME, "base_key", canonical_x25519), v[4] or 0, v[5] or 0,
                   RatchetMessage.decode_body(v[6]), cert)

    def _fields(self):
        return (self.identity_dh, self.identity_sign, self.base_key, self.signed_prekey_id,
                self.one_time_prekey_id, self.message, bytes(self.sender_certificate))

    def __repr__(self):
        return ("PreKeyMessage(signed_prekey_id=%d, one_time_prekey_id=%d, sender_certificate=%d bytes, "
                "message=%r)" % (self.signed_prekey_id, self.one_time_prekey_id, len(self.sender_certificate),
                                 self.message))


# Control (§4): session management; kind is one of the Control.Kind values above.
class Control(_Record):
    TYPE = CONTROL
    NAME = "Control"
    KINDS = (SESSION_RESET,)

    def __init__(self, kind, payload=b""):
        self.kind = kind
        self.payload = payload

    # Raises EncodeError unless kind is known and the payload fits.
    def check(self):
        if self.kind not in self.KINDS:
            raise EncodeError("unknown control kind %r" % (self.kind,))
        if len(self.payload) > MAX_CONTROL_PAYLOAD:
            raise EncodeError("control payload is %d bytes, limit %d" % (
                len(self.payload), MAX_CONTROL_PAYLOAD))

    def _body_size(self):
        size = len(self.payload)
        return _uint_size(self.kind) + (_len_size(size) if size else 0)

    def _put_body(self, out, pos):
        pos = _put_uint(out, pos, 1, self.kind)
        if len(self.payload):
            pos = _put_bytes(out, pos, 2, self.payload)
        return pos

    # Decodes a serialized Control (no Envelope around it).
    @classmethod
    def decode_body(cls, buf):
        v = _read_fields(buf, cls.NAME, _CONTROL_FIELDS)
        kind = v[1] or 0
        if kind not in cls.KINDS:
            raise BadField("Control field 1 (kind): unknown kind %d" % kind)
        payload = b"" if v[2] is None else v[2]
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise Oversize("Control field 2 (payload): %d bytes exceeds %d" % (
                len(payload), MAX_CONTROL_PAYLOAD))
        return cls(kind, payload)

    def _fields(self):
        return (self.kind, self.payload)

    def __repr__(self):
        return "Control(kind=%d, payload=%d bytes)" % (self.kind, len(self.payload))


# ---- reading -------------------------------------------------------------------------------


# Checks the Envelope frame: size, version and type. Returns (type, body as a memoryview).
def _open(buf):
    if len(buf) > MAX_ENVELOPE:
        raise Oversize("envelope of %d bytes exceeds %d" % (len(buf), MAX_ENVELOPE))
    v = _read_fields(buf, "Envelope", _ENVELOPE_FIELDS)
    version = v[1] or 0
    if version != VERSION:
        raise UnknownVersion("envelope version %d, this codec reads %d" % (version, VERSION))
    msg_type = v[2] or 0
    if msg_type != PREKEY and msg_type != RATCHET and msg_type != CONTROL:
        raise UnknownType("envelope type %d is unknown or reserved" % msg_type)
    return msg_type, memoryview(b"") if v[3] is None else v[3]


# Reads every field of one message. `wiretypes` holds the wire type of known fields 1..k; returns
# a list indexed by field number: an int (varint), a memoryview (length-delimited) or None when
# absent. Unknown field numbers are skipped by wire type.
def _read_fields(buf, name, wiretypes):
    mv = memoryview(buf)
    end = len(mv)
    values = [None] * (len(wiretypes) + 1)
    pos = 0
    while pos < end:
        at = pos
        key, pos = _varint(mv, pos, end, name, "tag")
        field = key >> 3
        wt = key & 7
        if field == 0:
            raise BadField("%s: field number 0 at offset %d" % (name, at))
        if field > len(wiretypes):
            pos = _skip(mv, pos, end, name, field, wt)
            continue
        if wt != wiretypes[field - 1]:
            raise BadField("%s field %d: wire type %d, expected %d" % (name, field, wt, wiretypes[field - 1]))
        if values[field] is not None:
            raise BadField("%s field %d: repeated at offset %d" % (name, field, at))
        if wt == _VARINT:
            values[field], pos = _varint(mv, pos, end, name, field)
        else:
            values[field], pos = _take(mv, pos, end, name, field)
    return values


# Reads a varint of at most `bits` bits at pos (32: 5 bytes, the last < 0x10; 64: 10 bytes, the
# last 0 or 1); returns (value, offset after it). certificate.py reads its uint64 fields with it.
def _varint(mv, pos, end, name, what, bits=32):
    last = (bits + 6) // 7 - 1
    top = (1 << (bits - 7 * last)) - 1
    value = 0
    for i in range(last + 1):
        if pos >= end:
            raise Truncated("%s field %s: varint runs past the end (%d bytes)" % (name, what, end))
        b = mv[pos]
        pos += 1
        if i == last and b > top:
            raise VarintOverflow("%s field %s: varint exceeds %d bits" % (name, what, bits))
        value |= (b & 0x7F) << (7 * i)
        if b < 0x80:
            return value, pos
    raise VarintOverflow("%s field %s: varint exceeds %d bits" % (name, what, bits))  # not reached


# Reads a length-delimited value at pos; returns (memoryview of it, offset after it).
def _take(mv, pos, end, name, field):
    size, pos = _varint(mv, pos, end, name, field)
    if size > end - pos:
        raise Truncated("%s field %s: length %d at offset %d, %d bytes left" % (
            name, field, size, pos, end - pos))
    return mv[pos:pos + size], pos + size


# Skips one unknown field's value as protobuf does; returns the offset after it. Groups (wire
# types 3, 4) cannot be declared in proto3 and are refused, as are wire types 6 and 7.
def _skip(mv, pos, end, name, field, wt):
    if wt == _VARINT:
        for _ in range(_VARINT64_BYTES):
            if pos >= end:
                raise Truncated("%s field %d: varint runs past the end (%d bytes)" % (name, field, end))
            pos += 1
            if mv[pos - 1] < 0x80:
                return pos
        raise VarintOverflow("%s field %d: varint longer than %d bytes" % (name, field, _VARINT64_BYTES))
    if wt == _LEN:
        return _take(mv, pos, end, name, field)[1]
    if wt == _I64 or wt == _I32:
        size = 8 if wt == _I64 else 4
        if size > end - pos:
            raise Truncated("%s field %d: fixed%d at offset %d, %d bytes left" % (
                name, field, size * 8, pos, end - pos))
        return pos + size
    raise BadField("%s field %d: wire type %d is not allowed" % (name, field, wt))


# A decoded key field as bytes; BadField unless it is exactly 32 bytes and canonical(key).
def _key(values, field, name, what, canonical):
    value = values[field]
    size = 0 if value is None else len(value)
    if size != KEY_SIZE:
        raise BadField("%s field %d (%s): %d bytes, expected %d" % (name, field, what, size, KEY_SIZE))
    if not canonical(value):
        raise BadField("%s field %d (%s): not a canonical public key encoding" % (name, field, what))
    return bytes(value)


# ---- writing -------------------------------------------------------------------------------


def _check_key(what, value):
    if len(value) != KEY_SIZE:
        raise EncodeError("%s is %d bytes, expected %d" % (what, len(value), KEY_SIZE))


def _check_canonical(what, value, canonical):
    if not canonical(value):
        raise EncodeError("%s is not a canonical public key encoding" % what)


def _check_uint32(what, value):
    if not isinstance(value, int) or value < 0 or value > _UINT32_MAX:
        raise EncodeError("%s must be an integer 0..0xFFFFFFFF" % what)


# Bytes a varint of this value takes.
def _varint_size(value):
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


# Bytes a uint32 field takes (0 is the proto3 default and is left out).
def _uint_size(value):
    return 1 + _varint_size(value) if value else 0


# Bytes a length-delimited field of `size` bytes takes (tag, length, value).
def _len_size(size):
    return 1 + _varint_size(size) + size


def _envelope_size(body):
    return 2 + 2 + _len_size(body)  # version (tag + 1), type (tag + 1), body


def _put_varint(out, pos, value):
    while value >= 0x80:
        out[pos] = (value & 0x7F) | 0x80
        value >>= 7
        pos += 1
    out[pos] = value
    return pos + 1


# A varint field (field numbers here are all < 16, so the tag is one byte); 0 is left out.
def _put_uint(out, pos, field, value):
    if not value:
        return pos
    out[pos] = (field << 3) | _VARINT
    return _put_varint(out, pos + 1, value)


# Tag and length of a length-delimited field whose value the caller writes next.
def _put_head(out, pos, field, size):
    out[pos] = (field << 3) | _LEN
    return _put_varint(out, pos + 1, size)


def _put_bytes(out, pos, field, value):
    pos = _put_head(out, pos, field, len(value))
    end = pos + len(value)
    out[pos:end] = value
    return end
