# Sender Keys for group messages (docs/protocol.md §7), after Signal's Sender Key design: each
# member has its own sender chain per group; it sends the chain's state (a distribution) to every
# other member over their pairwise Double Ratchet sessions, then encrypts each group message
# once for all: the chain key ratchets forward per message (KDF_CK of §3), and every message is
# signed with the sender's per-chain Ed25519 key so members cannot forge each other's messages.
# Removing a member: every remaining member makes a new chain and distributes it to the
# remaining members only, so the removed member cannot read what follows.
#
# Wire (protobuf, proto/e2ee/v1/group.proto):
#   SenderKeyDistribution  { version=1 [1]; group_id [2]; key_id [3]; iteration [4];
#                            chain_key [5] (32); signing_key [6] (32) }
#   SenderKeyMessage       { key_id [1]; iteration [2]; ciphertext [3] }
#   SignedSenderKeyMessage { message [1] (a SenderKeyMessage); signature [2] (64) }
#   signature = Ed25519(signing key, "e2ee-iot sender key v1" || message)
#   AEAD: key, nonce = expand(mk, "e2ee-iot group message v1"); AD = "e2ee-iot group v1" ||
#         len || group_id || len || sender_id || be32 key_id || be32 iteration
import struct

from e2ee import crypto
from e2ee.crypto.errors import CryptoError, InvalidTag
from e2ee.protocol import chain_key
from e2ee.protocol.envelope import (
    DecodeError, _len_size, _put_bytes, _put_uint, _read_fields, _uint_size,
)

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

VERSION = const(1)
MAX_SKIP = const(32)  # iterations a message may jump ahead of the chain
MAX_STORED = const(16)  # skipped message keys kept per sender chain (oldest dropped first)
MAX_NAME = const(64)  # group and device ids
MAX_PLAINTEXT = const(4096)
SIGNATURE_SIZE = const(64)
SIGN_LABEL = b"e2ee-iot sender key v1"
MESSAGE_INFO = b"e2ee-iot group message v1"
_AD_LABEL = b"e2ee-iot group v1"
_FMT = const(0x51)  # stored chain record
_TAG_SIZE = const(16)  # ChaCha20-Poly1305 tag: ciphertext is 16..MAX_PLAINTEXT + 16 bytes (§7)
# Last value of the uint32 iteration counter (§7): a chain at it is exhausted. No message or
# distribution carries it (Malformed), so the counter never needs a 33rd bit and cannot wrap.
_LAST_ITERATION = 0xFFFFFFFF
_RECORD_FIXED = const(75)  # stored chain: fmt, flags, key_id, iteration, count, ck, signing pub

_DIST_FIELDS = b"\x00\x02\x00\x00\x02\x02"  # version, group_id, key_id, iteration, chain_key, signing_key
_MSG_FIELDS = b"\x00\x00\x02"  # key_id, iteration, ciphertext
_SIGNED_FIELDS = b"\x02\x02"  # message, signature


class SenderKeyError(ValueError):
    pass


# Not a well-formed distribution or message (sizes, fields, version, group).
class Malformed(SenderKeyError):
    pass


# The message's key id is not the chain we hold for that sender: a distribution is missing.
class UnknownChain(SenderKeyError):
    pass


class BadSignature(SenderKeyError):
    pass


class Duplicate(SenderKeyError):
    pass


class TooFarAhead(SenderKeyError):
    pass


def _name(what, value):
    data = value.encode() if isinstance(value, str) else bytes(value)
    if not 0 < len(data) <= MAX_NAME:
        raise Malformed("%s must be 1..%d bytes" % (what, MAX_NAME))
    return data


def _ad(group_id, sender_id, key_id, iteration):
    g, s = _name("group id", group_id), _name("sender id", sender_id)
    return b"".join((_AD_LABEL, bytes((len(g),)), g, bytes((len(s),)), s, struct.pack(">II", key_id, iteration)))


class SenderChain:
    # One sender's chain in one group: (key_id, iteration, chain_key) and the signing key;
    # `seed` only on the sender's own chain. `skipped`: [(iteration, message key)], oldest first.
    def __init__(self, key_id, iteration, ck, signing_pub, seed=None, skipped=None):
        self.key_id = key_id
        self.iteration = iteration
        self._ck = bytes(ck)
        self.signing_pub = bytes(signing_pub)
        self._seed = seed
        self._skipped = skipped or []

    def __repr__(self):
        return "<SenderChain key_id=%08x iteration=%d %s>" % (
            self.key_id, self.iteration, "own" if self._seed else "peer")

    @classmethod
    def generate(cls, rng=None):
        rng = rng or crypto.random_bytes
        key_id = struct.unpack(">I", rng(4))[0]
        seed = bytes(rng(32))
        return cls(key_id, 0, rng(32), crypto.ed25519_public_key(seed), seed)

    # --- distribution ---

    def distribution(self, group_id):
        g = _name("group id", group_id)
        if self.iteration >= _LAST_ITERATION:
            raise SenderKeyError("chain exhausted: make a new sender key")
        size = (_uint_size(VERSION) + _len_size(len(g)) + _uint_size(self.key_id) + _uint_size(self.iteration)
                + _len_size(32) + _len_size(32))
        out = bytearray(size)
        pos = _put_uint(out, 0, 1, VERSION)
        pos = _put_bytes(out, pos, 2, g)
        pos = _put_uint(out, pos, 3, self.key_id)
        pos = _put_uint(out, pos, 4, self.iteration)
        pos = _put_bytes(out, pos, 5, self._ck)
        _put_bytes(out, pos, 6, self.signing_pub)
        return bytes(out)

    @classmethod
    def from_distribution(cls, data, group_id):
        try:
            v = _read_fields(data, "SenderKeyDistribution", _DIST_FIELDS)
        except DecodeError as e:
            raise Malformed("distribution: %s" % e)
        if (v[1] or 0) != VERSION:
            raise Malformed("distribution version %d, expected %d" % (v[1] or 0, VERSION))
        if v[2] is None or bytes(v[2]) != _name("group id", group_id):
            raise Malformed("distribution is for another group")
        if v[5] is None or len(v[5]) != 32 or v[6] is None or len(v[6]) != 32:
            raise Malformed("distribution chain key and signing key must be 32 bytes")
        if (v[4] or 0) == _LAST_ITERATION:
            raise Malformed("distribution iteration 0xffffffff: the chain is exhausted")
        return cls(v[3] or 0, v[4] or 0, v[5], v[6])

    # --- messages ---

    def encrypt(self, group_id, sender_id, plaintext):
        if self._seed is None:
            raise SenderKeyError("only the owner of a chain encrypts with it")
        if len(plaintext) > MAX_PLAINTEXT:
            raise Malformed("plaintext of %d bytes exceeds %d" % (len(plaintext), MAX_PLAINTEXT))
        if self.iteration >= _LAST_ITERATION:
            raise SenderKeyError("chain exhausted: make a new sender key")
        next_ck, mk = chain_key.advance(self._ck)
        key, nonce = chain_key.expand(mk, MESSAGE_INFO)
        sealed = crypto.aead_encrypt(key, nonce, plaintext, _ad(group_id, sender_id, self.key_id, self.iteration))
        size = _uint_size(self.key_id) + _uint_size(self.iteration) + _len_size(len(sealed))
        message = bytearray(size)
        pos = _put_uint(message, 0, 1, self.key_id)
        pos = _put_uint(message, pos, 2, self.iteration)
        _put_bytes(message, pos, 3, sealed)
        signature = crypto.ed25519_sign(self._seed, SIGN_LABEL + message, self.signing_pub)
        out = bytearray(_len_size(len(message)) + _len_size(SIGNATURE_SIZE))
        pos = _put_bytes(out, 0, 1, message)
        _put_bytes(out, pos, 2, signature)
        self._ck = bytes(next_ck)  # the caller saves the chain before the message leaves
        self.iteration += 1
        return bytes(out)

    # Decrypts a SignedSenderKeyMessage from this chain's sender. The chain changes only when the
    # message authenticates (signature, then AEAD); any error leaves it as it was.
    def decrypt(self, group_id, sender_id, data):
        try:
            outer = _read_fields(data, "SignedSenderKeyMessage", _SIGNED_FIELDS)
            if outer[1] is None or outer[2] is None:
                raise Malformed("message and signature are required")
            inner = _read_fields(outer[1], "SenderKeyMessage", _MSG_FIELDS)
        except DecodeError as e:
            raise Malformed("group message: %s" % e)
        key_id, iteration, sealed = inner[1] or 0, inner[2] or 0, inner[3]
        if sealed is None or not _TAG_SIZE <= len(sealed) <= MAX_PLAINTEXT + _TAG_SIZE:
            raise Malformed("group message ciphertext must be %d..%d bytes" % (
                _TAG_SIZE, MAX_PLAINTEXT + _TAG_SIZE))
        if len(outer[2]) != SIGNATURE_SIZE:
            raise Malformed("group message signature must be %d bytes" % SIGNATURE_SIZE)
        if iteration == _LAST_ITERATION:
            raise Malformed("group message iteration 0xffffffff: no chain reaches it")
        if key_id != self.key_id:
            raise UnknownChain("message key id %08x, the chain held is %08x" % (key_id, self.key_id))
        try:
            crypto.ed25519_verify(self.signing_pub, (SIGN_LABEL, outer[1]), outer[2])  # hashed in place
        except CryptoError:
            raise BadSignature("group message signature does not verify")
        ad = _ad(group_id, sender_id, key_id, iteration)
        if iteration < self.iteration:
            for i, (it, mk) in enumerate(self._skipped):
                if it == iteration:
                    plaintext = self._open(mk, ad, sealed)
                    self._skipped.pop(i)
                    return plaintext
            raise Duplicate("group message %d was already received (or is too old)" % iteration)
        if iteration - self.iteration > MAX_SKIP:
            raise TooFarAhead("group message %d would skip %d keys, limit %d" % (
                iteration, iteration - self.iteration, MAX_SKIP))
        ck, skipped = self._ck, []
        for it in range(self.iteration, iteration):
            ck, mk = chain_key.advance(ck)
            skipped.append((it, bytes(mk)))
        ck, mk = chain_key.advance(ck)
        plaintext = self._open(mk, ad, sealed)
        self._ck, self.iteration = bytes(ck), iteration + 1
        self._skipped = (self._skipped + skipped)[-MAX_STORED:]
        return plaintext

    @staticmethod
    def _open(mk, ad, sealed):
        key, nonce = chain_key.expand(mk, MESSAGE_INFO)
        try:
            return bytes(crypto.aead_decrypt(key, nonce, sealed, ad))
        except InvalidTag:
            raise BadSignature("group message does not authenticate")

    # --- storage (the record store encrypts it at rest) ---

    def to_bytes(self):
        out = [bytes((_FMT, 1 if self._seed else 0)), struct.pack(">IIB", self.key_id, self.iteration,
                                                                 len(self._skipped)),
               self._ck, self.signing_pub, self._seed or b""]
        for it, mk in self._skipped:
            out.append(struct.pack(">I", it) + mk)
        return b"".join(out)

    # Parses a stored chain (§7 "Stored chains"); any other format byte, flags or length is
    # Malformed.
    @classmethod
    def from_bytes(cls, data):
        if len(data) < _RECORD_FIXED or data[0] != _FMT or data[1] > 1:
            raise Malformed("not a stored sender chain")
        own = data[1] == 1
        key_id, iteration, count = struct.unpack(">IIB", data[2:11])
        if count > MAX_STORED or len(data) != _RECORD_FIXED + (32 if own else 0) + 36 * count:
            raise Malformed("stored sender chain: %d bytes for %d skipped keys" % (len(data), count))
        pos = 11
        ck, pub = data[pos:pos + 32], data[pos + 32:pos + 64]
        pos += 64
        seed = None
        if own:
            seed = bytes(data[pos:pos + 32])
            pos += 32
        skipped = []
        for _ in range(count):
            skipped.append((struct.unpack(">I", data[pos:pos + 4])[0], bytes(data[pos + 4:pos + 36])))
            pos += 36
        return cls(key_id, iteration, ck, pub, seed, skipped)
