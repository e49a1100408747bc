# One-to-one sessions of a device with its peers (docs/protocol.md §6): X3DH to start, the Double
# Ratchet for every message, envelopes on the wire, and the encrypted record stores on flash.
#
# Order of effects, so that a power cut at any instant loses nothing committed and never reuses a
# message key: encrypt() persists the advanced session before it returns the envelope (a message
# lost in a crash is a gap the peer skips; a key is never used twice); decrypt() persists only
# after the AEAD check passed, and deletes a used one-time prekey only after that.
import struct

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
# Session record: format byte 0x41 (record kind 4, version 1), flags, the peer's identity
# (IK.pub || IS.pub), optional parts per flag, then the ratchet state (ratchet.py).
RECORD_FORMAT = const(0x41)
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


# The stored form of one peer's session: identity, the X3DH facts still needed, the ratchet.
class _Record:
    def __init__(self, peer_ik, peer_is, state, pending=None, base_key=None):
        self.peer_ik = peer_ik
        self.peer_is = peer_is
        self.state = state  # ratchet.Session
        self.pending = pending  # (base_key, spk_id, opk_id) while the initiator awaits a reply
        self.base_key = base_key  # responder: the initiator's base key this session came from

    def to_bytes(self):
        state = self.state.to_bytes()
        flags = (_PENDING if self.pending else 0) | (_RESPONDER if self.base_key else 0)
        out = bytearray(2 + 2 * _KEY + (_PENDING_SIZE if self.pending else 0)
                        + (_KEY if self.base_key else 0) + len(state))
        out[0] = RECORD_FORMAT
        out[1] = flags
        out[2:34] = self.peer_ik
        out[34:66] = self.peer_is
        pos = 66
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
        if len(data) < 66 or data[0] != RECORD_FORMAT or data[1] & ~(_PENDING | _RESPONDER):
            raise BadRecord("session record has an unknown format or flags")
        flags = data[1]
        data = memoryview(data)
        pos = 66
        pending = base_key = None
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
        return cls(bytes(data[2:34]), bytes(data[34:66]), state, pending, base_key)


class SessionManager:
    # directory: where the device keeps its records (flash or disk); storage_key: the 32-byte
    # device storage key (boards/ says where each board keeps it); rng: n -> bytes for tests.
    def __init__(self, directory, storage_key, keystore, rng=None):
        self._rng = rng
        self._keys = RecordStore(directory + "/keys", "keys", storage_key)
        self._sessions = RecordStore(directory + "/sessions", "sessions", storage_key)
        self.keystore = keystore

    # A new device identity with `one_time` one-time prekeys, persisted in `directory`.
    @classmethod
    def create(cls, directory, storage_key, one_time=10, rng=None):
        manager = cls(directory, storage_key, KeyStore.generate(one_time, rng), rng)
        manager.save_keys()
        return manager

    # The device stored in `directory` (after a reboot or a power cut).
    @classmethod
    def open(cls, directory, storage_key, rng=None):
        keys = RecordStore(directory + "/keys", "keys", storage_key)
        return cls(directory, storage_key, KeyStore.from_bytes(keys.get(_KEYSTORE_RECORD)), rng)

    def __repr__(self):
        return "<SessionManager %s peers=%d>" % (self._sessions.directory, len(self.peers()))

    def save_keys(self):
        self._keys.put(_KEYSTORE_RECORD, self.keystore.to_bytes())

    # The public prekey bundle peers start sessions from (opk_id: an id, LAST_RESORT_ID or None).
    def bundle(self, opk_id=None):
        return self.keystore.bundle(opk_id)

    def peers(self):
        return self._sessions.names()

    def has_session(self, peer):
        return peer in self._sessions.names()

    # The peer's identity (IK.pub, IS.pub) as bound to this session.
    def peer_identity(self, peer):
        record = self._load(peer)
        return record.peer_ik, record.peer_is

    # The stored bytes of a peer's session record (encrypted file contents are not exposed).
    def session_bytes(self, peer):
        return bytes(self._sessions.get(peer))

    def _load(self, peer):
        try:
            return _Record.from_bytes(self._sessions.get(peer), self._rng)
        except NotFound:
            raise NoSession("no session with %s" % peer)

    def _save(self, peer, record):
        self._sessions.put(peer, record.to_bytes())

    # X3DH as initiator (§2) from the peer's bundle; replaces any earlier session with that peer.
    def start(self, peer, bundle):
        if self.has_session(peer) and self.peer_identity(peer) != (bundle.ik_pub, bundle.is_pub):
            raise UntrustedIdentity("bundle of %s carries another identity than its session" % peer)
        sk, ad, base_key, spk_id, opk_id = x3dh.initiate(self.keystore, bundle, rng=self._rng)
        state = ratchet.init_initiator(sk, bundle.spk_pub, ad, self._rng)
        record = _Record(bundle.ik_pub, bundle.is_pub, state, (base_key, spk_id, opk_id or 0))
        self._save(peer, record)

    # Encrypts plaintext for peer; returns the envelope bytes to send. The advanced session is
    # on flash before the envelope exists (no message key is ever used twice).
    def encrypt(self, peer, plaintext):
        record = self._load(peer)
        dh, pn, n, ciphertext = record.state.encrypt(plaintext)
        message = envelope.RatchetMessage(dh, pn, n, ciphertext)
        if record.pending:
            base_key, spk_id, opk_id = record.pending
            message = envelope.PreKeyMessage(self.keystore.ik_pub, self.keystore.is_pub, base_key,
                                             spk_id, opk_id, message)
        out = envelope.encode(message)
        self._save(peer, record)
        return out

    # Decrypts an envelope from peer; returns the plaintext. Any failure raises a typed error
    # (envelope DecodeError, ratchet RatchetError, X3DH KeyAgreementError, SessionError) and
    # leaves every stored record as it was.
    def decrypt(self, peer, data):
        message = envelope.decode(data)
        if isinstance(message, envelope.PreKeyMessage):
            return self._decrypt_prekey(peer, message)
        if not isinstance(message, envelope.RatchetMessage):
            raise SessionError("control messages are not for the session cipher")
        record = self._load(peer)
        plaintext = record.state.decrypt(message.dh, message.pn, message.n, message.ciphertext)
        record.pending = None  # the peer answered: it holds the session (X3DH §3.3)
        self._save(peer, record)
        return plaintext

    # X3DH as responder (§2), or a repeated PreKeyMessage of the session it already started.
    def _decrypt_prekey(self, peer, message):
        identity = (bytes(message.identity_dh), bytes(message.identity_sign))
        record = None
        if self.has_session(peer):
            record = self._load(peer)
            if (record.peer_ik, record.peer_is) != identity:
                raise UntrustedIdentity("prekey message for %s carries another identity" % peer)
            if record.base_key != bytes(message.base_key):
                record = None  # the peer started over: a new session replaces the old on success
        delete_opk = None
        if record is None:
            sk, ad, delete_opk = x3dh.respond(self.keystore, identity[0], identity[1], message.base_key,
                                              message.signed_prekey_id, message.one_time_prekey_id)
            pair = self.keystore.signed_prekey_pair(message.signed_prekey_id)
            state = ratchet.init_responder(sk, pair, ad, self._rng)
            record = _Record(identity[0], identity[1], state, None, bytes(message.base_key))
        inner = message.message
        plaintext = record.state.decrypt(inner.dh, inner.pn, inner.n, inner.ciphertext)
        self._save(peer, record)
        if delete_opk is not None and self.keystore.remove_one_time_prekey(delete_opk):
            self.save_keys()  # only now: a forged prekey message cannot burn a one-time prekey
        return plaintext
