# Record storage on flash (device) or disk (host): small named records, encrypted at rest with the
# device storage key and replaced atomically, so a power cut at any instant leaves either the old or
# the new record (docs/protocol.md §5). One store per record kind (sessions, prekeys, identity).
#
# Atomicity: write <name>.tmp, flush (and fsync where the OS has it), then rename over <name>.
# littlefs (the default filesystem of the ESP32 and RP2040 ports) and POSIX filesystems replace
# the target atomically on rename; FAT does not (see boards/). A leftover .tmp is an interrupted
# write: it is ignored and removed when the store opens.
import os

from e2ee import crypto
from e2ee.crypto.errors import InvalidTag

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

FORMAT_VERSION = const(1)  # first byte of every record file
MAX_RECORD = const(5120)  # plaintext bytes per record: the largest session record (§6) fits
MAX_NAME = const(32)  # record names are short ids (peer device ids, prekey ids)
_NONCE = const(12)
_TAG = const(16)
_TMP = ".tmp"
_AD_PREFIX = b"e2ee-iot store v1 "  # binds a record to its store kind and name (no swapping)


class StoreError(Exception):
    pass


# A record name with characters outside [a-z0-9_-], empty or too long (no path tricks).
class BadName(StoreError):
    pass


# A record larger than MAX_RECORD.
class Oversize(StoreError):
    pass


# A record file that does not authenticate or parse: tampered, or written by another key.
class Corrupted(StoreError):
    pass


# No record with that name.
class NotFound(StoreError):
    pass


def _check_name(name):
    if not 0 < len(name) <= MAX_NAME:
        raise BadName("record name must be 1..%d characters, got %d" % (MAX_NAME, len(name)))
    for ch in name:
        if not ("a" <= ch <= "z" or "0" <= ch <= "9" or ch in "_-"):
            raise BadName("record name may hold only a-z 0-9 _ -")


# CPython: make the rename itself durable by syncing the directory (MicroPython's littlefs
# commits a rename on its own and has no os.open).
def _sync_directory(directory):
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# mkdir -p: MicroPython's os has no makedirs.
def _make_directories(path):
    if path and not _exists(path):
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent and parent != path:
            _make_directories(parent)
        os.mkdir(path)


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class RecordStore:
    # directory: created if missing; kind: short label of the record kind ("sessions");
    # key: the 32-byte device storage key (boards/ says where it lives on each board).
    def __init__(self, directory, kind, key):
        if len(key) != 32:
            raise StoreError("storage key must be 32 bytes")
        self.directory = directory
        self._kind = kind.encode() + b" "
        self._key = bytes(key)
        _make_directories(directory)
        for entry in os.listdir(directory):
            if entry.endswith(_TMP):
                os.remove(self._path(entry))

    def __repr__(self):
        return "<RecordStore %s at %s>" % (self._kind.decode().strip(), self.directory)

    def _path(self, name):
        return self.directory + "/" + name

    def _ad(self, name):
        return _AD_PREFIX + self._kind + name.encode()

    # Names of the stored records.
    def names(self):
        return sorted([n for n in os.listdir(self.directory) if not n.endswith(_TMP)])

    # Encrypts and writes a record, replacing any previous one atomically.
    def put(self, name, data):
        _check_name(name)
        if len(data) > MAX_RECORD:
            raise Oversize("record of %d bytes exceeds %d" % (len(data), MAX_RECORD))
        nonce = crypto.random_bytes(_NONCE)  # random per write: a key never sees a nonce twice
        sealed = crypto.aead_encrypt(self._key, nonce, data, self._ad(name))
        tmp = self._path(name + _TMP)
        with open(tmp, "wb") as f:
            f.write(bytes((FORMAT_VERSION,)))
            f.write(nonce)
            f.write(sealed)
            f.flush()
            if hasattr(os, "fsync"):
                os.fsync(f.fileno())
        os.rename(tmp, self._path(name))
        _sync_directory(self.directory)

    # The plaintext of a record; NotFound if absent, Corrupted if it does not authenticate.
    def get(self, name):
        _check_name(name)
        path = self._path(name)
        try:
            size = os.stat(path)[6]
        except OSError:
            raise NotFound("no record %s" % name)
        if size < 1 + _NONCE + _TAG or size > 1 + _NONCE + MAX_RECORD + _TAG:
            raise Corrupted("record %s has an impossible size (%d bytes)" % (name, size))
        with open(path, "rb") as f:
            blob = f.read(size)  # exactly the file: no MAX_RECORD-sized buffer per read
        if len(blob) != size:
            raise Corrupted("record %s changed while read" % name)
        if blob[0] != FORMAT_VERSION:
            raise Corrupted("record %s has unknown format %d" % (name, blob[0]))
        blob = memoryview(blob)
        try:
            return crypto.aead_decrypt(self._key, blob[1 : 1 + _NONCE], blob[1 + _NONCE :], self._ad(name))
        except InvalidTag:
            raise Corrupted("record %s does not authenticate" % name)

    def delete(self, name):
        _check_name(name)
        try:
            os.remove(self._path(name))
        except OSError:
            raise NotFound("no record %s" % name)
