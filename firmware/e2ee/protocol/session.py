# One-to-one sessions of a device with its peers (docs/protocol.md §6): X3DH to start, the Double
# Ratchet for every message, envelopes on the wire, and the encrypted record stores on flash.
#
# Order of effects, so that a power cut at any instant loses nothing committed and never reuses a
# message key: encrypt() persists the advanced session before it returns the envelope (a message
# lost in a crash is a gap the peer skips; a key is never used twice); decrypt() persists only
# after the AEAD check passed, and deletes a used one-time prekey only after that.
#
# Several states per peer (docs/protocol.md §6, "Session records"; Signal's SessionRecord): the
# current state, which every encrypt() uses, and up to MAX_ARCHIVED_STATES earlier ones. A new
# session (start() or a PreKeyMessage with a new base key) archives the current state instead of
# discarding it; decrypt() tries the current state, then the archived ones, and the one that
# decrypted becomes current (unless the current one is a session this side started and the peer
# has not answered yet). So two peers that start sessions with each other at the same time, or
# one that starts over while messages of the old session are in flight, lose nothing.
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

from e2ee.protocol import certificate, envelope, ratchet, x3dh  # noqa: E402
from e2ee.protocol.keys import KeyAgreementError, KeyStore  # noqa: E402
from e2ee.protocol.store import MAX_RECORD, NotFound, RecordStore  # noqa: E402

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_KEY = const(32)
_MAX_NAME = const(32)  # store.MAX_NAME
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-"
# Peer ids are device ids (docs/provisioning.md): 1..64 characters of A-Z a-z 0-9 . _ -, the
# certificate's device_id rule (certificate.MAX_NAME).
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
_MAX_ID = const(64)  # certificate.MAX_NAME
# §6 "Record names": ids that are not direct record names are stored under "_" + 30 hex digits
# of SHA-256(id) (120 bits: no second preimage), which no direct name can be (direct names never
# start with "_"); _PEERS maps those names back to the ids. _OLD_INDEX is the index of the names
# before finding 2 ("p" + hash, themselves valid device ids): SessionManager deletes the records
# it lists, then it (see _drop_old_aliases). It stays out of the direct names.
_PEERS = "_peers"
_OLD_INDEX = "peer-index"
_HASHED = "_"
# Session record: format byte, flags, the peer's identity (IK.pub || IS.pub), in version 2 the
# peer's certificate serial and not_after, the current state's X3DH facts per flag, in version 3
# the archive, then the current ratchet state (ratchet.py). The format byte 0x41 (no certificate)
# is still written for uncertified sessions and read everywhere. Version 3 keeps the format byte (0x41 or 0x42: whether the
# session is certified) and sets flag _ARCHIVE; its archive section starts with ARCHIVE_FORMAT.
# Readers of versions 1 and 2 refuse the unknown flag (BadRecord) instead of misreading it.
# Version 4 (flag _PEER, always written now) ends the record with the peer's device id and its
# length byte: every load checks it against the id asked for (finding 2).
RECORD_FORMAT = const(0x41)  # record kind 4, version 1: uncertified
RECORD_FORMAT_CERTIFIED = const(0x42)  # record kind 4, version 2: + serial (16) || be64(not_after)
ARCHIVE_FORMAT = const(0x43)  # record kind 4, version 3: the archive section (flag _ARCHIVE)
# §6 "Session records": earlier states kept per peer besides the current one (libsignal keeps 40).
# One event (both peers starting at once, or one starting over) leaves two live sessions, which
# one archived state covers; the second covers two such events that overlap (both peers starting
# over at once, as devices on one schedule do, or a restart during a race). Each one costs a
# ratchet state in the record (350-530 bytes, more with skipped keys), rewritten with every
# message, and a trial decryption (up to 3 X25519) for every message no state reads.
MAX_ARCHIVED_STATES = const(2)
_SERIAL = const(16)
_CERTIFIED_SIZE = const(24)
_PENDING = const(1)  # initiator not yet answered: keep sending PreKeyMessages (X3DH §3.3)
_RESPONDER = const(2)  # session began from the initiator's base key stored after the flags
_ARCHIVE = const(4)  # version 3: the archive section follows the current state's facts
_PEER = const(8)  # version 4: peer id || u8 len(peer id) end the record
_PENDING_SIZE = const(40)  # base_key (32) || be32(spk_id) || be32(opk_id)
_ARCHIVE_HEADER = const(2)  # ARCHIVE_FORMAT || u8 count
_ENTRY_HEADER = const(3)  # archived state: flags || be16 length of its ratchet state
_KEYSTORE_RECORD = "keystore"


class SessionError(ValueError):
    pass


# A peer id that is no device id (empty, too long, another character, not a str): a sender name
# from the wire that no session can have.
class BadPeerId(SessionError):
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


# A stored session record that holds another peer's sessions than the one asked for (finding 2).
class WrongRecord(BadRecord):
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


# Every error decrypt() raises for a message it cannot use (finding 6): the envelope's
# DecodeError, the ratchet's RatchetError, X3DH's KeyAgreementError, a certificate's
# CertificateError and the SessionError family. A receiver acknowledges, counts and drops such a
# message (it would fail the same way every time); anything else (store.StoreError, OSError,
# MemoryError) is the receiver's own trouble.
MESSAGE_ERRORS = (envelope.DecodeError, ratchet.RatchetError, KeyAgreementError,
                  certificate.CertificateError, SessionError)


# One session state of a peer: the ratchet and the X3DH facts it still needs. `ratchet` is a
# ratchet.Session, or, for an archived state not used since the record was read, its serialized
# bytes (a copy: the record's buffer can go), parsed only when a message is tried against it.
class _State:
    def __init__(self, ratchet_state, pending=None, base_key=None):
        self.ratchet = ratchet_state
        self.pending = pending  # (base_key, spk_id, opk_id) while the initiator awaits a reply
        self.base_key = base_key  # responder: the initiator's base key this state came from

    def flags(self):
        return (_PENDING if self.pending else 0) | (_RESPONDER if self.base_key else 0)

    # The ratchet.Session, parsed on first use.
    def session(self, rng):
        if not isinstance(self.ratchet, ratchet.Session):
            try:
                self.ratchet = ratchet.from_bytes(self.ratchet, rng)
            except ratchet.StateDecodeError as e:
                raise BadRecord("session record: %s" % e)
        return self.ratchet

    def facts_size(self):
        return (_PENDING_SIZE if self.pending else 0) + (_KEY if self.base_key else 0)

    def ratchet_size(self):
        if isinstance(self.ratchet, ratchet.Session):
            return self.ratchet.serialized_size()
        return len(self.ratchet)

    # [pending] || [base key] at `pos` of `out`; returns where they end.
    def write_facts(self, out, pos):
        if self.pending:
            out[pos : pos + _KEY] = self.pending[0]
            struct.pack_into(">II", out, pos + _KEY, self.pending[1], self.pending[2])
            pos += _PENDING_SIZE
        if self.base_key:
            out[pos : pos + _KEY] = self.base_key
            pos += _KEY
        return pos

    # The ratchet state at `pos` of `out` (no copy of a parsed one); returns where it ends.
    def write_ratchet(self, out, pos):
        end = pos + self.ratchet_size()
        if isinstance(self.ratchet, ratchet.Session):
            self.ratchet.to_bytes_into(memoryview(out)[pos:end])
        else:
            out[pos:end] = self.ratchet
        return end


# The X3DH facts `flags` announce at `pos` of `data`: (pending, base_key, end).
def _read_facts(data, pos, flags):
    pending = base_key = None
    if flags & _PENDING:
        spk_id, opk_id = struct.unpack_from(">II", data, pos + _KEY)
        pending = (bytes(data[pos : pos + _KEY]), spk_id, opk_id)
        pos += _PENDING_SIZE
    if flags & _RESPONDER:
        base_key = bytes(data[pos : pos + _KEY])
        pos += _KEY
    if pos > len(data):
        raise BadRecord("session record is truncated")
    return pending, base_key, pos


# Version 3's archive section at `pos` of `data` (a memoryview): appends its states to `states`,
# returns where it ends.
def _read_archive(data, pos, states):
    fmt, count = data[pos : pos + _ARCHIVE_HEADER] if pos + _ARCHIVE_HEADER <= len(data) else (0, 0)
    if fmt != ARCHIVE_FORMAT or not 0 < count <= MAX_ARCHIVED_STATES:
        raise BadRecord("session record has a malformed archive")
    pos += _ARCHIVE_HEADER
    for _ in range(count):
        flags, size = struct.unpack_from(">BH", data, pos) if pos + _ENTRY_HEADER <= len(data) else (0xFF, 0)
        if flags & ~(_PENDING | _RESPONDER):
            raise BadRecord("session record has a malformed archive")
        pending, base_key, pos = _read_facts(data, pos + _ENTRY_HEADER, flags)
        if pos + size > len(data):
            raise BadRecord("session record is truncated")
        states.append(_State(bytes(data[pos : pos + size]), pending, base_key))
        pos += size
    return pos


# The stored form of one peer's sessions (Signal's SessionRecord): the peer's identity and
# certificate, and its states: the current one first, then up to MAX_ARCHIVED_STATES earlier
# ones, the most recently archived first.
class _Record:
    def __init__(self, peer_ik, peer_is, states, serial=None, not_after=0, peer_id=None):
        self.peer_id = peer_id  # the peer's device id (str); None in records of versions 1-3
        self.peer_ik = peer_ik
        self.peer_is = peer_is
        self.states = states  # _States; states[0] is current: every encrypt() uses it
        self.serial = serial  # the peer's certificate serial (16 bytes), None if uncertified
        self.not_after = not_after  # and its end of validity (Unix seconds)

    # `state` becomes current, the current one is archived; the oldest beyond the bound go.
    def push(self, state):
        self.states.insert(0, state)
        del self.states[1 + MAX_ARCHIVED_STATES:]

    # After states[i] decrypted a message: an archived state becomes current, unless the
    # current state is one this side started and the peer has not answered yet. That one keeps
    # sending PreKeyMessages, which build its match on the other side; the older state may be
    # one the peer no longer holds (the reason to start over).
    def used(self, i):
        if i and not self.states[0].pending:
            self.push(self.states.pop(i))

    # Index of the state answered from the initiator's `base_key`, or None.
    def find_base_key(self, base_key):
        for i in range(len(self.states)):
            if self.states[i].base_key == base_key:
                return i
        return None

    def _archive_size(self):
        if len(self.states) < 2:
            return 0
        return _ARCHIVE_HEADER + sum([_ENTRY_HEADER + s.facts_size() + s.ratchet_size()
                                      for s in self.states[1:]])

    # The record's length, after dropping the archived states that would not fit MAX_RECORD
    # beside the current one, the oldest first (the current state always fits).
    def fit(self):
        states = self.states
        current = states[0]
        certified = _CERTIFIED_SIZE if self.serial else 0
        size = (2 + 2 * _KEY + certified + current.facts_size() + current.ratchet_size()
                + 1 + len(self.peer_id))
        while len(states) > 1 and size + self._archive_size() > MAX_RECORD:
            del states[-1]
        return size + self._archive_size()

    # The record's bytes (a new buffer of fit() bytes).
    def to_bytes(self):
        out = bytearray(self.fit())
        self.write_into(out)
        return out

    # Writes the record into `out` (a buffer of exactly fit() bytes, e.g. the record store's
    # buffer: see SessionManager._save), once fit() has run and peer_id is set.
    def write_into(self, out):
        states = self.states
        current = states[0]
        certified = _CERTIFIED_SIZE if self.serial else 0
        out[0] = RECORD_FORMAT_CERTIFIED if certified else RECORD_FORMAT
        out[1] = current.flags() | (_ARCHIVE if len(states) > 1 else 0) | _PEER
        out[2:34] = self.peer_ik
        out[34:66] = self.peer_is
        pos = 66
        if certified:
            out[pos : pos + _SERIAL] = self.serial
            struct.pack_into(">Q", out, pos + _SERIAL, self.not_after)
            pos += _CERTIFIED_SIZE
        pos = current.write_facts(out, pos)
        if len(states) > 1:
            out[pos] = ARCHIVE_FORMAT
            out[pos + 1] = len(states) - 1
            pos += _ARCHIVE_HEADER
            for state in states[1:]:
                struct.pack_into(">BH", out, pos, state.flags(), state.ratchet_size())
                pos = state.write_ratchet(out, state.write_facts(out, pos + _ENTRY_HEADER))
        pos = current.write_ratchet(out, pos)
        peer_id = self.peer_id.encode()
        out[pos : pos + len(peer_id)] = peer_id
        out[pos + len(peer_id)] = len(peer_id)

    # Reads versions 1 to 4. Archived ratchet states stay serialized until used.
    @classmethod
    def from_bytes(cls, data, rng=None):
        fmt = data[0] if len(data) else 0
        certified = _CERTIFIED_SIZE if fmt == RECORD_FORMAT_CERTIFIED else 0
        if (len(data) < 66 + certified or (fmt != RECORD_FORMAT and not certified)
                or data[1] & ~(_PENDING | _RESPONDER | _ARCHIVE | _PEER)):
            raise BadRecord("session record has an unknown format or flags")
        flags = data[1]
        data = memoryview(data)
        peer_id = None
        if flags & _PEER:  # version 4: the record ends with peer id || u8 its length
            size = data[-1]
            end = len(data) - 1 - size
            if not 0 < size <= _MAX_ID or end < 66 + certified:
                raise BadRecord("session record has a malformed peer id")
            peer_id = bytes(data[end:-1])
            for b in peer_id:
                if chr(b) not in _ID_CHARS:
                    raise BadRecord("session record has a malformed peer id")
            peer_id = peer_id.decode()
            data = data[:end]
        pos = 66
        serial = None
        not_after = 0
        if certified:
            serial = bytes(data[pos:pos + _SERIAL])
            not_after = struct.unpack_from(">Q", data, pos + _SERIAL)[0]
            pos += _CERTIFIED_SIZE
        pending, base_key, pos = _read_facts(data, pos, flags)
        states = [None]
        if flags & _ARCHIVE:
            pos = _read_archive(data, pos, states)
        states[0] = _State(data[pos:], pending, base_key)
        states[0].session(rng)
        return cls(bytes(data[2:34]), bytes(data[34:66]), states, serial, not_after, peer_id)


class SessionManager:
    # directory: where the device keeps its records (flash or disk); storage_key: the 32-byte
    # device storage key (boards/ says where each board keeps it); rng: n -> bytes for tests;
    # trust: a trust.TrustStore to certify every session with (§6, "Certified sessions"), or None.
    # A trust store whose own certificate is for other identity keys raises trust.WrongPeer.
    def __init__(self, directory, storage_key, keystore, rng=None, trust=None):
        self._rng = rng
        self._keys = RecordStore(directory + "/keys", "keys", storage_key)
        self._sessions = RecordStore(directory + "/sessions", "sessions", storage_key)
        if _OLD_INDEX in self._sessions.names():
            self._drop_old_aliases()
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

    # §6 "Record names": a device id that is a record name (store.py: a-z 0-9 _ -, at most 32)
    # and does not start with "_" names its record directly; any other id (capitals, ".", longer,
    # a leading "_") is stored under "_" + 30 hex digits of SHA-256(id), a name no direct id can
    # take (finding 2: the "p" + hash names before were enrollable ids). The record holds the id
    # too, and every load checks it (_find).
    def _name(self, peer):
        return record_name(peer)

    def _index(self):
        try:
            return json.loads(self._sessions.get(_PEERS))
        except NotFound:
            return {}

    # Records under the names of before finding 2: a "p" + hash record cannot be told from one a
    # device enrolled under that name wrote (both are valid ids, and a takeover wrote such records
    # under the other id), so none is migrated: the records the old index lists are deleted, then
    # the index (a power cut in between repeats this at the next open). Those peers start new
    # sessions (NoSession until then). Records at direct names carry no alias: every alias record
    # was listed in the old index before it was written.
    def _drop_old_aliases(self):
        for name in json.loads(self._sessions.get(_OLD_INDEX)):
            try:
                self._sessions.delete(name)
            except NotFound:
                pass
        self._sessions.delete(_OLD_INDEX)

    # The peer ids of the stored sessions. A record at a hashed name without an index entry is
    # skipped (one of versions 1-3 that an id with a leading "_" wrote under its own name: such
    # an id is hashed now, and starts a new session).
    def peers(self):
        index = None
        out = []
        for name in self._sessions.names():
            if name == _PEERS:
                continue
            if name[0] == _HASHED:
                index = self._index() if index is None else index
                name = index.get(name)
                if name is None:
                    continue
            out.append(name)
        return sorted(out)

    # True when a record of `peer` is stored (without reading it: a hashed name counts when the
    # index names `peer` for it, which a record of versions 1-3 left there never has).
    def has_session(self, peer):
        name = self._name(peer)
        return name in self._sessions.names() and (name == peer or self._index().get(name) == peer)

    # The peer's identity (IK.pub, IS.pub) as bound to this session.
    def peer_identity(self, peer):
        record = self._load(peer)
        return record.peer_ik, record.peer_is

    # The peer's certificate serial and not_after recorded in this session, or None (uncertified).
    def peer_certificate(self, peer):
        record = self._load(peer)
        return None if record.serial is None else (record.serial, record.not_after)

    # The current state's own ratchet public key (the `dh` of the messages it sends), or None
    # when there is no session: what a session reset request must name (§8).
    def sending_key(self, peer):
        record = self._find(peer)
        return None if record is None else record.states[0].session(self._rng).ratchet_public

    # The stored bytes of a peer's session record (encrypted file contents are not exposed).
    def session_bytes(self, peer):
        return bytes(self._sessions.get(self._name(peer)))

    def _load(self, peer):
        record = self._find(peer)
        if record is None:
            raise NoSession("no session with %s" % peer)
        return record

    # The peer's record, or None. It is parsed straight from the store's record buffer (no copy
    # of the whole record). A record of version 4 must hold `peer` (else WrongRecord); one of
    # versions 1-3 holds no id and counts only at a direct name (written by that id: see
    # _drop_old_aliases); at a hashed name it is not this peer's and counts as none.
    def _find(self, peer):
        name = self._name(peer)
        try:
            record = self._sessions.get_with(name, self._parse)
        except NotFound:
            return None
        if record.peer_id is None:
            return record if name == peer else None
        if record.peer_id != peer:
            raise WrongRecord("session record for %s holds another peer's sessions" % peer)
        return record

    def _parse(self, data):
        return _Record.from_bytes(data, self._rng)

    def _save(self, peer, record):
        name = self._name(peer)
        if name != peer:
            index = self._index()
            if index.get(name) != peer:
                index[name] = peer
                self._sessions.put(_PEERS, json.dumps(index).encode())
        record.peer_id = peer
        # Serialized straight into the store's record buffer and encrypted there: saving a
        # MAX_RECORD record needs no record-sized allocation.
        self._sessions.put_with(name, record.fit(), record.write_into)

    # With a TrustStore: the peer's certificate for this identity (ik, is), verified (trust.py);
    # returns (serial, not_after). Without one: (None, 0), the certificate not looked at.
    def _certify(self, peer, data, now, ik, is_):
        if self.trust is None:
            return None, 0
        cert = self.trust.verify_peer(peer, data, now, (ik, is_))
        return cert.serial, cert.not_after

    # With a TrustStore: refuses an established session whose peer is uncertified, revoked on the
    # current list, or expired (by now, or by the list's signing time). Changes nothing.
    # The record's peer id is the device id its certificate was verified for (trust.verify_peer),
    # so comparing it with `peer` compares the certificate's device id (finding 2).
    def _check_peer(self, peer, record, now):
        if record.peer_id is not None and record.peer_id != peer:
            raise WrongRecord("session record for %s holds another peer's sessions" % peer)
        trust = self.trust
        if trust is None:
            return
        if record.serial is None:
            raise UncertifiedSession("session with %s has no certificate: start a certified one" % peer)
        if trust.is_revoked(record.serial):
            raise PeerRevoked("certificate of %s is revoked (list version %d)" % (peer, trust.version))
        if trust.expired_by_list(record.not_after) or (now is not None and now >= record.not_after):
            raise PeerExpired("certificate of %s expired at %d" % (peer, record.not_after))

    # X3DH as initiator (§2) from the peer's bundle; the new session becomes current, an earlier
    # one with that peer is archived (its late messages still decrypt).
    # With a TrustStore, peer_certificate (the peer's SignedCertificate) must be valid for device
    # id `peer` and the bundle's identity keys (now: Unix seconds, or None without a clock);
    # without one, passing a certificate raises SessionError (it could not be checked).
    def start(self, peer, bundle, peer_certificate=None, now=None):
        if self.trust is None and peer_certificate is not None:
            raise SessionError("no TrustStore to verify the certificate of %s with" % peer)
        serial, not_after = self._certify(peer, peer_certificate, now, bundle.ik_pub, bundle.is_pub)
        record = self._find(peer)
        if record is not None and (record.peer_ik, record.peer_is) != (bundle.ik_pub, bundle.is_pub):
            raise UntrustedIdentity("bundle of %s carries another identity than its session" % peer)
        sk, ad, base_key, spk_id, opk_id = x3dh.initiate(self.keystore, bundle, rng=self._rng)
        state = _State(ratchet.init_initiator(sk, bundle.spk_pub, ad, self._rng),
                       (base_key, spk_id, opk_id or 0))
        self._save(peer, self._with_new_state(record, bundle.ik_pub, bundle.is_pub, state, serial, not_after))

    # `record` with `state` as its new current state (a new record if None), certified by
    # (serial, not_after).
    def _with_new_state(self, record, ik, is_, state, serial, not_after):
        if record is None:
            return _Record(ik, is_, [state], serial, not_after)
        record.push(state)
        record.serial, record.not_after = serial, not_after
        return record

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
        state = record.states[0]
        own = b""
        if state.pending and self.trust is not None:
            own = self.trust.own_certificate()
        dh, pn, n, ciphertext = state.ratchet.encrypt(plaintext)
        message = envelope.RatchetMessage(dh, pn, n, ciphertext)
        if state.pending:
            base_key, spk_id, opk_id = state.pending
            message = envelope.PreKeyMessage(self.keystore.ik_pub, self.keystore.is_pub, base_key,
                                             spk_id, opk_id, message, own)
        out = envelope.encode(message)
        self._save(peer, record)
        return out

    # Decrypts an envelope from peer; returns the plaintext. Any failure the message causes raises
    # one of MESSAGE_ERRORS (envelope DecodeError, ratchet RatchetError, X3DH KeyAgreementError,
    # SessionError, BadPeerId for a sender name that is no device id, and with a TrustStore
    # certificate.CertificateError) and leaves every stored record as it was. A
    # RatchetMessage is tried against the current state, then the archived ones (newest first):
    # a DuplicateMessage from any of them is raised at once (the message was received: this is
    # what keeps at-least-once delivery exactly-once), and when all fail the current state's
    # error is raised.
    def decrypt(self, peer, data, now=None):
        _check_peer_id(peer)
        message = envelope.decode(data)
        if isinstance(message, envelope.PreKeyMessage):
            return self._decrypt_prekey(peer, message, now)
        if not isinstance(message, envelope.RatchetMessage):
            raise SessionError("control messages are not for the session cipher")
        record = self._load(peer)
        self._check_peer(peer, record, now)
        error = None
        for i in range(len(record.states)):
            state = record.states[i]
            try:
                plaintext = self._decrypt_in(state, message)
            except ratchet.DuplicateMessage:
                raise
            except ratchet.RatchetError as e:
                error = error or e
                continue
            state.pending = None  # the peer answered: it holds the session (X3DH §3.3)
            record.used(i)
            self._save(peer, record)
            return plaintext
        raise error

    # One RatchetMessage against one state; the state changes only if it decrypts.
    def _decrypt_in(self, state, message):
        return state.session(self._rng).decrypt(message.dh, message.pn, message.n, message.ciphertext)

    # X3DH as responder (§2), or a repeated PreKeyMessage of a session it already answered: the
    # state answered from that base key, current or archived, decrypts it (X3DH does not run
    # again). A new session becomes current and archives the current one. With a TrustStore the
    # sender certificate must be valid for `peer` and the message's identity keys before any key
    # agreement; without one it is not looked at.
    def _decrypt_prekey(self, peer, message, now):
        identity = (bytes(message.identity_dh), bytes(message.identity_sign))
        serial, not_after = self._certify(peer, message.sender_certificate, now, identity[0], identity[1])
        record = self._find(peer)
        i = None
        if record is not None:
            if (record.peer_ik, record.peer_is) != identity:
                raise UntrustedIdentity("prekey message for %s carries another identity" % peer)
            i = record.find_base_key(bytes(message.base_key))
        delete_opk = None
        if i is None:
            sk, ad, delete_opk = x3dh.respond(self.keystore, identity[0], identity[1], message.base_key,
                                              message.signed_prekey_id, message.one_time_prekey_id)
            pair = self.keystore.signed_prekey_pair(message.signed_prekey_id)
            state = _State(ratchet.init_responder(sk, pair, ad, self._rng), None, bytes(message.base_key))
        else:
            self._check_peer(peer, record, now)
            state = record.states[i]
        plaintext = self._decrypt_in(state, message.message)
        if i is None:
            record = self._with_new_state(record, identity[0], identity[1], state, serial, not_after)
        else:
            record.used(i)
        self._save(peer, record)
        if delete_opk is not None and self.keystore.remove_one_time_prekey(delete_opk):
            self.save_keys()  # only now: a forged prekey message cannot burn a one-time prekey
        return plaintext


# §6 "Record names": the record name of a peer id (BadPeerId if it is no device id). Other
# per-peer stores (delivery.py) use the same names.
def record_name(peer):
    _check_peer_id(peer)
    if (len(peer) <= _MAX_NAME and peer[0] != _HASHED and peer != _OLD_INDEX
            and all(c in _NAME_CHARS for c in peer)):
        return peer
    return _HASHED + hexlify(hashlib.sha256(peer.encode()).digest()[:15]).decode()


# Raises BadPeerId unless `peer` is a device id: 1.._MAX_ID characters of _ID_CHARS.
def _check_peer_id(peer):
    if not isinstance(peer, str) or not 0 < len(peer) <= _MAX_ID:
        raise BadPeerId("peer id must be 1..%d characters" % _MAX_ID)
    for c in peer:
        if c not in _ID_CHARS:
            raise BadPeerId("peer id may hold only A-Z a-z 0-9 . _ -")
