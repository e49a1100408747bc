# One-to-one sessions of a device with its peers (docs/protocol.md §6): X3DH to start, the Double
# Ratchet for every message, envelopes on the wire, and the encrypted record stores on flash.
#
# Order of effects, so that a power cut at any instant loses nothing committed and never reuses a
# message key: encrypt() persists the advanced session before it returns the envelope (a message
# lost in a crash is a gap the peer skips; a key is never used twice); decrypt() persists only
# after the AEAD check passed, and deletes a used one-time prekey only after that.
#
# With a TrustStore (trust.py; docs/protocol.md §6, "Certified sessions") every session is bound to
# a Fleet CA certificate of the peer: start() and PreKeyMessages need one for that peer id and those
# identity keys, the session record keeps its serial and not_after, and every encrypt() and
# decrypt() refuses a peer the current revocation list names (PeerRevoked) or whose certificate
# has expired (PeerExpired), before anything changes.
import hashlib
import json
import struct
from binascii import hexlify

from e2ee import crypto

# Sessions use every primitive: load the crypto backends before the protocol modules, so their
# large workspaces sit low in a compact heap (loaded the other way round, a 120 KB heap that
# holds the .mpy files cannot find 5 KB in one piece for them).
crypto.default.resolve()

from e2ee.protocol import envelope, ratchet, x3dh  # noqa: E402
from e2ee.protocol.keys import KeyStore  # noqa: E402
from e2ee.protocol.store import NotFound, RecordStore  # noqa: E402

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_KEY = const(32)
_MAX_NAME = const(32)  # store.MAX_NAME
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-"
_INDEX = "peer-index"
# Session record: format byte, flags, the peer's identity (IK.pub || IS.pub), in version 2 the
# peer's certificate serial and not_after, optional parts per flag, then the ratchet state
# (ratchet.py). Version 1 (0x41, no certificate) is still written for uncertified sessions, so
# managers without a TrustStore keep their records byte for byte, and read everywhere.
RECORD_FORMAT = const(0x41)  # record kind 4, version 1: uncertified
RECORD_FORMAT_CERTIFIED = const(0x42)  # record kind 4, version 2: + serial (16) || be64(not_after)
_SERIAL = const(16)
_CERTIFIED_SIZE = const(24)
_PENDING = const(1)  # initiator not yet answered: keep sending PreKeyMessages (X3DH §3.3)
_RESPONDER = const(2)  # session began from the initiator's base key stored after the flags
_PENDING_SIZE = const(40)  # base_key (32) || be32(spk_id) || be32(opk_id)
_KEYSTORE_RECORD = "keystore"


class SessionError(ValueError):
    pass


# A RatchetMessage from a peer we hold no session with (lost state, or never started).
class NoSession(SessionError):
    pass


# A PreKeyMessage for a peer id that is bound to another identity: never replaced silently.
class UntrustedIdentity(SessionError):
    pass


# A stored session record that does not parse.
class BadRecord(SessionError):
    pass


# Base of the refusals of an established session's peer by a manager with a TrustStore; nothing
# stored changes.
class PeerRefused(SessionError):
    pass


# The peer's certificate (its serial, recorded in the session) is on the current revocation list.
class PeerRevoked(PeerRefused):
    pass


# The peer's certificate has expired: now >= its not_after, or the current revocation list was
# signed after it (lists leave expired certificates out, so they no longer speak for it).
class PeerExpired(PeerRefused):
    pass


# A session without a certificate (started without a TrustStore) used by a manager with one.
class UncertifiedSession(PeerRefused):
    pass


# The stored form of one peer's session: identity, the X3DH facts still needed, the ratchet.
class _Record:
    def __init__(self, peer_ik, peer_is, state, pending=None, base_key=None, serial=None, not_after=0):
        self.peer_ik = peer_ik
        self.peer_is = peer_is
        self.state = state  # ratchet.Session
        self.pending = pending  # (base_key, spk_id, opk_id) while the initiator awaits a reply
        self.base_key = base_key  # responder: the initiator's base key this session came from
        self.serial = serial  # the peer's certificate serial (16 bytes), None if uncertified
        self.not_after = not_after  # and its end of validity (Unix seconds)

    def to_bytes(self):
        state = self.state.to_bytes()
        flags = (_PENDING if self.pending else 0) | (_RESPONDER if self.base_key else 0)
        certified = _CERTIFIED_SIZE if self.serial else 0
        out = bytearray(2 + 2 * _KEY + certified + (_PENDING_SIZE if self.pending else 0)
                        + (_KEY if self.base_key else 0) + len(state))
        out[0] = RECORD_FORMAT_CERTIFIED if certified else RECORD_FORMAT
        out[1] = flags
        out[2:34] = self.peer_ik
        out[34:66] = self.peer_is
        pos = 66
        if certified:
            out[pos:pos + _SERIAL] = self.serial
            struct.pack_into(">Q", out, pos + _SERIAL, self.not_after)
            pos += _CERTIFIED_SIZE
        if self.pending:
            out[pos : pos + _KEY] = self.pending[0]
            struct.pack_into(">II", out, pos + _KEY, self.pending[1], self.pending[2])
            pos += _PENDING_SIZE
        if self.base_key:
            out[pos : pos + _KEY] = self.base_key
            pos += _KEY
        out[pos:] = state
        return out

    @classmethod
    def from_bytes(cls, data, rng=None):
        fmt = data[0] if len(data) else 0
        certified = _CERTIFIED_SIZE if fmt == RECORD_FORMAT_CERTIFIED else 0
        if (len(data) < 66 + certified or (fmt != RECORD_FORMAT and not certified)
                or data[1] & ~(_PENDING | _RESPONDER)):
            raise BadRecord("session record has an unknown format or flags")
        flags = data[1]
        data = memoryview(data)
        pos = 66
        pending = base_key = serial = None
        not_after = 0
        if certified:
            serial = bytes(data[pos:pos + _SERIAL])
            not_after = struct.unpack_from(">Q", data, pos + _SERIAL)[0]
            pos += _CERTIFIED_SIZE
        if flags & _PENDING:
            spk_id, opk_id = struct.unpack_from(">II", data, pos + _KEY)
            pending = (bytes(data[pos : pos + _KEY]), spk_id, opk_id)
            pos += _PENDING_SIZE
        if flags & _RESPONDER:
            base_key = bytes(data[pos : pos + _KEY])
            pos += _KEY
        try:
            state = ratchet.from_bytes(data[pos:], rng)
        except ratchet.StateDecodeError as e:
            raise BadRecord("session record: %s" % e)
        return cls(bytes(data[2:34]), bytes(data[34:66]), state, pending, base_key, serial, not_after)


class SessionManager:
    # directory: where the device keeps its records (flash or disk); storage_key: the 32-byte
    # device storage key (boards/ says where each board keeps it); rng: n -> bytes for tests;
    # trust: a trust.TrustStore to certify every session with (§6, "Certified sessions"), or None.
    # A trust store whose own certificate is for other identity keys raises trust.WrongPeer.
    def __init__(self, directory, storage_key, keystore, rng=None, trust=None):
        self._rng = rng
        self._keys = RecordStore(directory + "/keys", "keys", storage_key)
        self._sessions = RecordStore(directory + "/sessions", "sessions", storage_key)
        self.keystore = keystore
        self.trust = trust
        if trust is not None and trust.certificate is not None:
            trust.check_own_identity(keystore.ik_pub, keystore.is_pub)

    # A new device identity with `one_time` one-time prekeys, persisted in `directory`.
    @classmethod
    def create(cls, directory, storage_key, one_time=10, rng=None, trust=None):
        manager = cls(directory, storage_key, KeyStore.generate(one_time, rng), rng, trust)
        manager.save_keys()
        return manager

    # The device stored in `directory` (after a reboot or a power cut).
    @classmethod
    def open(cls, directory, storage_key, rng=None, trust=None):
        keys = RecordStore(directory + "/keys", "keys", storage_key)
        return cls(directory, storage_key, KeyStore.from_bytes(keys.get(_KEYSTORE_RECORD)), rng, trust)

    def __repr__(self):
        return "<SessionManager %s peers=%d%s>" % (self._sessions.directory, len(self.peers()),
                                                   "" if self.trust is None else " certified")

    def save_keys(self):
        self._keys.put(_KEYSTORE_RECORD, self.keystore.to_bytes())

    # The public prekey bundle peers start sessions from (opk_id: an id, LAST_RESORT_ID or None).
    def bundle(self, opk_id=None):
        return self.keystore.bundle(opk_id)

    # Device ids may hold capitals and "." (docs/provisioning.md); record names may not
    # (store.py): such peers are stored under "p" + 30 hex digits of SHA-256(id), and an index
    # record maps those names back to the ids.
    def _name(self, peer):
        if len(peer) <= _MAX_NAME and peer != _INDEX and all(c in _NAME_CHARS for c in peer):
            return peer
        return "p" + hexlify(hashlib.sha256(peer.encode()).digest()[:15]).decode()

    def _index(self):
        try:
            return json.loads(self._sessions.get(_INDEX))
        except NotFound:
            return {}

    def peers(self):
        index = None
        out = []
        for name in self._sessions.names():
            if name == _INDEX:
                continue
            if len(name) == 31 and name[0] == "p":  # possibly a hashed name
                index = self._index() if index is None else index
                name = index.get(name, name)
            out.append(name)
        return sorted(out)

    def has_session(self, peer):
        return self._name(peer) in self._sessions.names()

    # The peer's identity (IK.pub, IS.pub) as bound to this session.
    def peer_identity(self, peer):
        record = self._load(peer)
        return record.peer_ik, record.peer_is

    # The peer's certificate serial and not_after recorded in this session, or None (uncertified).
    def peer_certificate(self, peer):
        record = self._load(peer)
        return None if record.serial is None else (record.serial, record.not_after)

    # The stored bytes of a peer's session record (encrypted file contents are not exposed).
    def session_bytes(self, peer):
        return bytes(self._sessions.get(self._name(peer)))

    def _load(self, peer):
        try:
            return _Record.from_bytes(self._sessions.get(self._name(peer)), self._rng)
        except NotFound:
            raise NoSession("no session with %s" % peer)

    def _save(self, peer, record):
        name = self._name(peer)
        if name != peer:
            index = self._index()
            if index.get(name) != peer:
                index[name] = peer
                self._sessions.put(_INDEX, json.dumps(index).encode())
        self._sessions.put(name, record.to_bytes())

    # With a TrustStore: the peer's certificate for this identity (ik, is), verified (trust.py);
    # returns (serial, not_after). Without one: (None, 0), the certificate not looked at.
    def _certify(self, peer, data, now, ik, is_):
        if self.trust is None:
            return None, 0
        cert = self.trust.verify_peer(peer, data, now, (ik, is_))
        return cert.serial, cert.not_after

    # With a TrustStore: refuses an established session whose peer is uncertified, revoked on the
    # current list, or expired (by now, or by the list's signing time). Changes nothing.
    def _check_peer(self, peer, record, now):
        trust = self.trust
        if trust is None:
            return
        if record.serial is None:
            raise UncertifiedSession("session with %s has no certificate: start a certified one" % peer)
        if trust.is_revoked(record.serial):
            raise PeerRevoked("certificate of %s is revoked (list version %d)" % (peer, trust.version))
        if trust.expired_by_list(record.not_after) or (now is not None and now >= record.not_after):
            raise PeerExpired("certificate of %s expired at %d" % (peer, record.not_after))

    # X3DH as initiator (§2) from the peer's bundle; replaces any earlier session with that peer.
    # With a TrustStore, peer_certificate (the peer's SignedCertificate) must be valid for device
    # id `peer` and the bundle's identity keys (now: Unix seconds, or None without a clock);
    # without one, passing a certificate raises SessionError (it could not be checked).
    def start(self, peer, bundle, peer_certificate=None, now=None):
        if self.trust is None and peer_certificate is not None:
            raise SessionError("no TrustStore to verify the certificate of %s with" % peer)
        serial, not_after = self._certify(peer, peer_certificate, now, bundle.ik_pub, bundle.is_pub)
        if self.has_session(peer) and self.peer_identity(peer) != (bundle.ik_pub, bundle.is_pub):
            raise UntrustedIdentity("bundle of %s carries another identity than its session" % peer)
        sk, ad, base_key, spk_id, opk_id = x3dh.initiate(self.keystore, bundle, rng=self._rng)
        state = ratchet.init_initiator(sk, bundle.spk_pub, ad, self._rng)
        record = _Record(bundle.ik_pub, bundle.is_pub, state, (base_key, spk_id, opk_id or 0),
                         None, serial, not_after)
        self._save(peer, record)

    # Records a renewed certificate of a peer in its session (TrustStore required): it must be
    # valid for device id `peer` and the session's identity keys. Later checks use its serial.
    def update_peer_certificate(self, peer, certificate, now=None):
        if self.trust is None:
            raise SessionError("no TrustStore to verify the certificate of %s with" % peer)
        record = self._load(peer)
        serial, not_after = self._certify(peer, certificate, now, record.peer_ik, record.peer_is)
        record.serial, record.not_after = serial, not_after
        self._save(peer, record)

    # Encrypts plaintext for peer; returns the envelope bytes to send. The advanced session is
    # on flash before the envelope exists (no message key is ever used twice). With a TrustStore
    # the peer must not be revoked or expired (now: Unix seconds or None), and PreKeyMessages
    # carry the device's own certificate.
    def encrypt(self, peer, plaintext, now=None):
        record = self._load(peer)
        self._check_peer(peer, record, now)
        own = b""
        if record.pending and self.trust is not None:
            own = self.trust.own_certificate()
        dh, pn, n, ciphertext = record.state.encrypt(plaintext)
        message = envelope.RatchetMessage(dh, pn, n, ciphertext)
        if record.pending:
            base_key, spk_id, opk_id = record.pending
            message = envelope.PreKeyMessage(self.keystore.ik_pub, self.keystore.is_pub, base_key,
                                             spk_id, opk_id, message, own)
        out = envelope.encode(message)
        self._save(peer, record)
        return out

    # Decrypts an envelope from peer; returns the plaintext. Any failure raises a typed error
    # (envelope DecodeError, ratchet RatchetError, X3DH KeyAgreementError, SessionError, and with a
    # TrustStore certificate.CertificateError) and leaves every stored record as it was.
    def decrypt(self, peer, data, now=None):
        message = envelope.decode(data)
        if isinstance(message, envelope.PreKeyMessage):
            return self._decrypt_prekey(peer, message, now)
        if not isinstance(message, envelope.RatchetMessage):
            raise SessionError("control messages are not for the session cipher")
        record = self._load(peer)
        self._check_peer(peer, record, now)
        plaintext = record.state.decrypt(message.dh, message.pn, message.n, message.ciphertext)
        record.pending = None  # the peer answered: it holds the session (X3DH §3.3)
        self._save(peer, record)
        return plaintext

    # X3DH as responder (§2), or a repeated PreKeyMessage of the session it already started. With
    # a TrustStore the sender certificate must be valid for `peer` and the message's identity
    # keys before any key agreement; without one it is not looked at.
    def _decrypt_prekey(self, peer, message, now):
        identity = (bytes(message.identity_dh), bytes(message.identity_sign))
        serial, not_after = self._certify(peer, message.sender_certificate, now, identity[0], identity[1])
        record = None
        if self.has_session(peer):
            record = self._load(peer)
            if (record.peer_ik, record.peer_is) != identity:
                raise UntrustedIdentity("prekey message for %s carries another identity" % peer)
            if record.base_key != bytes(message.base_key):
                record = None  # the peer started over: a new session replaces the old on success
            else:
                self._check_peer(peer, record, now)
        delete_opk = None
        if record is None:
            sk, ad, delete_opk = x3dh.respond(self.keystore, identity[0], identity[1], message.base_key,
                                              message.signed_prekey_id, message.one_time_prekey_id)
            pair = self.keystore.signed_prekey_pair(message.signed_prekey_id)
            state = ratchet.init_responder(sk, pair, ad, self._rng)
            record = _Record(identity[0], identity[1], state, None, bytes(message.base_key), serial,
                             not_after)
        inner = message.message
        plaintext = record.state.decrypt(inner.dh, inner.pn, inner.n, inner.ciphertext)
        self._save(peer, record)
        if delete_opk is not None and self.keystore.remove_one_time_prekey(delete_opk):
            self.save_keys()  # only now: a forged prekey message cannot burn a one-time prekey
        return plaintext
