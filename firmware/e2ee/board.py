# What the SDK needs from the board it runs on (boards/README.md, "Keystore and RNG"): the device
# storage key that encrypts its records at rest, and the factory personalisation used as hardware
# binding evidence at enrollment (docs/provisioning.md, "Enrollment").
#
# Files on the board's flash, in the working directory (the root of the filesystem on ESP32 and
# RP2040, the flash directory of a virtual board):
#   e2ee_data/storage.key   32 random bytes made on the board at first use. On ESP32 keep the
#                      filesystem on a flash-encrypted partition (or move the key into encrypted
#                      NVS); the RP2040 has no flash encryption, so physical access reads it.
#   e2ee_data/board.key   HMAC key written at the factory: HMAC-SHA256(factory key, label || uid).
#   e2ee_data/board.uid   the board's unique id where machine.unique_id() does not exist (unix port).
import os

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

DATA_DIR = "e2ee_data"  # not "e2ee": the working directory is on sys.path before lib/
_KEY_SIZE = const(32)


class BoardError(Exception):
    pass


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


# True when a file (or directory) is at path.
def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _ensure_dir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass


# The 32-byte storage key, made from the hardware RNG (os.urandom) on first use.
def storage_key(directory=DATA_DIR):
    path = directory + "/storage.key"
    key = _read(path)
    if key is not None:
        if len(key) != _KEY_SIZE:
            raise BoardError("%s is %d bytes, expected %d" % (path, len(key), _KEY_SIZE))
        return key
    _ensure_dir(directory)
    key = os.urandom(_KEY_SIZE)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(key)
    os.rename(tmp, path)
    return key


# The board's unique id: machine.unique_id() (ESP32: the MAC, RP2040: the flash chip's id), else
# the board.uid file; None when the board has neither.
def unique_id(directory=DATA_DIR):
    try:
        import machine
        return bytes(machine.unique_id())
    except (ImportError, AttributeError):
        return _read(directory + "/board.uid")


# (uid, board key) for hardware binding evidence, or (None, None) on a board without a factory key.
def hardware_binding(directory=DATA_DIR):
    key = _read(directory + "/board.key")
    uid = unique_id(directory)
    if key is None or not uid:
        return None, None
    return uid, key
