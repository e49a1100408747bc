# What a device trusts about its fleet (docs/protocol.md §6, "Certified sessions"): the Fleet CA
# public keys (several during a rotation), its own SignedCertificate (sent to peers in
# PreKeyMessages) and the newest verified revocation list. Kept in an encrypted RecordStore
# (§5, kind "trust") under the same storage key as the sessions, so a reboot keeps all three and
# the list's version (rollback protection survives power cycles).
#
# RAM: the CA keys (32 bytes each), the own certificate (at most 768 bytes) and the list as its one
# sorted serial array (certificate.RevocationList, at most 8 KB). Peer certificates are verified and
# dropped; a session record keeps only the peer's serial and not_after (session.py).
#
# Records: "ca-keys" = 0x51 || keys (32 each, 1..MAX_CA_KEYS); "certificate" = 0x52 || the
# SignedCertificate; "crl" = 0x53 || slot (0/1) || u8 chunks || be16 length || be64 version, the
# commit record of the list, whose raw SignedRevocationList bytes (up to 9400, more than one
# record holds) sit in chunks "crl-<slot>-<i>" of up to _CHUNK bytes. An update writes the chunks
# of the other slot first and then replaces "crl": a power cut leaves the old list or the new one.
import struct

from e2ee.protocol import certificate
from e2ee.protocol.certificate import CertificateError, Expired
from e2ee.protocol.store import Corrupted, NotFound, RecordStore

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# CA keys trusted at once: the active key, the one before a rotation, and room for an overlap of
# fleets or a staged next key. More only slows every failed lookup and is no use in one fleet.
MAX_CA_KEYS = const(4)
_KEY = const(32)
_FMT_CA_KEYS = const(0x51)
_FMT_CERTIFICATE = const(0x52)
_FMT_CRL = const(0x53)
_CRL_HEAD = const(13)  # fmt, slot, chunks, be16 length, be64 version
# Chunk of the raw list per record: below store.MAX_RECORD (5120), so 9400 bytes take 3 records.
_CHUNK = const(4096)
_CA_KEYS = "ca-keys"
_CERTIFICATE = "certificate"
_CRL = "crl"


# A valid certificate for someone else: another device id than the peer it was presented for, or
# other identity keys than the bundle or PreKeyMessage it came with.
class WrongPeer(CertificateError):
    pass


# A certificate is required and absent: a PreKeyMessage without sender_certificate, start()
# without the peer's certificate, or a device without its own certificate sending a PreKeyMessage.
class MissingCertificate(CertificateError):
    pass


class TrustStore:
    # directory: the device's data directory (the trust records go to directory + "/trust");
    # storage_key: the 32-byte device storage key. Loads whatever was stored before.
    def __init__(self, directory, storage_key):
        self._store = RecordStore(directory + "/trust", "trust", storage_key)
        self._ca_keys = []
        self._certificate = None
        self._crl = None  # certificate.RevocationList
        self._slot = 1  # slot of the stored list; the first update writes slot 0
        names = self._store.names()
        if _CA_KEYS in names:
            self._ca_keys = _split_keys(self._get(_CA_KEYS, _FMT_CA_KEYS))
        if _CERTIFICATE in names:
            self._certificate = bytes(self._get(_CERTIFICATE, _FMT_CERTIFICATE))
        if _CRL in names:
            self._load_crl()

    def __repr__(self):
        return "<TrustStore ca_keys=%d certificate=%s revocation_list=%d>" % (
            len(self._ca_keys), "yes" if self._certificate else "no", self.version)

    # ---- CA keys -------------------------------------------------------------------------

    # The trusted Fleet CA public keys (a list of 32-byte keys).
    def ca_keys(self):
        return list(self._ca_keys)

    # Replaces the trusted CA keys (1..MAX_CA_KEYS distinct 32-byte Ed25519 public keys), e.g. the
    # set the service hands out at enrollment or after a rotation. Persisted before it returns.
    def set_ca_keys(self, keys):
        keys = [bytes(k) for k in keys]
        if not 1 <= len(keys) <= MAX_CA_KEYS:
            raise certificate.Malformed("%d CA keys, expected 1..%d" % (len(keys), MAX_CA_KEYS))
        for i in range(len(keys)):
            if len(keys[i]) != _KEY or keys[i] in keys[:i]:
                raise certificate.Malformed("CA key %d is not 32 bytes or repeated" % i)
        out = bytearray(1 + _KEY * len(keys))
        out[0] = _FMT_CA_KEYS
        for i in range(len(keys)):
            out[1 + _KEY * i:1 + _KEY * (i + 1)] = keys[i]
        self._store.put(_CA_KEYS, out)
        self._ca_keys = keys

    # ---- own certificate -------------------------------------------------------------------

    # The device's own SignedCertificate bytes, or None before set_certificate().
    @property
    def certificate(self):
        return self._certificate

    # The own certificate for a PreKeyMessage; MissingCertificate when there is none.
    def own_certificate(self):
        if self._certificate is None:
            raise MissingCertificate("this device has no certificate in its trust store")
        return self._certificate

    # Stores the device's own SignedCertificate after verifying it against the CA keys and the
    # current list (now: Unix seconds or None). identity: (IK.pub, IS.pub) it must certify, or
    # None. Returns the Certificate; raises a CertificateError and stores nothing on failure.
    def set_certificate(self, data, now=None, identity=None):
        cert = self._verify(data, now)
        if identity is not None:
            _check_identity(cert, identity[0], identity[1])
        out = bytearray(1 + len(data))
        out[0] = _FMT_CERTIFICATE
        out[1:] = data
        self._store.put(_CERTIFICATE, out)
        self._certificate = bytes(data)
        return cert

    # Raises WrongPeer unless the own certificate certifies these identity keys (a certificate
    # left from an earlier identity). Parses without a signature check: it was verified when set.
    def check_own_identity(self, ik_pub, is_pub):
        _check_identity(certificate.decode_certificate_unverified(self.own_certificate()), ik_pub, is_pub)

    # ---- revocation list ----------------------------------------------------------------

    # Version of the stored revocation list; 0 before the first one.
    @property
    def version(self):
        return 0 if self._crl is None else self._crl.version

    # Signing time of the stored list (Unix seconds); 0 before the first one.
    @property
    def issued_at(self):
        return 0 if self._crl is None else self._crl.issued_at

    # True when `serial` (16 bytes) is on the stored revocation list.
    def is_revoked(self, serial):
        return self._crl is not None and self._crl.is_revoked(serial)

    # True when a certificate with this not_after had expired when the stored list was signed:
    # lists drop expired certificates, so their absence from it says nothing any more.
    def expired_by_list(self, not_after):
        return self._crl is not None and self._crl.issued_at >= not_after

    # Verifies a SignedRevocationList with the CA keys, refuses one whose version is not above the
    # stored one (certificate.RolledBack), stores it atomically and returns its version. On any
    # error the stored list stays as it was.
    def update_revocation_list(self, data):
        crl = certificate.verify_revocation_list(data, self._ca_keys, self.version)
        slot = 1 - self._slot
        chunks = (len(data) + _CHUNK - 1) // _CHUNK
        mv = memoryview(data)
        for i in range(chunks):
            self._store.put(_chunk_name(slot, i), mv[i * _CHUNK:(i + 1) * _CHUNK])
        head = bytearray(_CRL_HEAD)
        struct.pack_into(">BBBHQ", head, 0, _FMT_CRL, slot, chunks, len(data), crl.version)
        self._store.put(_CRL, head)  # the commit: from here on the new list is the stored one
        self._crl = crl
        self._slot = slot
        self._drop_stale_chunks(slot, chunks)
        return crl.version

    # ---- peers ---------------------------------------------------------------------------

    # Verifies a peer's SignedCertificate: signed by a trusted CA key, not revoked, inside its
    # validity window when now (Unix seconds) is given, not expired by the list's signing time,
    # issued to device id `peer_id` and, when identity = (IK.pub, IS.pub) is given, for those keys.
    # Returns the Certificate (the caller keeps what it needs of it, not the object). Raises
    # MissingCertificate for empty data, WrongPeer, or the certificate module's errors.
    def verify_peer(self, peer_id, data, now=None, identity=None):
        if data is None or not len(data):
            raise MissingCertificate("no certificate presented for %s" % peer_id)
        cert = self._verify(data, now)
        if cert.device_id != peer_id:
            raise WrongPeer("certificate of %s presented for %s" % (cert.device_id, peer_id))
        if identity is not None:
            _check_identity(cert, identity[0], identity[1])
        return cert

    def _verify(self, data, now):
        cert = certificate.verify_certificate(data, self._ca_keys, now, self._crl)
        if self.expired_by_list(cert.not_after):
            raise Expired("certificate of %s expired at %d, before revocation list version %d" % (
                cert.device_id, cert.not_after, self.version))
        return cert

    # ---- storage -------------------------------------------------------------------------

    # A record's contents after its format byte; Corrupted if the byte is not `fmt`.
    def _get(self, name, fmt):
        data = self._store.get(name)
        if len(data) < 2 or data[0] != fmt:
            raise Corrupted("trust record %s has an unknown format" % name)
        return memoryview(data)[1:]

    # Reads the list the "crl" record names. It was verified before it was stored, and the store
    # authenticates every record with the storage key, so it is parsed without a second signature
    # check (which could fail after a CA key it was signed with is retired).
    def _load_crl(self):
        head = self._store.get(_CRL)
        if len(head) != _CRL_HEAD or head[0] != _FMT_CRL:
            raise Corrupted("trust record crl has an unknown format")
        _, slot, chunks, size, version = struct.unpack(">BBBHQ", head)
        data = bytearray(size)
        pos = 0
        try:
            for i in range(chunks):
                part = self._store.get(_chunk_name(slot, i))
                data[pos:pos + len(part)] = part
                pos += len(part)
                part = None
        except NotFound:
            raise Corrupted("trust record crl: chunk missing")
        if pos != size:
            raise Corrupted("trust record crl: %d bytes stored, %d expected" % (pos, size))
        crl = certificate.decode_revocation_list_unverified(data)
        if crl.version != version:
            raise Corrupted("trust record crl: version %d, expected %d" % (crl.version, version))
        self._crl = crl
        self._slot = slot

    # Removes chunks an earlier list or an interrupted update left behind.
    def _drop_stale_chunks(self, slot, chunks):
        keep = [_chunk_name(slot, i) for i in range(chunks)]
        for name in self._store.names():
            if name.startswith(_CRL + "-") and name not in keep:
                self._store.delete(name)


def _chunk_name(slot, i):
    return "%s-%d-%d" % (_CRL, slot, i)


def _split_keys(data):
    if not len(data) or len(data) % _KEY or len(data) > _KEY * MAX_CA_KEYS:
        raise Corrupted("trust record ca-keys has %d bytes" % len(data))
    return [bytes(data[i:i + _KEY]) for i in range(0, len(data), _KEY)]


def _check_identity(cert, ik_pub, is_pub):
    if cert.identity_dh != bytes(ik_pub) or cert.identity_sign != bytes(is_pub):
        raise WrongPeer("certificate of %s certifies other identity keys" % cert.device_id)
