# The Double Ratchet session of one peer (docs/protocol.md §3; Signal Double Ratchet spec §3,
# §3.5 for the X3DH start): the state, encrypt, decrypt with skipped message keys, and the
# compact serialized record the session store keeps (§5).
#
# Decryption runs on a copy of the state and commits only after the AEAD check passed, so a
# message that fails for any reason (tampered, replayed, too far ahead) leaves the session
# byte-for-byte unchanged. A message with a new ratchet key costs one X25519 before its AEAD
# check (the receiving chain); the new own key pair and sending chain, two more, follow only
# once it authenticated, so a forged message cannot make a board spend them. repr() shows
# counters only, never key bytes.
import struct

from e2ee import crypto
from e2ee.crypto.errors import InvalidLength, InvalidTag, WeakSharedSecret
from e2ee.protocol import chain_key, root_key
# §3 header H = DHs.pub || be32(PN) || be32(N); the envelope codec owns its layout (§4 rebuilds
# H from the decoded fields). header_bytes stays importable from here for callers and tests.
from e2ee.protocol.envelope import HEADER_SIZE, header_bytes, header_into  # noqa: F401
from e2ee.protocol.public_key import canonical_x25519

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# §3: most message keys skipped in one chain by one message. Bounds the work (one HMAC pair per
# key) an attacker-chosen N or PN can cost and the keys one message can add; vodozemac keeps 40,
# SKISSM 32, libsignal 2000. Thirty-two covers the reordering MQTT QoS 1 retries produce.
MAX_SKIP = const(32)
# §3: skipped message keys kept per session in total, oldest dropped first. 64 x 68-byte records
# (4.3 KB) is the largest share of a 120 KB heap we give one session; it holds two full skips.
MAX_STORED_SKIPPED = const(64)
# §3: the peer's previous ratchet keys remembered, so a replayed message of an old chain is
# refused as DuplicateMessage without a DH step (the X25519 call of a receiving chain, which an
# attacker could otherwise make us spend). libsignal and vodozemac keep 5 receiving chains.
MAX_PREVIOUS_CHAINS = const(5)
KEY_SIZE = const(32)  # X25519 keys, root, chain and message keys (§3)
MAX_AD_SIZE = const(255)  # serialized with a one-byte length; §2 AD is 128 bytes
_MAX_COUNTER = const(0xFFFFFFFF)  # §3: PN and N are uint32
# Serialized state: format byte 0x31 = session record kind 3, version 1 (the first byte of
# every serialized form names its kind and version, as in keys.py).
STATE_FORMAT = const(0x31)
_HAS_DHR = const(1)  # flag bits: which optional keys follow the fixed part
_HAS_CKS = const(2)
_HAS_CKR = const(4)
_FIXED_SIZE = const(113)  # fmt, flags, DHs pair, RK, be32 Ns/Nr/PN, AD/prev/skipped counts
_SKIPPED_SIZE = const(68)  # skipped record: ratchet key (32) || be32(N) || message key (32)
_SKIPPED_ID_SIZE = const(36)  # the (ratchet key, N) part of a skipped record
# Largest serialized state: every key present, longest AD, all previous keys and skipped
# records (4976 bytes; 4849 with the 128-byte AD of §2).
MAX_STATE_SIZE = const(113 + 3 * 32 + 255 + 5 * 32 + 64 * 68)

_BUFFER_TYPES = (bytes, bytearray, memoryview)

# Base of the errors a Double Ratchet operation raises (a protocol error, not a parse error).
class RatchetError(ValueError):
    pass


# The message key of (ratchet key, N) was already used, or dropped from the skipped store.
class DuplicateMessage(RatchetError):
    pass


# Decrypting would skip more than MAX_SKIP message keys in one chain.
class TooManySkipped(RatchetError):
    pass


# The ciphertext or its header failed the AEAD check (tampered, or a wrong key).
class DecryptionFailed(RatchetError):
    pass


# A header field of the wrong type, length or range, or a small-order ratchet key.
class InvalidHeader(RatchetError):
    pass


# encrypt() on a responder session that has not received a message yet (§3.5).
class NoSendingChain(RatchetError):
    pass


# A serialized state that is malformed: wrong length, counts over the limits, unknown flags.
class StateDecodeError(ValueError):
    pass


# A serialized state of another record kind or version.
class UnsupportedStateVersion(StateDecodeError):
    pass


def _check_key(what, value):
    if not isinstance(value, _BUFFER_TYPES) or len(value) != KEY_SIZE:
        raise InvalidLength("%s must be %d bytes" % (what, KEY_SIZE))


# A new ratchet key pair (private, public). rng(n) -> n random bytes; the OS CSPRNG by default,
# a fixed sequence in tests and vectors.
def generate_keypair(rng=None):
    private = bytes((rng or crypto.random_bytes)(KEY_SIZE))
    _check_key("ratchet private key from rng", private)
    return private, bytes(crypto.x25519_base(private))


# §3.5: the initiator (Alice) starts from the X3DH secret `sk` and Bob's signed prekey as his
# first ratchet key; she can send at once.
def init_initiator(sk, peer_ratchet_pub, ad, rng=None):
    _check_key("shared secret", sk)
    _check_key("peer ratchet key", peer_ratchet_pub)
    session = Session(ad, rng)
    session._dhs, session._dhs_pub = generate_keypair(rng)
    session._dhr = bytes(peer_ratchet_pub)
    dh_out = crypto.x25519(session._dhs, session._dhr)
    session._rk, session._cks = root_key.advance(sk, dh_out)
    return session


# §3.5: the responder (Bob) starts from `sk` and his signed prekey pair (private, public) as his
# first ratchet key pair; he sends only after the first message arrived.
def init_responder(sk, ratchet_keypair, ad, rng=None):
    _check_key("shared secret", sk)
    _check_key("ratchet private key", ratchet_keypair[0])
    _check_key("ratchet public key", ratchet_keypair[1])
    session = Session(ad, rng)
    session._dhs, session._dhs_pub = bytes(ratchet_keypair[0]), bytes(ratchet_keypair[1])
    session._rk = bytes(sk)
    return session


# One Double Ratchet session (Signal spec §3.2 state variables). Build it with init_initiator,
# init_responder or from_bytes.
class Session:
    def __init__(self, ad, rng=None):
        if not isinstance(ad, _BUFFER_TYPES) or len(ad) > MAX_AD_SIZE:
            raise InvalidLength("associated data must be bytes of at most %d" % MAX_AD_SIZE)
        self._ad = bytes(ad)
        self._rng = rng
        self._dhs = None  # own ratchet private key
        self._dhs_pub = None
        self._dhr = None  # peer's current ratchet key
        self._rk = None
        self._cks = None  # sending chain key
        self._ckr = None  # receiving chain key
        self._ns = 0
        self._nr = 0
        self._pn = 0
        self._previous = []  # peer's earlier ratchet keys, oldest first
        self._skipped = []  # skipped records, oldest first

    def __repr__(self):
        return "<ratchet.Session ns=%d nr=%d pn=%d skipped=%d>" % (
            self._ns, self._nr, self._pn, len(self._skipped))

    # Number of skipped message keys held.
    @property
    def skipped_count(self):
        return len(self._skipped)

    # Own current ratchet public key (the `dh` of the next header sent).
    @property
    def ratchet_public(self):
        return self._dhs_pub

    # Encrypts one message (§3). Returns the header fields and ciphertext:
    # (dh, pn, n, ciphertext || tag). Raises NoSendingChain on a responder before it received.
    def encrypt(self, plaintext):
        if self._cks is None:
            raise NoSendingChain("responder session has not received a message yet")
        n = self._ns
        if n > _MAX_COUNTER:
            raise RatchetError("sending chain exhausted at %d messages" % n)
        cks, mk = chain_key.advance(self._cks)
        key, nonce = chain_key.expand(mk)
        ciphertext = crypto.aead_encrypt(key, nonce, plaintext, self._ad_with(self._dhs_pub, self._pn, n))
        self._cks = cks
        self._ns = n + 1
        return self._dhs_pub, self._pn, n, ciphertext

    # Decrypts one message (§3, Signal spec §3.5 RatchetDecrypt). Returns the plaintext.
    # Raises InvalidHeader, DuplicateMessage, TooManySkipped or DecryptionFailed, and then the
    # session is unchanged.
    def decrypt(self, dh, pn, n, ciphertext):
        _check_header(dh, pn, n)
        dh = bytes(dh)
        record_id = dh + n.to_bytes(4, "big")
        i = self._find_skipped(record_id)
        if i >= 0:
            plaintext = self._open(self._skipped[i][_SKIPPED_ID_SIZE:], dh, pn, n, ciphertext)
            del self._skipped[i]
            return plaintext
        if dh == self._dhr:
            if self._ckr is None:  # §3: the initiator's DHr is SPK_B, which no message carries
                raise InvalidHeader("header carries the peer's first ratchet key: no receiving chain yet")
            if n < self._nr:
                raise DuplicateMessage("message %d of the current chain was already received" % n)
        elif dh in self._previous:
            raise DuplicateMessage("message %d of an earlier chain is used or dropped" % n)
        elif dh == self._dhs_pub:
            raise InvalidHeader("header carries this session's own ratchet key")
        state = self._copy()
        new_chain = dh != state._dhr
        if new_chain:
            state._skip(pn)
            state._receiving_chain(dh)
        state._skip(n)
        ckr, mk = chain_key.advance(state._ckr)
        plaintext = self._open(mk, dh, pn, n, ciphertext)
        # Authenticated: only now the rest of the DH ratchet step (a new key pair, two X25519).
        if new_chain:
            state._sending_chain(dh)
        state._ckr = ckr
        state._nr = n + 1
        self._assign(state)
        return plaintext

    # AD || H, the associated data of one message's AEAD (§3).
    def _ad_with(self, dh, pn, n):
        ad = bytearray(len(self._ad) + HEADER_SIZE)
        ad[: len(self._ad)] = self._ad
        header_into(ad, len(self._ad), dh, pn, n)
        return ad

    def _open(self, mk, dh, pn, n, ciphertext):
        key, nonce = chain_key.expand(mk)
        try:
            return crypto.aead_decrypt(key, nonce, ciphertext, self._ad_with(dh, pn, n))
        except InvalidTag:
            raise DecryptionFailed("message %d failed authentication" % n)

    # Index of the skipped record of (ratchet key, N), or -1.
    def _find_skipped(self, record_id):
        for i in range(len(self._skipped)):
            if self._skipped[i].startswith(record_id):
                return i
        return -1

    # Signal spec SkipMessageKeys: stores the receiving chain's keys below `until`.
    def _skip(self, until):
        if until - self._nr > MAX_SKIP:
            raise TooManySkipped("message %d would skip %d keys, limit %d" % (
                until, until - self._nr, MAX_SKIP))
        if self._ckr is None:
            return
        while self._nr < until:
            self._ckr, mk = chain_key.advance(self._ckr)
            if len(self._skipped) >= MAX_STORED_SKIPPED:
                del self._skipped[0]
            self._skipped.append(self._dhr + self._nr.to_bytes(4, "big") + mk)
            self._nr += 1

    # Signal spec DHRatchet, first half: a new receiving chain from the peer's key `dh`
    # (one X25519). decrypt() runs it before the AEAD check, as the message key needs it.
    def _receiving_chain(self, dh):
        if self._dhr is not None:
            if len(self._previous) >= MAX_PREVIOUS_CHAINS:
                del self._previous[0]
            self._previous.append(self._dhr)
        self._pn = self._ns
        self._ns = 0
        self._nr = 0
        self._dhr = dh
        self._rk, self._ckr = root_key.advance(self._rk, self._dh(dh))

    # Signal spec DHRatchet, second half: a new own key pair and sending chain (X25519 base
    # and X25519). decrypt() runs it only after the AEAD check passed. The state is the one the
    # spec's order gives: skipping and the message key read only the receiving chain, which
    # this half leaves alone, and the rng is called once per new chain either way.
    def _sending_chain(self, dh):
        self._dhs, self._dhs_pub = generate_keypair(self._rng)
        self._rk, self._cks = root_key.advance(self._rk, self._dh(dh))

    def _dh(self, dh):
        try:
            return crypto.x25519(self._dhs, dh)
        except WeakSharedSecret:
            raise InvalidHeader("ratchet key in the header has small order")

    def _copy(self):
        other = Session(self._ad, self._rng)
        other._assign(self)
        other._previous = list(self._previous)
        other._skipped = list(self._skipped)
        return other

    # Takes over every field of `other` (the commit of a decrypt).
    def _assign(self, other):
        self._dhs = other._dhs
        self._dhs_pub = other._dhs_pub
        self._dhr = other._dhr
        self._rk = other._rk
        self._cks = other._cks
        self._ckr = other._ckr
        self._ns = other._ns
        self._nr = other._nr
        self._pn = other._pn
        self._previous = other._previous
        self._skipped = other._skipped

    # Length of this session's serialized record (at most MAX_STATE_SIZE).
    def serialized_size(self):
        return (_FIXED_SIZE + KEY_SIZE * (len(self._previous) + (self._dhr is not None)
                + (self._cks is not None) + (self._ckr is not None))
                + len(self._ad) + _SKIPPED_SIZE * len(self._skipped))

    # The compact record of this session (§5 stores it encrypted). Layout, integers big-endian:
    # fmt 0x31, flags (1 DHr, 2 CKs, 4 CKr), DHs private, DHs public, RK, Ns, Nr, PN (be32),
    # len(AD), count of previous keys, count of skipped records (u8 each), then the present
    # keys of DHr, CKs, CKr, AD, previous keys (32 each), skipped records (68 each).
    def to_bytes(self):
        out = bytearray(self.serialized_size())
        self.to_bytes_into(out)
        return bytes(out)

    # Writes the record into `out` (a buffer of at least serialized_size() bytes, e.g. one
    # MAX_STATE_SIZE buffer allocated at boot, so saving a session needs no large allocation).
    # Returns the record length.
    def to_bytes_into(self, out):
        size = self.serialized_size()
        if len(out) < size:
            raise InvalidLength("ratchet state needs a %d-byte buffer" % size)
        optional = (self._dhr, self._cks, self._ckr)
        flags = 0
        for bit in range(3):
            if optional[bit] is not None:
                flags |= 1 << bit
        struct.pack_into(">BB", out, 0, STATE_FORMAT, flags)
        out[2:34] = self._dhs
        out[34:66] = self._dhs_pub
        out[66:98] = self._rk
        struct.pack_into(">IIIBBB", out, 98, self._ns, self._nr, self._pn, len(self._ad),
                         len(self._previous), len(self._skipped))
        at = _FIXED_SIZE
        for part in optional:
            if part is not None:
                at = _put(out, at, part)
        at = _put(out, at, self._ad)
        for part in self._previous:
            at = _put(out, at, part)
        for part in self._skipped:
            at = _put(out, at, part)
        return size


def _put(out, at, part):
    end = at + len(part)
    out[at:end] = part
    return end


def _check_header(dh, pn, n):
    if not isinstance(dh, _BUFFER_TYPES) or len(dh) != KEY_SIZE:
        raise InvalidHeader("ratchet key in the header must be %d bytes" % KEY_SIZE)
    if not canonical_x25519(dh):  # finding 7: one key, one encoding (envelope.py)
        raise InvalidHeader("ratchet key in the header is not a canonical encoding")
    for value in (pn, n):
        if not isinstance(value, int) or not 0 <= value <= _MAX_COUNTER:
            raise InvalidHeader("PN and N must be uint32")


# The session serialized by Session.to_bytes(); rng as for init_*. Raises StateDecodeError
# (UnsupportedStateVersion for another format byte) on malformed input.
def from_bytes(data, rng=None):
    if not isinstance(data, _BUFFER_TYPES):
        raise StateDecodeError("ratchet state must be bytes")
    data = memoryview(data)
    if len(data) < _FIXED_SIZE:
        raise StateDecodeError("ratchet state of %d bytes is shorter than %d" % (len(data), _FIXED_SIZE))
    fmt, flags = data[0], data[1]
    if fmt != STATE_FORMAT:
        raise UnsupportedStateVersion("ratchet state format 0x%02x, expected 0x%02x" % (fmt, STATE_FORMAT))
    if flags & ~(_HAS_DHR | _HAS_CKS | _HAS_CKR) or (flags & _HAS_CKS and not flags & _HAS_DHR):
        raise StateDecodeError("ratchet state flags 0x%02x are invalid" % flags)
    ns, nr, pn, ad_len, n_previous, n_skipped = struct.unpack_from(">IIIBBB", data, 98)
    if n_previous > MAX_PREVIOUS_CHAINS or n_skipped > MAX_STORED_SKIPPED:
        raise StateDecodeError("ratchet state holds %d previous keys and %d skipped keys, limits %d, %d" % (
            n_previous, n_skipped, MAX_PREVIOUS_CHAINS, MAX_STORED_SKIPPED))
    size = (_FIXED_SIZE + KEY_SIZE * ((flags & 1) + (flags >> 1 & 1) + (flags >> 2) + n_previous)
            + ad_len + _SKIPPED_SIZE * n_skipped)
    if len(data) != size:
        raise StateDecodeError("ratchet state is %d bytes, its counts say %d" % (len(data), size))
    session = Session(b"", rng)
    session._dhs, session._dhs_pub, session._rk = bytes(data[2:34]), bytes(data[34:66]), bytes(data[66:98])
    session._ns, session._nr, session._pn = ns, nr, pn
    at = _FIXED_SIZE
    optional = []
    for bit in (_HAS_DHR, _HAS_CKS, _HAS_CKR):
        if flags & bit:
            optional.append(bytes(data[at : at + KEY_SIZE]))
            at += KEY_SIZE
        else:
            optional.append(None)
    session._dhr, session._cks, session._ckr = optional
    session._ad = bytes(data[at : at + ad_len])
    at += ad_len
    for _ in range(n_previous):
        session._previous.append(bytes(data[at : at + KEY_SIZE]))
        at += KEY_SIZE
    for _ in range(n_skipped):
        session._skipped.append(bytes(data[at : at + _SKIPPED_SIZE]))
        at += _SKIPPED_SIZE
    return session
