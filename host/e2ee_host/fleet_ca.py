"""The Fleet CA: the signing keys of a fleet's trust anchor, device certificates and revocation lists.

Formats and rules: docs/provisioning.md, "Certificates and revocation lists"
(``proto/e2ee/v1/certificate.proto``). Certificates and lists are written with the protobuf runtime
(generated code ``e2ee_host/proto/e2ee/v1/certificate_pb2.py``, checked in and compared byte for
byte with protoc's output by tests/provisioning/test_certificates.py; regenerate with::

    python -m grpc_tools.protoc -I proto --python_out=host/e2ee_host/proto \\
        --pyi_out=host/e2ee_host/proto proto/e2ee/v1/certificate.proto

) and then parsed back with the device reader ``e2ee.protocol.certificate``, so the CA never issues
bytes a device would refuse. Verification on hosts is the device code too (re-exported here).

Keys live behind :class:`CAKeystore`, which a KMS, Vault or HSM backend can implement;
:class:`FileCAKeystore` is the default. Private keys never appear in ``repr``/``str``, log records,
exception messages or key ids (a key id is derived from the public key).
"""
from __future__ import annotations

import abc
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from e2ee.protocol import certificate as device
from e2ee.protocol.certificate import (
    CERT_LABEL,
    CRL_LABEL,
    SERIAL_SIZE,
    BadSignature,
    Certificate,
    CertificateError,
    Expired,
    Malformed,
    NotYetValid,
    RevocationList,
    Revoked,
    RolledBack,
    UnknownIssuer,
    key_id,
    verify_certificate,
    verify_revocation_list,
)
from e2ee_host.proto.e2ee.v1 import certificate_pb2 as pb

__all__ = [
    "BadSignature", "CAKey", "CAKeystore", "CAKeystoreError", "Certificate", "CertificateError",
    "Expired", "FileCAKeystore", "Malformed", "NotYetValid", "RevocationList", "Revoked", "RolledBack",
    "UnknownIssuer", "issue_certificate", "key_id", "new_serial", "pb", "sign_revocation_list",
    "verify_certificate", "verify_revocation_list",
]

log = logging.getLogger(__name__)

_FILE_FORMAT = "e2ee-iot fleet-ca v1"
_FILE_MODE = 0o600  # owner read/write only; a keystore file with any group/other bit is refused


class CAKeystoreError(Exception):
    """The keystore cannot be used: missing, malformed, too permissive, unknown key id. Messages
    carry paths, modes and key ids, never key bytes."""


@dataclass(frozen=True)
class CAKey:
    """Public facts about one CA key: its id (first 8 bytes of SHA-512 of the public key), its
    32-byte Ed25519 public key, when it was created, and whether it signs new certificates."""

    key_id: bytes
    public_key: bytes
    created_at: int
    active: bool


class CAKeystore(abc.ABC):
    """Where the Fleet CA's Ed25519 keys live. One key is active (signs); older keys stay trusted
    for verification until retired (rotation with overlap). A backend never hands out private keys."""

    @abc.abstractmethod
    def keys(self) -> list[CAKey]:
        """Every key still trusted, oldest first; exactly one of them is active."""

    @abc.abstractmethod
    def sign(self, message: bytes, key_id: bytes | None = None) -> bytes:
        """Ed25519 signature (64 bytes) over message by the key ``key_id`` (default: the active key).

        Raises:
            CAKeystoreError: ``key_id`` names no key held here.
        """

    @abc.abstractmethod
    def rotate(self) -> bytes:
        """Makes a new key the active one; the previous keys stay trusted. Returns the new key id."""

    @abc.abstractmethod
    def retire(self, key_id: bytes) -> None:
        """Forgets a key that is no longer active: certificates it signed stop verifying.

        Raises:
            CAKeystoreError: unknown key id, or the active key.
        """

    def active_key_id(self) -> bytes:
        """Key id of the key that signs new certificates and lists."""
        return next(k.key_id for k in self.keys() if k.active)

    def public_keys(self) -> list[bytes]:
        """The trusted CA public keys, oldest first: what devices and hosts verify against."""
        return [k.public_key for k in self.keys()]

    def key_ids(self) -> list[bytes]:
        return [k.key_id for k in self.keys()]


class FileCAKeystore(CAKeystore):
    """The default keystore: one JSON file of mode 0600 holding the key seeds, created with a new
    key on first use. Writes are atomic (temporary file, fsync, rename); rotation and retirement
    hold an exclusive lock on ``<path>.lock``; every call reloads the file when it has changed, so
    several processes can share it. A file readable by group or others is refused."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._keys: list[tuple[CAKey, Ed25519PrivateKey]] = []

    def __repr__(self) -> str:
        active = [k.key_id.hex() for k, _ in self._keys if k.active]
        return "FileCAKeystore(path=%r, active=%s, keys=%d)" % (
            str(self.path), active[0] if active else "not loaded", len(self._keys))

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a CA keystore is not picklable (it holds private keys)")

    def keys(self) -> list[CAKey]:
        return [k for k, _ in self._load()]

    def sign(self, message: bytes, key_id: bytes | None = None) -> bytes:
        for info, private in self._load():
            if (info.active if key_id is None else info.key_id == key_id):
                return private.sign(bytes(message))
        raise CAKeystoreError("no CA key %s in %s" % (key_id.hex() if key_id else "active", self.path))

    def rotate(self) -> bytes:
        with self._locked():
            entries = [(info.created_at, private) for info, private in self._load()]
            entries.append((int(time.time()), Ed25519PrivateKey.generate()))
            self._write(entries, len(entries) - 1)
            new = self._load()[-1][0]
        log.info("fleet CA rotated: key %s active, %d keys trusted", new.key_id.hex(), len(entries))
        return new.key_id

    def retire(self, key_id: bytes) -> None:
        with self._locked():
            current = self._load()
            found = [info for info, _ in current if info.key_id == key_id]
            if not found:
                raise CAKeystoreError("no CA key %s in %s" % (key_id.hex(), self.path))
            if found[0].active:
                raise CAKeystoreError("CA key %s is active; rotate before retiring it" % key_id.hex())
            kept = [(info, private) for info, private in current if info.key_id != key_id]
            active = next(i for i, (info, _) in enumerate(kept) if info.active)
            self._write([(info.created_at, private) for info, private in kept], active)
            self._load()
        log.info("fleet CA key %s retired, %d keys trusted", key_id.hex(), len(kept))

    # ---- file handling ----

    def _load(self) -> list[tuple[CAKey, Ed25519PrivateKey]]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._create()
            st = os.stat(self.path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return self._keys
        if st.st_mode & 0o077:
            raise CAKeystoreError("CA keystore %s has mode %04o; it must be %04o" % (
                self.path, st.st_mode & 0o777, _FILE_MODE))
        self._keys = self._parse(self.path.read_bytes())
        self._stamp = stamp
        return self._keys

    def _parse(self, raw: bytes) -> list[tuple[CAKey, Ed25519PrivateKey]]:
        # Parse failures name the file only: the exceptions of json and bytes.fromhex are dropped
        # (`from None`) so nothing of the file's content reaches a message or a traceback.
        try:
            doc = json.loads(raw)
            if doc["format"] != _FILE_FORMAT:
                raise ValueError
            active = int(doc["active"])
            entries = [(int(k["created_at"]), bytes.fromhex(k["seed"])) for k in doc["keys"]]
            if not 0 <= active < len(entries) or any(len(seed) != 32 for _, seed in entries):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise CAKeystoreError("CA keystore %s is malformed" % self.path) from None
        out = []
        for i, (created_at, seed) in enumerate(entries):
            private = Ed25519PrivateKey.from_private_bytes(seed)
            public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                       serialization.PublicFormat.Raw)
            out.append((CAKey(bytes(key_id(public)), public, created_at, i == active), private))
        return out

    def _create(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self._write_tmp([(int(time.time()), Ed25519PrivateKey.generate())], 0)
        try:
            os.link(tmp, self.path)  # fails if another process created it first: keep theirs
            log.info("fleet CA keystore created at %s", self.path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)

    def _write(self, entries: list[tuple[int, Ed25519PrivateKey]], active: int) -> None:
        tmp = self._write_tmp(entries, active)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    def _write_tmp(self, entries: list[tuple[int, Ed25519PrivateKey]], active: int) -> Path:
        doc = {"format": _FILE_FORMAT, "active": active, "keys": [
            {"created_at": created_at, "seed": private.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                serialization.NoEncryption()).hex()}
            for created_at, private in entries]}
        tmp = self.path.with_name("%s.%d.tmp" % (self.path.name, os.getpid()))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        try:
            os.fchmod(fd, _FILE_MODE)  # exactly 0600 whatever the umask
            os.write(fd, json.dumps(doc).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def _locked(self) -> _Lock:
        return _Lock(self.path.with_name(self.path.name + ".lock"))


class _Lock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the lock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- issuing -------------------------------------------------------------------------------

def new_serial() -> bytes:
    """A fresh random 16-byte certificate serial."""
    return os.urandom(SERIAL_SIZE)


def issue_certificate(keystore: CAKeystore, *, device_id: str, fleet: str, identity_dh: bytes,
                      identity_sign: bytes, not_before: int, not_after: int,
                      roles: Iterable[str] = (), serial: bytes | None = None) -> bytes:
    """A serialized SignedCertificate for a device, signed by the keystore's active key.

    Args:
        device_id, fleet: 1..64 characters of ``A-Z a-z 0-9 . _ -``.
        identity_dh, identity_sign: the device's ``IK.pub`` and ``IS.pub`` (docs/protocol.md §1).
        not_before, not_after: validity in Unix seconds, ``not_before <= now < not_after``.
        roles: at most 8 distinct names of 1..32 such characters.
        serial: 16 bytes; default a new random one (read it back with
            ``e2ee.protocol.certificate.decode_certificate_unverified``).

    Raises:
        Malformed: a field breaks the limits (the device reader's own check of the result).
    """
    issuer = keystore.active_key_id()
    cert = pb.DeviceCertificate(
        version=device.VERSION, serial=new_serial() if serial is None else bytes(serial),
        device_id=device_id, fleet=fleet, identity_dh=bytes(identity_dh), identity_sign=bytes(identity_sign),
        roles=list(roles), not_before=not_before, not_after=not_after, issuer_key_id=issuer)
    body = cert.SerializeToString(deterministic=True)
    signed = pb.SignedCertificate(certificate=body, signature=keystore.sign(CERT_LABEL + body, issuer))
    data = signed.SerializeToString(deterministic=True)
    device.decode_certificate_unverified(data)
    return data


def sign_revocation_list(keystore: CAKeystore, *, version: int, revoked_serials: Iterable[bytes],
                         issued_at: int | None = None) -> bytes:
    """A serialized SignedRevocationList, signed by the keystore's active key.

    Args:
        version: at least 1 and above every version signed before (the caller keeps the counter).
        revoked_serials: 16-byte serials of revoked certificates that have not expired (at most
            512); sorted and deduplicated here.
        issued_at: Unix seconds, default now.

    Raises:
        Malformed: a serial of another size, more than 512 serials, version 0.
    """
    issuer = keystore.active_key_id()
    crl = pb.RevocationList(version=version, issued_at=int(time.time()) if issued_at is None else issued_at,
                            revoked_serials=sorted({bytes(s) for s in revoked_serials}), issuer_key_id=issuer)
    body = crl.SerializeToString(deterministic=True)
    signed = pb.SignedRevocationList(revocation_list=body, signature=keystore.sign(CRL_LABEL + body, issuer))
    data = signed.SerializeToString(deterministic=True)
    device.decode_revocation_list_unverified(data)
    return data
