"""Encrypted backup of a client's state (docs/backup.md): identity, settings and trust (never session
or sender chain state: "Never restored") sealed on the client under a key from the user's
passphrase (Argon2id, RFC 9106) with ChaCha20-Poly1305 (RFC 8439), so the service that stores the
blob cannot read it.

    archive = export_state(install_dir, storage_key)               # the records, in clear, in RAM
    blob, auth = seal(archive, passphrase)                          # what the service stores
    archive = open_blob(blob, passphrase)                           # WrongPassphrase otherwise
    import_state(archive, new_install_dir, new_storage_key)         # records re-encrypted at rest

Blob (all integers big-endian):
    "E2EEBK" | version 1 | kdf 1 (Argon2id v1.3) | memory KiB (u32) | iterations (u32) |
    lanes (u8) | salt (16) | nonce (12) | ciphertext || tag (16)
The header up to the nonce is the AEAD's associated data, so parameters cannot be swapped. From
master = Argon2id(passphrase, salt, params, 32 bytes):
    key  = HKDF-SHA256(master, salt, "e2ee-iot backup key v1", 32)   seals the archive
    auth = HKDF-SHA256(master, salt, "e2ee-iot backup auth v1", 32)  proves knowledge of the
           passphrase to the service when fetching the blob (it keeps SHA-256(auth) only)
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from e2ee import crypto
from e2ee.crypto.errors import InvalidTag
from e2ee.protocol.store import RecordStore

__all__ = ["HOST_PARAMS", "BackupError", "KdfParams", "WeakKdfParams", "WrongPassphrase", "archive_of",
           "auth_hash", "auth_token", "export_state", "import_state", "is_chain_state", "open_blob", "read_params",
           "records_of", "restorable", "seal"]

MAGIC = b"E2EEBK"
VERSION = 1
KDF_ARGON2ID = 1
SALT_SIZE = 16
_HEADER = struct.Struct(">6sBBIIB16s")  # magic, version, kdf, memory KiB, iterations, lanes, salt
_NONCE = 12
MAX_BLOB = 4 * 1024 * 1024
_KEY_INFO = b"e2ee-iot backup key v1"
_AUTH_INFO = b"e2ee-iot backup auth v1"
# Record stores of an install, by directory name (the directory name is the store's kind). "trust"
# (pinned CA keys, own certificate, revocation list) is absent from archives made before installs
# kept a trust store; HostInstall.open() rebuilds it then. Boards' archives have no "trust" either.
# "groups" (own and members' sender keys, docs/groups.md) is there once the install used a group.
STORES = ("keys", "sessions", "config", "trust", "groups")
# What a backup never carries and a restore never writes (docs/backup.md, "Never restored"): ratchet
# and sender chain state. A restored install that sent with a chain state it had already used would
# reuse message keys and nonces (the broker would see p1 XOR p2); it starts new sessions instead.
# Pairwise sessions are the whole "sessions" store; in "groups" the own ("o...") and members'
# ("m...") sender chains (e2ee.protocol.group), while the membership lists ("g...") are restored.
_CHAIN_STORES = ("sessions",)
_CHAIN_GROUP_RECORDS = ("o", "m")


class BackupError(ValueError):
    pass


class WrongPassphrase(BackupError):
    """The passphrase does not open this backup (or the blob was altered)."""


class WeakKdfParams(BackupError):
    """Argon2id parameters (from the service or a blob's header) below this client's floor: a
    malicious service would get a cheap offline verifier of the passphrase. Nothing is derived."""


@dataclass(frozen=True)
class KdfParams:
    memory_kib: int
    iterations: int
    lanes: int

    def check(self) -> None:
        if not (8 * self.lanes <= self.memory_kib <= 4 * 1024 * 1024 and 1 <= self.iterations <= 64
                and 1 <= self.lanes <= 16):
            raise BackupError("Argon2id parameters out of range: %r" % (self,))

    def check_floor(self, floor: KdfParams) -> None:
        """WeakKdfParams unless memory and passes are at least the floor's (lanes only split the
        work: any count in range is accepted)."""
        self.check()
        if self.memory_kib < floor.memory_kib or self.iterations < floor.iterations:
            raise WeakKdfParams("Argon2id parameters %d KiB / %d passes are below this client's %d KiB / %d "
                                "passes: refused (a backup this client made never has them)" % (
                                    self.memory_kib, self.iterations, floor.memory_kib, floor.iterations))


# RFC 9106 §4, second recommended option (64 MiB, 3 passes, 4 lanes): about 0.2 s on this host.
# Boards do not run Argon2id (64 MiB is 500 times an ESP32's heap); docs/backup.md says how a
# board's state is backed up with a host's help.
HOST_PARAMS = KdfParams(64 * 1024, 3, 4)


def _keys(passphrase: str, salt: bytes, params: KdfParams) -> tuple[bytes, bytes]:
    params.check()
    if not passphrase:
        raise BackupError("an empty passphrase protects nothing")
    master = Argon2id(salt=salt, length=32, iterations=params.iterations, lanes=params.lanes,
                      memory_cost=params.memory_kib).derive(passphrase.encode())
    return (bytes(crypto.hkdf_sha256(master, salt, _KEY_INFO, 32)),
            bytes(crypto.hkdf_sha256(master, salt, _AUTH_INFO, 32)))


def seal(archive: bytes, passphrase: str, params: KdfParams = HOST_PARAMS) -> tuple[bytes, bytes]:
    """(blob, auth): the sealed archive and the token that lets its owner fetch it again."""
    salt = os.urandom(SALT_SIZE)
    key, auth = _keys(passphrase, salt, params)
    header = _HEADER.pack(MAGIC, VERSION, KDF_ARGON2ID, params.memory_kib, params.iterations, params.lanes, salt)
    nonce = os.urandom(_NONCE)  # a fresh salt makes a fresh key per backup; the nonce is random too
    blob = header + nonce + bytes(crypto.aead_encrypt(key, nonce, archive, header))
    if len(blob) > MAX_BLOB:
        raise BackupError("backup of %d bytes exceeds %d" % (len(blob), MAX_BLOB))
    return blob, auth


def read_params(blob: bytes, floor: KdfParams | None = None) -> tuple[bytes, KdfParams]:
    """(salt, params) from a blob's header; BackupError when it is not a version 1 backup,
    WeakKdfParams when `floor` is given and the header's parameters are below it."""
    if len(blob) < _HEADER.size + _NONCE + 16 or len(blob) > MAX_BLOB:
        raise BackupError("not an e2ee-iot backup (size %d)" % len(blob))
    magic, version, kdf, memory, iterations, lanes, salt = _HEADER.unpack_from(blob)
    if magic != MAGIC or version != VERSION or kdf != KDF_ARGON2ID:
        raise BackupError("not an e2ee-iot backup of version %d with Argon2id" % VERSION)
    params = KdfParams(memory, iterations, lanes)
    params.check()
    if floor is not None:
        params.check_floor(floor)
    return salt, params


def auth_token(salt: bytes, params: KdfParams, passphrase: str, floor: KdfParams = HOST_PARAMS) -> bytes:
    """The fetch token for a backup with this salt and parameters (restore on a new install).
    `params` come from the service (GET /backups/{id}/params), which must not choose them:
    WeakKdfParams when they are below `floor` (this client's own creation parameters)."""
    params.check_floor(floor)
    return _keys(passphrase, salt, params)[1]


def open_blob(blob: bytes, passphrase: str, floor: KdfParams = HOST_PARAMS) -> bytes:
    """The archive in `blob`, with the Argon2id parameters of the blob's own header (which the
    AEAD authenticates), never weaker than `floor`: WeakKdfParams, WrongPassphrase, BackupError."""
    salt, params = read_params(blob, floor)
    key, _ = _keys(passphrase, salt, params)
    header, nonce, sealed = blob[:_HEADER.size], blob[_HEADER.size:_HEADER.size + _NONCE], blob[_HEADER.size + _NONCE:]
    try:
        return bytes(crypto.aead_decrypt(key, nonce, sealed, header))
    except InvalidTag:
        raise WrongPassphrase("wrong passphrase, or the backup was altered") from None


# --- the archive: every record of the install's stores, length-prefixed -------------------

def archive_of(records: list[tuple[str, str, bytes]]) -> bytes:
    """The archive of (kind, name, plaintext) records: "E2EEAR1", then per record
    kind(1+n) name(1+n) data(4+n)."""
    out = [b"E2EEAR1"]
    for kind, name, data in records:
        if kind not in STORES:
            raise BackupError("unknown record store %r" % kind)
        out += [bytes((len(kind),)), kind.encode(), bytes((len(name),)), name.encode(), struct.pack(">I", len(data)),
                data]
    return b"".join(out)


def is_chain_state(kind: str, name: str) -> bool:
    """True for a record of ratchet or sender chain state, which is never backed up nor restored."""
    return kind in _CHAIN_STORES or (kind == "groups" and name[:1] in _CHAIN_GROUP_RECORDS)


def restorable(records: list[tuple[str, str, bytes]]) -> list[tuple[str, str, bytes]]:
    """The records a restore writes: identities, settings and trust, never chain state (archives
    made before this rule carry sessions and sender chains: they are left out)."""
    return [r for r in records if not is_chain_state(r[0], r[1])]


def export_state(directory: str | os.PathLike[str], storage_key: bytes) -> bytes:
    """The archive of the records under `directory` (stores keys/, config/, trust/, groups/
    membership) without chain state (is_chain_state)."""
    records = []
    for kind in STORES:
        path = Path(directory) / kind
        if not path.is_dir():
            continue
        store = RecordStore(str(path), kind, storage_key)
        records += [(kind, name, bytes(store.get(name))) for name in store.names()
                    if not is_chain_state(kind, name)]
    return archive_of(records)


def records_of(archive: bytes) -> list[tuple[str, str, bytes]]:
    """The (kind, name, plaintext) records of an archive; BackupError when it is damaged."""
    if archive[:7] != b"E2EEAR1":
        raise BackupError("not an e2ee-iot state archive")
    records = []
    pos = 7
    try:
        while pos < len(archive):
            n = archive[pos]
            kind = archive[pos + 1:pos + 1 + n].decode()
            pos += 1 + n
            n = archive[pos]
            name = archive[pos + 1:pos + 1 + n].decode()
            pos += 1 + n
            (size,) = struct.unpack_from(">I", archive, pos)
            data = archive[pos + 4:pos + 4 + size]
            if len(data) != size or kind not in STORES:
                raise BackupError("archive record %s/%s is damaged" % (kind, name))
            records.append((kind, name, data))
            pos += 4 + size
    except (IndexError, struct.error, UnicodeDecodeError):
        raise BackupError("archive is truncated") from None
    return records


def import_state(archive: bytes, directory: str | os.PathLike[str], storage_key: bytes) -> int:
    """Writes the archive's restorable records into `directory`, encrypted with this install's
    storage key; returns how many. Never chain state (restorable()). Refuses a directory that
    already holds records."""
    records = restorable(records_of(archive))
    for kind in STORES:
        if (Path(directory) / kind).is_dir() and RecordStore(str(Path(directory) / kind), kind, storage_key).names():
            raise BackupError("%s already holds %s records: restore into a new install" % (directory, kind))
    stores: dict[str, RecordStore] = {}
    for kind, name, data in records:
        store = stores.setdefault(kind, RecordStore(str(Path(directory) / kind), kind, storage_key))
        store.put(name, data)
    return len(records)


def auth_hash(auth: bytes) -> str:
    return hashlib.sha256(auth).hexdigest()
