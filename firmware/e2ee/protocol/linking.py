# Linking a new device to its owner by QR code (docs/linking.md), after vodozemac's QR login: the
# new device shows a QR payload with its identity fingerprint, a one-time pairing secret and an
# ephemeral X25519 key; the owner's primary scans it, checks the fingerprint against the new
# device's certificate, and both derive a channel (X25519 + HKDF-SHA256 + ChaCha20-Poly1305) and a
# short check code that both screens show. The service relays the channel's two sealed messages
# and records the link only with the primary's signed approval.
#
# Payload (text in the QR, alphanumeric mode): "E2EE-LINK:" + base32(RFC 4648, no padding) of
#   version 1 | len || device_id | len || fleet | fingerprint (16) | secret (16) | ephemeral (32)
# Channel, with shared = X25519(e_primary, e_new), salt = secret:
#   okm = HKDF-SHA256(shared, secret, "e2ee-iot link v1" || e_new || e_primary, 68)
#   k_offer = okm[0:32] (primary -> new), k_answer = okm[32:64] (new -> primary),
#   check code = 6 decimal digits of be32(okm[64:68]) mod 10^6
#   each key seals exactly one message, with nonce 0 and AD = "e2ee-iot link v1"
# Rendezvous (where the service holds the two messages): hex of the first 16 bytes of
#   HKDF-SHA256(secret, none, "e2ee-iot link rendezvous v1", 16): only QR holders know it.
# The primary's message is e_primary (32) || sealed offer; the new device's is the sealed answer,
# which carries the new device's consent: its IS signature over consent_message(owner, primary,
# its fingerprint), without which the service records no link (issue 12, finding 5).
from e2ee import crypto
from e2ee.crypto.errors import CryptoError, InvalidTag

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

VERSION = const(1)
PREFIX = "E2EE-LINK:"
SECRET_SIZE = const(16)
FINGERPRINT_SIZE = const(16)
KEY_SIZE = const(32)
MAX_NAME = const(64)
MAX_MESSAGE = const(2048)  # sealed channel messages (identities, certificates)
APPROVAL_LABEL = b"e2ee-iot link approval v1"
CONSENT_LABEL = b"e2ee-iot link consent v1"
_INFO = b"e2ee-iot link v1"
_RENDEZVOUS_INFO = b"e2ee-iot link rendezvous v1"
_NONCE = bytes(12)
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


class LinkError(ValueError):
    pass


class BadPayload(LinkError):
    pass


class ChannelError(LinkError):
    pass


def _b32encode(data):
    out, bits, acc = [], 0, 0
    for byte in data:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append(_B32[(acc >> bits) & 31])
    if bits:
        out.append(_B32[(acc << (5 - bits)) & 31])
    return "".join(out)


def _b32decode(text):
    out, bits, acc = bytearray(), 0, 0
    for ch in text:
        i = _B32.find(ch)
        if i < 0:
            raise BadPayload("payload holds a character outside base32")
        acc = ((acc << 5) | i) & 0xFFFF
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    return bytes(out)


def _name(what, value):
    data = value.encode() if isinstance(value, str) else bytes(value)
    if not 0 < len(data) <= MAX_NAME:
        raise BadPayload("%s must be 1..%d bytes" % (what, MAX_NAME))
    return data


# A device id or fleet read from a payload: 1..MAX_NAME bytes of A-Z a-z 0-9 . _ - (the id
# alphabet of docs/provisioning.md), as str. The primary puts it into a request path (GET
# /identities/<id>): a '/' or '..' there would sign a request for another resource.
def _id(what, data):
    if not 0 < len(data) <= MAX_NAME:
        raise BadPayload("link payload %s must be 1..%d bytes" % (what, MAX_NAME))
    for i in range(len(data)):
        b = data[i]
        if not (0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A or b == 0x2D or b == 0x2E
                or b == 0x5F):
            raise BadPayload("link payload %s has a byte outside A-Z a-z 0-9 . _ - at %d" % (what, i))
    return bytes(data).decode()


# X25519 of the channel; ChannelError for a key of the wrong size or small order (from the QR
# code or the rendezvous, both untrusted).
def _dh(private, public):
    try:
        return crypto.x25519(private, public)
    except CryptoError:
        raise ChannelError("link ephemeral key is not a usable X25519 public key")


class Offer:
    # What the new device shows: its names, fingerprint, the pairing secret and its ephemeral
    # public key. The new device keeps `ephemeral_private` (in RAM only) until the link is done.
    def __init__(self, device_id, fleet, fingerprint, secret, ephemeral_pub, ephemeral_private=None):
        self.device_id = device_id
        self.fleet = fleet
        self.fingerprint = bytes(fingerprint)
        self.secret = bytes(secret)
        self.ephemeral_pub = bytes(ephemeral_pub)
        self._private = ephemeral_private

    def __repr__(self):
        return "<link Offer %s/%s>" % (self.fleet, self.device_id)

    @classmethod
    def new(cls, device_id, fleet, fingerprint, rng=None):
        rng = rng or crypto.random_bytes
        private = bytes(rng(KEY_SIZE))
        return cls(device_id, fleet, fingerprint, rng(SECRET_SIZE), crypto.x25519_base(private), private)

    def payload(self):
        d, f = _name("device id", self.device_id), _name("fleet", self.fleet)
        raw = b"".join((bytes((VERSION, len(d))), d, bytes((len(f),)), f, self.fingerprint, self.secret,
                        self.ephemeral_pub))
        return PREFIX + _b32encode(raw)

    @classmethod
    def parse(cls, text):
        text = text.strip()
        if not text.startswith(PREFIX):
            raise BadPayload("not an e2ee-iot link payload")
        raw = _b32decode(text[len(PREFIX):])
        try:
            if raw[0] != VERSION:
                raise BadPayload("link payload version %d, expected %d" % (raw[0], VERSION))
            pos = 1
            n = raw[pos]
            device_id = raw[pos + 1:pos + 1 + n]
            pos += 1 + n
            n = raw[pos]
            fleet = raw[pos + 1:pos + 1 + n]
            pos += 1 + n
        except IndexError:
            raise BadPayload("link payload is truncated")
        device_id, fleet = _id("device id", device_id), _id("fleet", fleet)
        rest = raw[pos:]
        if len(rest) != FINGERPRINT_SIZE + SECRET_SIZE + KEY_SIZE:
            raise BadPayload("link payload has %d bytes of keys, expected %d" % (
                len(rest), FINGERPRINT_SIZE + SECRET_SIZE + KEY_SIZE))
        return cls(device_id, fleet, rest[:16], rest[16:32], rest[32:])

    # Where the channel's two messages wait (hex, from the secret alone).
    def rendezvous(self):
        return "".join("%02x" % b for b in crypto.hkdf_sha256(self.secret, None, _RENDEZVOUS_INFO, 16))

    # The new device's side of the channel, once the primary's ephemeral key arrived.
    def channel(self, primary_ephemeral_pub):
        if self._private is None:
            raise ChannelError("only the device that made the offer holds its ephemeral key")
        return Channel(_dh(self._private, primary_ephemeral_pub), self.secret, self.ephemeral_pub,
                       primary_ephemeral_pub)


class Channel:
    def __init__(self, shared, secret, new_pub, primary_pub):
        okm = crypto.hkdf_sha256(shared, secret, _INFO + bytes(new_pub) + bytes(primary_pub), 68)
        self._offer_key, self._answer_key = bytes(okm[:32]), bytes(okm[32:64])
        code = (okm[64] << 24 | okm[65] << 16 | okm[66] << 8 | okm[67]) % 1000000
        self.check_code = "%06d" % code
        self._used = set()  # each key seals one message (nonce 0): a second seal is refused

    def __repr__(self):
        return "<link Channel>"

    # The primary's side: a fresh ephemeral key against the offer's; returns (channel, its pub).
    @classmethod
    def for_primary(cls, offer, rng=None):
        private = bytes((rng or crypto.random_bytes)(KEY_SIZE))
        public = crypto.x25519_base(private)
        return cls(_dh(private, offer.ephemeral_pub), offer.secret, offer.ephemeral_pub, public), public

    def seal_offer(self, plaintext):
        return self._seal("offer", self._offer_key, plaintext)

    def open_offer(self, data):
        return self._open(self._offer_key, data)

    def seal_answer(self, plaintext):
        return self._seal("answer", self._answer_key, plaintext)

    def open_answer(self, data):
        return self._open(self._answer_key, data)

    def _seal(self, which, key, plaintext):
        if which in self._used:
            raise ChannelError("the %s key has sealed its one message already" % which)
        self._used.add(which)
        if len(plaintext) > MAX_MESSAGE - 16:
            raise ChannelError("link message of %d bytes is too long" % len(plaintext))
        return bytes(crypto.aead_encrypt(key, _NONCE, plaintext, _INFO))

    @staticmethod
    def _open(key, data):
        try:
            return bytes(crypto.aead_decrypt(key, _NONCE, data, _INFO))
        except InvalidTag:
            raise ChannelError("link message does not authenticate (another device or a tampered relay)")


# What the primary signs to approve the link; the service stores it, peers can check it.
def approval_message(owner, device_id, fingerprint):
    o, d = _name("owner", owner), _name("device id", device_id)
    return b"".join((APPROVAL_LABEL, bytes((0, len(o))), o, bytes((len(d),)), d, bytes(fingerprint)))


# What the new device signs to consent to joining `owner` through `primary` (docs/linking.md §2);
# `fingerprint` is its own. The label keeps it from ever passing as an approval or a request.
def consent_message(owner, primary, fingerprint):
    o, p = _name("owner", owner), _name("primary", primary)
    if len(fingerprint) != FINGERPRINT_SIZE:
        raise BadPayload("fingerprint must be %d bytes" % FINGERPRINT_SIZE)
    return b"".join((CONSENT_LABEL, bytes((0, len(o))), o, bytes((len(p),)), p, bytes(fingerprint)))
