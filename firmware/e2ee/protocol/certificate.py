# Device certificates and revocation lists signed by the Fleet CA: the device's hand-written
# reader of proto/e2ee/v1/certificate.proto and the verification rules (docs/provisioning.md,
# "Certificates and revocation lists"). The host writes these messages with the protobuf runtime
# (e2ee_host.fleet_ca) and checks what it writes with this reader, so one set of limits holds.
#
# A certificate is accepted only when it parses within the limits, names a trusted CA key by its
# key id, carries a valid Ed25519 signature by that key over "e2ee-iot cert v1" || the exact
# certificate bytes, is not on a verified revocation list and, when the caller knows the time, is
# inside its validity window. A revocation list is accepted only when it is signed the same way
# (label "e2ee-iot crl v1") and its version is above the one the device holds (no rollback).
# Several CA keys may be trusted at once (rotation with overlap). Errors are CertificateError
# subclasses whose messages carry field numbers, sizes, versions and key ids, never key bytes.
from e2ee import crypto
from e2ee.crypto import errors as crypto_errors

# The wire-format readers of the envelope codec (docs/protocol.md §4): private there, imported on
# purpose so the device SDK keeps one protobuf reader. They raise envelope.DecodeError subclasses,
# which the functions here turn into Malformed.
from e2ee.protocol.envelope import DecodeError, _skip, _take, _varint
from e2ee.protocol.public_key import canonical_ed25519, canonical_x25519

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

VERSION = const(1)  # DeviceCertificate.version this reader accepts
KEY_SIZE = const(32)  # X25519 / Ed25519 public keys (docs/protocol.md §1)
SIGNATURE_SIZE = const(64)  # Ed25519 signature (RFC 8032 §5.1.6)
# Random 128-bit serials: unique across a fleet's lifetime without coordination (X.509 asks for
# at least 64 random bits), and fixed-size so a revocation list is a sorted array.
SERIAL_SIZE = const(16)
# First 8 bytes of SHA-512(CA public key): names which trusted key to try, nothing more (the
# signature decides), and 64 bits keep accidental collisions between a fleet's keys negligible.
KEY_ID_SIZE = const(8)
# device_id and fleet: enough for a UUID or a serial-number scheme with a prefix, small enough to
# sit in every MQTT topic and ACL entry.
MAX_NAME = const(64)
MAX_ROLE = const(32)  # one role or group name
MAX_ROLES = const(8)  # roles per certificate: ACL groups, not a policy language
# Largest signed certificate: the fields above at their limits come to 593 bytes with the wrapper;
# the rest is room for fields a later minor revision adds. Refused before parsing.
MAX_SIGNED_CERTIFICATE = const(768)
# Revoked serials per list: 512 x 16 bytes is one 8 KB array in a 120 KB heap. Lists hold only
# revoked certificates that have not expired, so this bounds revocations per certificate lifetime.
MAX_REVOKED = const(512)
# Largest signed revocation list: 512 serials at 18 wire bytes each plus the other fields
# (9317 bytes) with some room. Refused before parsing.
MAX_SIGNED_REVOCATION_LIST = const(9400)
CERT_LABEL = b"e2ee-iot cert v1"  # signature domain separation of certificates
CRL_LABEL = b"e2ee-iot crl v1"  # signature domain separation of revocation lists

# Field kinds of the reader below, one byte per field number starting at 1 (not wire types).
_U32 = const(0)  # varint, at most 32 bits
_U64 = const(1)  # varint, at most 64 bits
_BYTES = const(2)  # length-delimited, at most once
_REPEATED = const(3)  # length-delimited, any number of times (the caller's sink gets each)
_CERT_FIELDS = b"\x00\x02\x02\x02\x02\x02\x03\x01\x01\x02"
_SIGNED_FIELDS = b"\x02\x02"  # SignedCertificate and SignedRevocationList
_CRL_FIELDS = b"\x01\x01\x03\x02"


# Base of every error here: the bytes are not a certificate or revocation list this device trusts.
class CertificateError(ValueError):
    pass


# Not a well-formed version 1 message: truncated, oversize, a field of the wrong size, kind or
# characters, a required field missing, serials out of order.
class Malformed(CertificateError):
    pass


# issuer_key_id names no key in the trusted set (an unknown, retired or foreign CA).
class UnknownIssuer(CertificateError):
    pass


# The Ed25519 signature does not verify with the CA key the issuer_key_id names.
class BadSignature(CertificateError):
    pass


# now >= not_after.
class Expired(CertificateError):
    pass


# now < not_before.
class NotYetValid(CertificateError):
    pass


# The certificate's serial is on the revocation list it was checked against.
class Revoked(CertificateError):
    pass


# A revocation list whose version is not above the one the device already holds.
class RolledBack(CertificateError):
    pass


# The key id of a CA public key: first 8 bytes of SHA-512(public key).
def key_id(public):
    if len(public) != KEY_SIZE:
        raise Malformed("CA public key is %d bytes, expected %d" % (len(public), KEY_SIZE))
    return crypto.sha512(public)[:KEY_ID_SIZE]


# A verified device certificate. time_checked is False when it was verified without a clock
# (now=None): the validity window was then not checked and the caller must say so.
class Certificate:
    def __init__(self, serial, device_id, fleet, identity_dh, identity_sign, roles, not_before,
                 not_after, issuer_key_id):
        self.serial = serial
        self.device_id = device_id
        self.fleet = fleet
        self.identity_dh = identity_dh
        self.identity_sign = identity_sign
        self.roles = roles
        self.not_before = not_before
        self.not_after = not_after
        self.issuer_key_id = issuer_key_id
        self.time_checked = False

    # Raises NotYetValid or Expired unless not_before <= now < not_after (Unix seconds).
    def check_time(self, now):
        if now < self.not_before:
            raise NotYetValid("certificate of %s valid from %d, now %d" % (self.device_id, self.not_before, now))
        if now >= self.not_after:
            raise Expired("certificate of %s expired at %d, now %d" % (self.device_id, self.not_after, now))

    def __repr__(self):
        return "Certificate(device_id=%s, fleet=%s, serial=%s, roles=%s, valid=%d..%d, issuer=%s)" % (
            self.device_id, self.fleet, _hex(self.serial), ",".join(self.roles), self.not_before,
            self.not_after, _hex(self.issuer_key_id))


# A verified revocation list: its version, signing time, issuer and revoked serials (kept as one
# sorted array of count x 16 bytes, searched in place).
class RevocationList:
    def __init__(self, version, issued_at, issuer_key_id, serials, count):
        self.version = version
        self.issued_at = issued_at
        self.issuer_key_id = issuer_key_id
        self.count = count
        self._serials = serials

    # The revoked serials in ascending order, as bytes (for tools that list them).
    def serials(self):
        return [bytes(self._serials[i * SERIAL_SIZE:(i + 1) * SERIAL_SIZE]) for i in range(self.count)]

    # True when `serial` (16 bytes) is on the list. Binary search: the list is sorted.
    def is_revoked(self, serial):
        if len(serial) != SERIAL_SIZE:
            raise Malformed("serial is %d bytes, expected %d" % (len(serial), SERIAL_SIZE))
        lo = 0
        hi = self.count
        while lo < hi:
            mid = (lo + hi) >> 1
            c = _compare(self._serials, mid * SERIAL_SIZE, serial)
            if c == 0:
                return True
            if c < 0:
                lo = mid + 1
            else:
                hi = mid
        return False

    # Raises Revoked when the certificate's serial is on the list.
    def check(self, cert):
        if self.is_revoked(cert.serial):
            raise Revoked("certificate %s of %s is revoked (list version %d)" % (
                _hex(cert.serial), cert.device_id, self.version))

    def __len__(self):
        return self.count

    def __repr__(self):
        return "RevocationList(version=%d, issued_at=%d, revoked=%d, issuer=%s)" % (
            self.version, self.issued_at, self.count, _hex(self.issuer_key_id))


# ---- verification --------------------------------------------------------------------------

# Verifies a serialized SignedCertificate against the trusted CA public keys (an iterable of
# 32-byte keys; several during a rotation). now: Unix seconds, or None on a device without a set
# clock, which skips the validity window and leaves time_checked False. crl: a verified
# RevocationList to check the serial against, or None. Returns the Certificate.
# Checks, in order: size and fields (Malformed), issuer (UnknownIssuer), signature (BadSignature),
# revocation (Revoked), then not_before (NotYetValid) and not_after (Expired).
def verify_certificate(data, trusted_keys, now, crl=None):
    cert, body, signature = _decode_certificate(data)
    _verify_signature(CERT_LABEL, body, signature, cert.issuer_key_id, trusted_keys, "certificate")
    if crl is not None:
        crl.check(cert)
    if now is not None:
        cert.check_time(now)
        cert.time_checked = True
    return cert


# Verifies a serialized SignedRevocationList like a certificate (label "e2ee-iot crl v1") and
# refuses, with RolledBack, a version not above last_version (0 before the first list).
# Returns the RevocationList; the caller stores it and its version for the next call.
def verify_revocation_list(data, trusted_keys, last_version):
    crl, body, signature = _decode_revocation_list(data)
    _verify_signature(CRL_LABEL, body, signature, crl.issuer_key_id, trusted_keys, "revocation list")
    if crl.version <= last_version:
        raise RolledBack("revocation list version %d is not above %d" % (crl.version, last_version))
    return crl


# Parses a SignedCertificate within every limit WITHOUT verifying it: for tools that show what a
# certificate says and for the issuer checking its own output. Trust nothing it returns.
def decode_certificate_unverified(data):
    return _decode_certificate(data)[0]


# Parses a SignedRevocationList within every limit WITHOUT verifying it (see above).
def decode_revocation_list_unverified(data):
    return _decode_revocation_list(data)[0]


# Tries each trusted key whose id is `issuer` (normally exactly one). The signed message is
# label || body, handed to the verifier as two parts: SHA-512 takes them one after the other, so
# a 9 KB list is never copied (a 120 KB heap may not have a second block of that size).
def _verify_signature(label, body, signature, issuer, trusted_keys, what):
    tried = False
    for public in trusted_keys:
        if key_id(public) != issuer:
            continue
        tried = True
        try:
            crypto.ed25519_verify(public, (label, body), signature)
            return
        except crypto_errors.InvalidSignature:
            pass
    if not tried:
        raise UnknownIssuer("%s issuer %s is not a trusted CA key" % (what, _hex(issuer)))
    raise BadSignature("%s signature does not verify with CA key %s" % (what, _hex(issuer)))


# ---- decoding ------------------------------------------------------------------------------

# Returns (Certificate, the signed certificate bytes, signature).
def _decode_certificate(data):
    if len(data) > MAX_SIGNED_CERTIFICATE:
        raise Malformed("signed certificate of %d bytes exceeds %d" % (len(data), MAX_SIGNED_CERTIFICATE))
    body, signature = _decode_signed(data, "SignedCertificate")
    roles = []
    v = _read(body, "DeviceCertificate", _CERT_FIELDS, roles.append)
    if (v[1] or 0) != VERSION:
        raise Malformed("certificate version %d, this reader accepts %d" % (v[1] or 0, VERSION))
    if len(roles) > MAX_ROLES:
        raise Malformed("DeviceCertificate field 7 (roles): %d roles exceed %d" % (len(roles), MAX_ROLES))
    for i in range(len(roles)):
        roles[i] = _name(roles[i], 7, "roles", MAX_ROLE)
        if roles[i] in roles[:i]:
            raise Malformed("DeviceCertificate field 7 (roles): %s appears twice" % roles[i])
    not_before = v[8] or 0
    not_after = v[9] or 0
    if not_after <= not_before:
        raise Malformed("DeviceCertificate: not_after %d is not after not_before %d" % (not_after, not_before))
    cert = Certificate(_fixed(v, 2, "DeviceCertificate", "serial", SERIAL_SIZE),
                       _name(v[3], 3, "device_id", MAX_NAME), _name(v[4], 4, "fleet", MAX_NAME),
                       _public(v, 5, "identity_dh", canonical_x25519),
                       _public(v, 6, "identity_sign", canonical_ed25519),
                       tuple(roles), not_before, not_after,
                       _fixed(v, 10, "DeviceCertificate", "issuer_key_id", KEY_ID_SIZE))
    return cert, body, signature


# Returns (RevocationList, the signed list bytes, signature).
def _decode_revocation_list(data):
    if len(data) > MAX_SIGNED_REVOCATION_LIST:
        raise Malformed("signed revocation list of %d bytes exceeds %d" % (
            len(data), MAX_SIGNED_REVOCATION_LIST))
    body, signature = _decode_signed(data, "SignedRevocationList")
    # Every valid entry takes at least 18 wire bytes (tag, length, 16 bytes): an upper bound for
    # one array, filled in place instead of a list of 512 small objects.
    serials = bytearray(min(len(body) // (SERIAL_SIZE + 2), MAX_REVOKED) * SERIAL_SIZE)
    sink = _SerialSink(serials)
    v = _read(body, "RevocationList", _CRL_FIELDS, sink.add)
    version = v[1] or 0
    if version < 1:
        raise Malformed("RevocationList field 1 (version) must be at least 1")
    crl = RevocationList(version, v[2] or 0, _fixed(v, 4, "RevocationList", "issuer_key_id", KEY_ID_SIZE),
                         serials, sink.count)
    return crl, body, signature


# Collects RevocationList.revoked_serials into one array, refusing a wrong size, a serial not
# strictly above the one before it (unsorted or repeated) and more than MAX_REVOKED.
class _SerialSink:
    def __init__(self, serials):
        self.serials = serials
        self.count = 0

    def add(self, value):
        if len(value) != SERIAL_SIZE:
            raise Malformed("RevocationList field 3 (revoked_serials) entry %d: %d bytes, expected %d" % (
                self.count, len(value), SERIAL_SIZE))
        if self.count >= MAX_REVOKED:
            raise Malformed("RevocationList field 3 (revoked_serials): more than %d" % MAX_REVOKED)
        at = self.count * SERIAL_SIZE
        if self.count and _compare(self.serials, at - SERIAL_SIZE, value) >= 0:
            raise Malformed("RevocationList field 3 (revoked_serials) entry %d: not above the one before" % (
                self.count))
        self.serials[at:at + SERIAL_SIZE] = value
        self.count += 1


# The outer Signed* message: (inner bytes as a memoryview, signature bytes).
def _decode_signed(data, name):
    v = _read(data, name, _SIGNED_FIELDS, None)
    if v[1] is None or not len(v[1]):
        raise Malformed("%s field 1 is missing" % name)
    return v[1], _fixed(v, 2, name, "signature", SIGNATURE_SIZE)


# Reads every field of one message. `kinds` holds the kind (_U32, _U64, _BYTES, _REPEATED) of
# fields 1..k; returns a list indexed by field number: an int, a memoryview or None when absent.
# Each value of a _REPEATED field goes to sink(value) instead. Unknown field numbers are skipped
# by wire type, as protobuf does; a known field twice or with another wire type is Malformed.
def _read(buf, name, kinds, sink):
    mv = memoryview(buf)
    end = len(mv)
    values = [None] * (len(kinds) + 1)
    pos = 0
    try:
        while pos < end:
            at = pos
            key, pos = _varint(mv, pos, end, name, "tag")
            field = key >> 3
            wt = key & 7
            if field == 0:
                raise Malformed("%s: field number 0 at offset %d" % (name, at))
            if field > len(kinds):
                pos = _skip(mv, pos, end, name, field, wt)
                continue
            kind = kinds[field - 1]
            if wt != (2 if kind >= _BYTES else 0):
                raise Malformed("%s field %d: wire type %d not allowed" % (name, field, wt))
            if kind == _REPEATED:
                value, pos = _take(mv, pos, end, name, field)
                sink(value)
                continue
            if values[field] is not None:
                raise Malformed("%s field %d: repeated at offset %d" % (name, field, at))
            if kind == _U32:
                values[field], pos = _varint(mv, pos, end, name, field)
            elif kind == _U64:
                values[field], pos = _varint(mv, pos, end, name, field, 64)
            else:
                values[field], pos = _take(mv, pos, end, name, field)
    except DecodeError as e:
        raise Malformed(str(e))
    return values


# A length-delimited field of exactly `size` bytes, copied to bytes.
def _fixed(values, field, name, what, size):
    value = values[field]
    got = 0 if value is None else len(value)
    if got != size:
        raise Malformed("%s field %d (%s): %d bytes, expected %d" % (name, field, what, got, size))
    return bytes(value)


# An identity key of a DeviceCertificate: 32 bytes, canonical(key) (finding 7: a second encoding
# of a device's keys would certify "other" keys that are the same).
def _public(values, field, what, canonical):
    key = _fixed(values, field, "DeviceCertificate", what, KEY_SIZE)
    if not canonical(key):
        raise Malformed("DeviceCertificate field %d (%s): not a canonical public key encoding" % (
            field, what))
    return key


# A device_id, fleet or role: 1..limit bytes of A-Z a-z 0-9 . _ - (nothing MQTT treats specially:
# no '/', '+', '#', no spaces or control bytes), returned as str.
def _name(value, field, what, limit):
    got = 0 if value is None else len(value)
    if got < 1 or got > limit:
        raise Malformed("DeviceCertificate field %d (%s): %d bytes, expected 1..%d" % (field, what, got, limit))
    for i in range(got):
        b = value[i]
        if not (0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A or b == 0x2D or b == 0x2E
                or b == 0x5F):
            raise Malformed("DeviceCertificate field %d (%s): byte 0x%02x at %d not allowed" % (
                field, what, b, i))
    return bytes(value).decode()


# Compares the 16 bytes at serials[at:] with serial: -1, 0 or 1. No slices, no allocation.
def _compare(serials, at, serial):
    for i in range(SERIAL_SIZE):
        a = serials[at + i]
        b = serial[i]
        if a != b:
            return -1 if a < b else 1
    return 0


def _hex(data):
    return "".join(["%02x" % b for b in data])
