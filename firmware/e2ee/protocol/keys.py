# Long-term and prekey material of one device (docs/protocol.md §1): the identity keys, signed
# prekeys, one-time prekeys and the last-resort prekey, the public prekey bundle, and the
# KeyStore that holds the private halves and does the DH and signing with them.
#
# Private keys stay inside these objects: callers ask the KeyStore for a DH or a signature, and
# the only way a private key leaves is KeyStore.to_bytes(), the record meant for the encrypted
# store (§5). repr()/str() of every class here names ids and fingerprints, never key bytes.
import struct

from e2ee import crypto
from e2ee.protocol.public_key import canonical_ed25519, canonical_x25519

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

KEY_SIZE = const(32)  # X25519 keys and Ed25519 seeds/public keys (RFC 7748, RFC 8032)
SIGNATURE_SIZE = const(64)  # Ed25519 signature (RFC 8032 §5.1.6)
FINGERPRINT_SIZE = const(16)  # §1: first 16 bytes of SHA-512, 128 bits against second preimages
LAST_RESORT_ID = 0xFFFFFFFF  # §1: id of the last-resort prekey, never deleted on use
_MAX_ID = 0xFFFFFFFF  # §1: prekey ids are uint32
_FINGERPRINT_LABEL = b"e2ee-iot fingerprint v1"  # §1, fingerprint domain separation
_SPK_LABEL = b"e2ee-iot SPK v1"  # §1, signed-prekey signature domain separation
# Stored one-time prekeys: 100 records of 68 bytes fit a 120 KB heap several times over;
# a board publishes far fewer (a few tens) and tops up as they are used.
MAX_ONE_TIME_PREKEYS = const(100)
# Signed prekeys kept: the current one and the previous one, which stays until prekey messages
# that were started against it have arrived (§1 rotation).
MAX_SIGNED_PREKEYS = const(2)

# Format bytes: the first byte of every serialized form names its kind and version, so a record
# of one kind is never loaded as another.
_FMT_IDENTITY = const(0x11)
_FMT_SIGNED_PREKEY = const(0x12)
_FMT_ONE_TIME_PREKEY = const(0x13)
_FMT_KEYSTORE = const(0x14)
_FMT_BUNDLE = const(0x21)

_PAIR_SIZE = const(64)  # private || public
_IDENTITY_SIZE = const(129)  # fmt, IK private, IK public, IS seed, IS public
_SPK_SIZE = const(133)  # fmt, be32 id, pair, signature
_OPK_SIZE = const(69)  # fmt, be32 id, pair
_BUNDLE_SIZE = const(165)  # fmt, IK, IS, be32 spk_id, SPK, signature
_BUNDLE_OPK_SIZE = const(201)  # the same plus be32 opk_id, OPK

_BUFFER_TYPES = (bytes, bytearray, memoryview)


# Malformed serialized keys or keystore: wrong format byte, length or field (a parse error).
class KeyFormatError(ValueError):
    pass


# A prekey bundle with a field of the wrong type, length or range.
class InvalidBundle(KeyFormatError):
    pass


# Base of the errors raised while agreeing on a key (X3DH, §2).
class KeyAgreementError(ValueError):
    pass


# A prekey id that this keystore does not hold (never had it, rotated out or already used).
class UnknownPrekey(KeyAgreementError):
    pass


class UnknownSignedPrekey(UnknownPrekey):
    pass


class UnknownOneTimePrekey(UnknownPrekey):
    pass


def _check_key(what, value, size, error):
    if not isinstance(value, _BUFFER_TYPES) or len(value) != size:
        got = len(value) if isinstance(value, _BUFFER_TYPES) else -1
        raise error("%s must be %d bytes, got %d" % (what, size, got))
    return bytes(value)


# A bundle's public key: 32 bytes, canonical(key) (InvalidBundle otherwise).
def _public(what, value, canonical):
    key = _check_key(what, value, KEY_SIZE, InvalidBundle)
    if not canonical(key):
        raise InvalidBundle("%s is not a canonical public key encoding" % what)
    return key


def _check_id(what, value, error, allow_zero=False):
    if not isinstance(value, int) or not (0 if allow_zero else 1) <= value <= _MAX_ID:
        raise error("%s %r is not a uint32%s" % (what, value, "" if allow_zero else " > 0"))
    return value


# A random 32-byte private key from `rng` (n -> bytes, default the OS/hardware RNG).
def _random_key(rng):
    key = (rng or crypto.random_bytes)(KEY_SIZE)
    return _check_key("random key", key, KEY_SIZE, KeyFormatError)


# §1 fingerprint: first 16 bytes of SHA-512("e2ee-iot fingerprint v1" || IK.pub || IS.pub).
def fingerprint(ik_pub, is_pub):
    h = crypto.sha512_hasher(_FINGERPRINT_LABEL)
    h.update(ik_pub)
    h.update(is_pub)
    return h.digest()[:FINGERPRINT_SIZE]


# §1 message signed by IS for a signed prekey:
#   "e2ee-iot SPK v1" || IK.pub || be32(spk_id) || SPK.pub
# IK.pub is included so the signing identity vouches for the DH identity it is published with.
def spk_signature_message(ik_pub, spk_id, spk_pub):
    label = len(_SPK_LABEL)
    msg = bytearray(label + KEY_SIZE + 4 + KEY_SIZE)
    msg[:label] = _SPK_LABEL
    msg[label:label + KEY_SIZE] = ik_pub
    struct.pack_into(">I", msg, label + KEY_SIZE, spk_id)
    msg[label + KEY_SIZE + 4:] = spk_pub
    return msg


# An X25519 key pair. `dh(peer)` is the only use of the private half.
class KeyPair:
    def __init__(self, private, public=None):
        # a bytearray, so wipe() can zero it (ephemeral keys, §2 step 6)
        self._private = bytearray(_check_key("X25519 private key", private, KEY_SIZE, KeyFormatError))
        self.public = bytes(crypto.x25519_base(self._private)) if public is None else \
            _check_key("X25519 public key", public, KEY_SIZE, KeyFormatError)

    @classmethod
    def generate(cls, rng=None):
        return cls(_random_key(rng))

    # X25519(private, peer_pub); raises crypto WeakSharedSecret for a small-order peer key.
    def dh(self, peer_pub):
        return crypto.x25519(self._private, peer_pub)

    # Overwrites the private half with zeros; the pair is unusable afterwards.
    def wipe(self):
        for i in range(KEY_SIZE):
            self._private[i] = 0

    # private || public, only for KeyStore.to_bytes()
    def _pack_into(self, buf, offset):
        buf[offset:offset + KEY_SIZE] = self._private
        buf[offset + KEY_SIZE:offset + _PAIR_SIZE] = self.public

    @classmethod
    def _unpack(cls, data, offset):
        return cls(data[offset:offset + KEY_SIZE], data[offset + KEY_SIZE:offset + _PAIR_SIZE])

    def __repr__(self):
        return "<X25519 key pair>"

    __str__ = __repr__


# The two identity keys: IK (X25519, for X3DH) and IS (Ed25519, signs prekeys), decision D10.
class IdentityKeys:
    def __init__(self, ik, is_seed, is_pub=None):
        self._ik = ik
        self._is_seed = _check_key("Ed25519 seed", is_seed, KEY_SIZE, KeyFormatError)
        self.is_pub = bytes(crypto.ed25519_public_key(self._is_seed)) if is_pub is None else \
            _check_key("Ed25519 public key", is_pub, KEY_SIZE, KeyFormatError)

    @classmethod
    def generate(cls, rng=None):
        return cls(KeyPair.generate(rng), _random_key(rng))

    @property
    def ik_pub(self):
        return self._ik.public

    # 64-byte identity IK.pub || IS.pub (§1)
    @property
    def identity(self):
        return self._ik.public + self.is_pub

    def fingerprint(self):
        return fingerprint(self._ik.public, self.is_pub)

    def dh(self, peer_pub):
        return self._ik.dh(peer_pub)

    def sign(self, message):
        return crypto.ed25519_sign(self._is_seed, message, self.is_pub)

    def to_bytes(self):
        buf = bytearray(_IDENTITY_SIZE)
        buf[0] = _FMT_IDENTITY
        self._pack_into(buf, 1)
        return bytes(buf)

    @classmethod
    def from_bytes(cls, data):
        _check_record(data, _FMT_IDENTITY, _IDENTITY_SIZE, "identity")
        return cls._unpack(memoryview(data), 1)

    def _pack_into(self, buf, offset):
        self._ik._pack_into(buf, offset)
        offset += _PAIR_SIZE
        buf[offset:offset + KEY_SIZE] = self._is_seed
        buf[offset + KEY_SIZE:offset + _PAIR_SIZE] = self.is_pub

    @classmethod
    def _unpack(cls, data, offset):
        ik = KeyPair._unpack(data, offset)
        offset += _PAIR_SIZE
        return cls(ik, data[offset:offset + KEY_SIZE], data[offset + KEY_SIZE:offset + _PAIR_SIZE])

    def __repr__(self):
        return "<IdentityKeys fingerprint=%s>" % _hex(self.fingerprint())

    __str__ = __repr__


# A prekey: id and X25519 pair. Subclasses set the record's format byte, size and name.
class _Prekey:
    _FMT = _SIZE = 0
    _WHAT = "prekey"

    @property
    def public(self):
        return self._pair.public

    def dh(self, peer_pub):
        return self._pair.dh(peer_pub)

    # fmt || record, for storing this one key alone (KeyStore.to_bytes() stores them all)
    def to_bytes(self):
        buf = bytearray(self._SIZE)
        buf[0] = self._FMT
        self._pack_into(buf, 1)
        return bytes(buf)

    @classmethod
    def from_bytes(cls, data):
        _check_record(data, cls._FMT, cls._SIZE, cls._WHAT)
        return cls._unpack(memoryview(data), 1)

    def __repr__(self):
        return "<%s id=%d>" % (type(self).__name__, self.key_id)

    __str__ = __repr__


# A one-time prekey: id (uint32, not 0) and an X25519 pair. The last-resort prekey is one with
# id LAST_RESORT_ID.
class OneTimePrekey(_Prekey):
    _FMT = _FMT_ONE_TIME_PREKEY
    _SIZE = _OPK_SIZE
    _WHAT = "one-time prekey"

    def __init__(self, key_id, pair):
        self.key_id = _check_id("one-time prekey id", key_id, KeyFormatError)
        self._pair = pair

    @classmethod
    def generate(cls, key_id, rng=None):
        return cls(key_id, KeyPair.generate(rng))

    # be32 id || private || public
    def _pack_into(self, buf, offset):
        struct.pack_into(">I", buf, offset, self.key_id)
        self._pair._pack_into(buf, offset + 4)

    @classmethod
    def _unpack(cls, data, offset):
        return cls(struct.unpack_from(">I", data, offset)[0], KeyPair._unpack(data, offset + 4))


# A signed prekey: id (uint32), X25519 pair and the IS signature over it (§1).
class SignedPrekey(_Prekey):
    _FMT = _FMT_SIGNED_PREKEY
    _SIZE = _SPK_SIZE
    _WHAT = "signed prekey"

    def __init__(self, key_id, pair, signature):
        self.key_id = _check_id("signed prekey id", key_id, KeyFormatError, True)
        self._pair = pair
        self.signature = _check_key("signed prekey signature", signature, SIGNATURE_SIZE, KeyFormatError)

    # A new signed prekey, signed by `identity` (an IdentityKeys).
    @classmethod
    def generate(cls, identity, key_id, rng=None):
        pair = KeyPair.generate(rng)
        sig = identity.sign(spk_signature_message(identity.ik_pub, key_id, pair.public))
        return cls(key_id, pair, sig)

    # be32 id || private || public || signature
    def _pack_into(self, buf, offset):
        struct.pack_into(">I", buf, offset, self.key_id)
        self._pair._pack_into(buf, offset + 4)
        buf[offset + 4 + _PAIR_SIZE:offset + _SPK_SIZE - 1] = self.signature

    @classmethod
    def _unpack(cls, data, offset):
        key_id = struct.unpack_from(">I", data, offset)[0]
        pair = KeyPair._unpack(data, offset + 4)
        return cls(key_id, pair, data[offset + 4 + _PAIR_SIZE:offset + _SPK_SIZE - 1])


# The public prekey bundle a device publishes (§2): identity keys, one signed prekey and
# optionally one one-time prekey (opk_id and opk_pub both set or both None).
# Construction checks types, lengths, id ranges and that every public key is canonical
# (InvalidBundle; envelope.canonical_x25519, audit finding 7); the signature is checked by
# x3dh.initiate() before the bundle is used.
class PrekeyBundle:
    def __init__(self, ik_pub, is_pub, spk_id, spk_pub, spk_sig, opk_id=None, opk_pub=None):
        self.ik_pub = _public("bundle IK", ik_pub, canonical_x25519)
        self.is_pub = _public("bundle IS", is_pub, canonical_ed25519)
        self.spk_id = _check_id("bundle spk_id", spk_id, InvalidBundle, True)
        self.spk_pub = _public("bundle SPK", spk_pub, canonical_x25519)
        self.spk_sig = _check_key("bundle SPK signature", spk_sig, SIGNATURE_SIZE, InvalidBundle)
        if (opk_id is None) != (opk_pub is None):
            raise InvalidBundle("bundle has only one of opk_id and opk_pub")
        self.opk_id = None if opk_id is None else _check_id("bundle opk_id", opk_id, InvalidBundle)
        self.opk_pub = None if opk_pub is None else _public("bundle OPK", opk_pub, canonical_x25519)

    # fmt || IK || IS || be32(spk_id) || SPK || sig [|| be32(opk_id) || OPK]
    def to_bytes(self):
        buf = bytearray(_BUNDLE_SIZE if self.opk_id is None else _BUNDLE_OPK_SIZE)
        buf[0] = _FMT_BUNDLE
        buf[1:33] = self.ik_pub
        buf[33:65] = self.is_pub
        struct.pack_into(">I", buf, 65, self.spk_id)
        buf[69:101] = self.spk_pub
        buf[101:_BUNDLE_SIZE] = self.spk_sig
        if self.opk_id is not None:
            struct.pack_into(">I", buf, _BUNDLE_SIZE, self.opk_id)
            buf[_BUNDLE_SIZE + 4:] = self.opk_pub
        return bytes(buf)

    @classmethod
    def from_bytes(cls, data):
        if not isinstance(data, _BUFFER_TYPES):
            raise InvalidBundle("bundle must be bytes")
        if len(data) not in (_BUNDLE_SIZE, _BUNDLE_OPK_SIZE):
            raise InvalidBundle("bundle must be %d or %d bytes, got %d" % (
                _BUNDLE_SIZE, _BUNDLE_OPK_SIZE, len(data)))
        if data[0] != _FMT_BUNDLE:
            raise InvalidBundle("unknown bundle format 0x%02x" % data[0])
        d = memoryview(data)
        opk_id = opk_pub = None
        if len(data) == _BUNDLE_OPK_SIZE:
            opk_id = struct.unpack_from(">I", d, _BUNDLE_SIZE)[0]
            opk_pub = d[_BUNDLE_SIZE + 4:]
        return cls(d[1:33], d[33:65], struct.unpack_from(">I", d, 65)[0], d[69:101],
                   d[101:_BUNDLE_SIZE], opk_id, opk_pub)

    def fingerprint(self):
        return fingerprint(self.ik_pub, self.is_pub)

    def __eq__(self, other):
        return isinstance(other, PrekeyBundle) and self.to_bytes() == other.to_bytes()

    def __repr__(self):
        return "<PrekeyBundle fingerprint=%s spk_id=%d opk_id=%s>" % (
            _hex(self.fingerprint()), self.spk_id, self.opk_id)

    __str__ = __repr__


# All key material of one device. Performs the DH and signing operations itself; private keys
# leave only through to_bytes(), the record for the encrypted store (§5).
class KeyStore:
    def __init__(self, identity, signed_prekeys, one_time_prekeys, last_resort, next_spk_id, next_opk_id):
        self._identity = identity
        self._spks = signed_prekeys  # oldest first; the last one is current
        self._opks = one_time_prekeys  # id -> OneTimePrekey
        self._last_resort = last_resort
        self._next_spk_id = next_spk_id
        self._next_opk_id = next_opk_id

    # A new device: identity, one signed prekey, the last-resort prekey and `one_time` OPKs.
    @classmethod
    def generate(cls, one_time=0, rng=None):
        identity = IdentityKeys.generate(rng)
        store = cls(identity, [], {}, OneTimePrekey.generate(LAST_RESORT_ID, rng), 1, 1)
        store.rotate_signed_prekey(rng)
        store.generate_one_time_prekeys(one_time, rng)
        return store

    @property
    def ik_pub(self):
        return self._identity.ik_pub

    @property
    def is_pub(self):
        return self._identity.is_pub

    @property
    def identity(self):
        return self._identity.identity

    def fingerprint(self):
        return self._identity.fingerprint()

    # X25519(IK, peer_pub)
    def dh_identity(self, peer_pub):
        return self._identity.dh(peer_pub)

    # Ed25519 signature by IS
    def sign(self, message):
        return self._identity.sign(message)

    # --- signed prekeys ---

    # The current signed prekey's id.
    @property
    def spk_id(self):
        return self._spks[-1].key_id

    def _spk(self, spk_id):
        for spk in self._spks:
            if spk.key_id == spk_id:
                return spk
        raise UnknownSignedPrekey("no signed prekey with id %d" % spk_id)

    # (private, public) of signed prekey spk_id: the responder's first ratchet key pair
    # (Double Ratchet §3.5). Raises UnknownSignedPrekey.
    def signed_prekey_pair(self, spk_id):
        pair = self._spk(spk_id)._pair
        return bytes(pair._private), pair.public

    def has_signed_prekey(self, spk_id):
        for spk in self._spks:
            if spk.key_id == spk_id:
                return True
        return False

    # X25519(SPK[spk_id], peer_pub); raises UnknownSignedPrekey.
    def dh_signed_prekey(self, spk_id, peer_pub):
        return self._spk(spk_id).dh(peer_pub)

    # New signed prekey as the current one; the oldest beyond MAX_SIGNED_PREKEYS is dropped.
    # Returns the new id.
    def rotate_signed_prekey(self, rng=None):
        spk = SignedPrekey.generate(self._identity, self._next_spk_id, rng)
        self._next_spk_id = (self._next_spk_id + 1) & _MAX_ID
        self._spks.append(spk)
        if len(self._spks) > MAX_SIGNED_PREKEYS:
            self._spks.pop(0)
        return spk.key_id

    # --- one-time prekeys ---

    def one_time_prekey_ids(self):
        return sorted(self._opks)

    @property
    def last_resort_pub(self):
        return self._last_resort.public

    def _opk(self, opk_id):
        if opk_id == LAST_RESORT_ID:
            return self._last_resort
        opk = self._opks.get(opk_id)
        if opk is None:
            raise UnknownOneTimePrekey("no one-time prekey with id %d" % opk_id)
        return opk

    def has_one_time_prekey(self, opk_id):
        return opk_id == LAST_RESORT_ID or opk_id in self._opks

    # X25519(OPK[opk_id], peer_pub) (the last-resort key for LAST_RESORT_ID); raises
    # UnknownOneTimePrekey. Does not delete the key: see remove_one_time_prekey().
    def dh_one_time_prekey(self, opk_id, peer_pub):
        return self._opk(opk_id).dh(peer_pub)

    # Deletes a used one-time prekey; call only after the first message of the session it
    # started decrypted (§2, §5). The last-resort prekey is never deleted. Returns True when a
    # key was deleted.
    def remove_one_time_prekey(self, opk_id):
        if opk_id == LAST_RESORT_ID or opk_id not in self._opks:
            return False
        del self._opks[opk_id]
        return True

    # Generates up to `count` new one-time prekeys (the store holds at most
    # MAX_ONE_TIME_PREKEYS); returns their ids. Ids run 1, 2, ... skipping 0 and LAST_RESORT_ID.
    def generate_one_time_prekeys(self, count, rng=None):
        ids = []
        while len(ids) < count and len(self._opks) < MAX_ONE_TIME_PREKEYS:
            key_id = self._next_opk_id
            self._next_opk_id = key_id + 1 if key_id < LAST_RESORT_ID - 1 else 1
            if key_id in self._opks:
                continue
            self._opks[key_id] = OneTimePrekey.generate(key_id, rng)
            ids.append(key_id)
        return ids

    # Replaces the last-resort prekey (§1: kept until rotated); prekey messages already made
    # against the old one can no longer be answered.
    def rotate_last_resort_prekey(self, rng=None):
        self._last_resort = OneTimePrekey.generate(LAST_RESORT_ID, rng)

    # (id, public) of every stored one-time prekey, for upload to the key directory.
    # How many one-time prekeys the store holds (what a session start uses up), without a list.
    def one_time_prekey_count(self):
        return len(self._opks)

    def one_time_prekey_publics(self):
        return [(i, self._opks[i].public) for i in sorted(self._opks)]

    # The public bundle with the current signed prekey and the given one-time prekey (an id,
    # LAST_RESORT_ID, or None for none).
    def bundle(self, opk_id=None):
        spk = self._spks[-1]
        opk_pub = None if opk_id is None else self._opk(opk_id).public
        return PrekeyBundle(self.ik_pub, self.is_pub, spk.key_id, spk.public, spk.signature,
                            opk_id, opk_pub)

    # --- storage ---

    # fmt || identity || be32 next_spk_id || be32 next_opk_id || u8 n_spk || n_spk * SPK
    #     || be16 n_opk || n_opk * OPK || last-resort OPK   (records without their fmt byte)
    # Holds private keys: store it only encrypted (§5).
    def to_bytes(self):
        n_spk, n_opk = len(self._spks), len(self._opks)
        buf = bytearray(1 + _IDENTITY_SIZE - 1 + 8 + 1 + n_spk * (_SPK_SIZE - 1) + 2
                        + (n_opk + 1) * (_OPK_SIZE - 1))
        buf[0] = _FMT_KEYSTORE
        self._identity._pack_into(buf, 1)
        offset = _IDENTITY_SIZE
        struct.pack_into(">IIB", buf, offset, self._next_spk_id, self._next_opk_id, n_spk)
        offset += 9
        for spk in self._spks:
            spk._pack_into(buf, offset)
            offset += _SPK_SIZE - 1
        struct.pack_into(">H", buf, offset, n_opk)
        offset += 2
        for i in sorted(self._opks):
            self._opks[i]._pack_into(buf, offset)
            offset += _OPK_SIZE - 1
        self._last_resort._pack_into(buf, offset)
        return bytes(buf)

    @classmethod
    def from_bytes(cls, data):
        if not isinstance(data, _BUFFER_TYPES) or len(data) < _IDENTITY_SIZE + 11:
            raise KeyFormatError("keystore record is truncated")
        if data[0] != _FMT_KEYSTORE:
            raise KeyFormatError("unknown keystore format 0x%02x" % data[0])
        d = memoryview(data)
        identity = IdentityKeys._unpack(d, 1)
        offset = _IDENTITY_SIZE
        next_spk_id, next_opk_id, n_spk = struct.unpack_from(">IIB", d, offset)
        offset += 9
        if not 1 <= n_spk <= MAX_SIGNED_PREKEYS:
            raise KeyFormatError("keystore holds %d signed prekeys" % n_spk)
        need = offset + n_spk * (_SPK_SIZE - 1) + 2
        if len(data) < need:
            raise KeyFormatError("keystore record is truncated")
        n_opk = struct.unpack_from(">H", d, need - 2)[0]
        if n_opk > MAX_ONE_TIME_PREKEYS:
            raise KeyFormatError("keystore holds %d one-time prekeys" % n_opk)
        if len(data) != need + (n_opk + 1) * (_OPK_SIZE - 1):
            raise KeyFormatError("keystore record has %d bytes, expected %d" % (
                len(data), need + (n_opk + 1) * (_OPK_SIZE - 1)))
        spks = []
        for _ in range(n_spk):
            spks.append(SignedPrekey._unpack(d, offset))
            offset += _SPK_SIZE - 1
        offset += 2
        opks = {}
        for _ in range(n_opk):
            opk = OneTimePrekey._unpack(d, offset)
            if opk.key_id == LAST_RESORT_ID or opk.key_id in opks:
                raise KeyFormatError("keystore one-time prekey id %d is reserved or repeated" % opk.key_id)
            opks[opk.key_id] = opk
            offset += _OPK_SIZE - 1
        last_resort = OneTimePrekey._unpack(d, offset)
        if last_resort.key_id != LAST_RESORT_ID:
            raise KeyFormatError("keystore last-resort prekey has id %d" % last_resort.key_id)
        return cls(identity, spks, opks, last_resort, next_spk_id, next_opk_id)

    def __repr__(self):
        return "<KeyStore fingerprint=%s spk_id=%d one_time_prekeys=%d>" % (
            _hex(self.fingerprint()), self.spk_id, len(self._opks))

    __str__ = __repr__


def _check_record(data, fmt, size, what):
    if not isinstance(data, _BUFFER_TYPES) or len(data) != size:
        raise KeyFormatError("%s record must be %d bytes" % (what, size))
    if data[0] != fmt:
        raise KeyFormatError("unknown %s format 0x%02x" % (what, data[0]))


def _hex(b):
    from binascii import hexlify

    return hexlify(b).decode()
