# Record storage on flash (device) or disk (host): small named records, encrypted at rest with the
# device storage key and replaced atomically, so a power cut at any instant leaves either the old or
# the new record (docs/protocol.md §5). One store per record kind (sessions, prekeys, identity).
#
# Atomicity: write <name>.tmp, flush (and fsync where the OS has it), then rename over <name>.
# littlefs (the default filesystem of the ESP32 and RP2040 ports) and POSIX filesystems replace
# the target atomically on rename; FAT does not (see boards/). A leftover .tmp is an interrupted
# write: it is ignored and removed when the store opens.
#
# RAM: a record is read, decrypted, encrypted and written in one buffer of the largest file size,
# allocated when this module is imported (at boot, while the heap is still in one piece) and
# reused by every store. Decryption and encryption run in place, so loading or saving even a
# MAX_RECORD record needs no large allocation: on a fragmented heap a 5 KB block may not exist.
# The buffer is wiped after each use (it held a plaintext record). Not re-entrant: a nested or
# concurrent use (a host thread) gets a buffer of its own.
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
_HEAD = const(13)  # format byte || nonce: the plaintext starts here in the record buffer
_FILE_MAX = const(_HEAD + MAX_RECORD + _TAG)  # the largest record file
_ZEROS = bytes(256)  # wipes the record buffer a slice at a time (no record-sized allocation)


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


# The shared record buffer (a list, so that taking it is one atomic pop on CPython as well), or
# a new one when it is in use.
_spare = [bytearray(_FILE_MAX)]


def _borrow():
    try:
        return _spare.pop()
    except IndexError:
        return bytearray(_FILE_MAX)


# Zeroes buf[:end] and hands the buffer back for the next record.
def _release(buf, end):
    view = memoryview(buf)
    for at in range(0, end, len(_ZEROS)):
        n = min(len(_ZEROS), end - at)
        view[at : at + n] = _ZEROS[:n] if n < len(_ZEROS) else _ZEROS
    if not _spare:
        _spare.append(buf)


# Copies `data` into the plaintext area `out` (the writer of put()).
def _copier(data):
    def fill(out):
        out[:] = data

    return fill


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
        self.put_with(name, len(data), _copier(data))

    # Encrypts and writes a record of `size` bytes that write(out) fills in: `out` is a writable
    # memoryview of exactly `size` bytes in the shared record buffer, so the record is
    # serialized, encrypted and written without a copy. Replaces any previous record atomically.
    def put_with(self, name, size, write):
        _check_name(name)
        if size > MAX_RECORD:
            raise Oversize("record of %d bytes exceeds %d" % (size, MAX_RECORD))
        buf = _borrow()
        end = _HEAD + size + _TAG
        try:
            view = memoryview(buf)
            write(view[_HEAD : _HEAD + size])
            buf[0] = FORMAT_VERSION
            view[1:_HEAD] = crypto.random_bytes(_NONCE)  # random per write: never a nonce twice
            crypto.aead_encrypt_into(self._key, view[1:_HEAD], view[_HEAD : _HEAD + size],
                                     self._ad(name), view[_HEAD:end])  # in place
            tmp = self._path(name + _TMP)
            with open(tmp, "wb") as f:
                f.write(view[:end])
                f.flush()
                if hasattr(os, "fsync"):
                    os.fsync(f.fileno())
        finally:
            _release(buf, end)
        os.rename(tmp, self._path(name))
        _sync_directory(self.directory)

    # The plaintext of a record (a new bytearray); NotFound if absent, Corrupted if it does not
    # authenticate.
    def get(self, name):
        return self.get_with(name, bytearray)

    # Returns read(plaintext) for a record, where `plaintext` is a memoryview into the shared
    # record buffer, valid (and holding the record) only during the call: read() must copy what
    # it keeps. NotFound if absent, Corrupted if it does not authenticate.
    def get_with(self, name, read):
        _check_name(name)
        path = self._path(name)
        try:
            size = os.stat(path)[6]
        except OSError:
            raise NotFound("no record %s" % name)
        if size < _HEAD + _TAG or size > _FILE_MAX:
            raise Corrupted("record %s has an impossible size (%d bytes)" % (name, size))
        buf = _borrow()
        try:
            view = memoryview(buf)
            with open(path, "rb") as f:
                if f.readinto(view[:size]) != size:
                    raise Corrupted("record %s changed while read" % name)
            if buf[0] != FORMAT_VERSION:
                raise Corrupted("record %s has unknown format %d" % (name, buf[0]))
            n = size - _HEAD - _TAG
            try:  # decrypted in place: the plaintext replaces the ciphertext in the buffer
                crypto.aead_decrypt_into(self._key, view[1:_HEAD], view[_HEAD:size], self._ad(name),
                                         view[_HEAD : _HEAD + n])
            except InvalidTag:
                raise Corrupted("record %s does not authenticate" % name)
            return read(view[_HEAD : _HEAD + n])
        finally:
            _release(buf, size)

    def delete(self, name):
        _check_name(name)
        try:
            os.remove(self._path(name))
        except OSError:
            raise NotFound("no record %s" % name)
