# RecordStore behaviour on MicroPython and CPython. Usage: check_store.py <empty directory>
# checks first: it is compiled from source at import, and compiling it after the SDK modules
# are loaded fragments the 120 KB heap enough that the large buffers below may not fit.
from checks import raises
import os
import sys

from e2ee.protocol.store import MAX_RECORD, BadName, Corrupted, NotFound, Oversize, RecordStore

KEY = bytes(range(32))


def corrupt(path, offset):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[offset] ^= 1
    with open(path, "wb") as f:
        f.write(data)


def main(root):
    d = root + "/sessions"
    s = RecordStore(d, "sessions", KEY)
    s.put("peer-1", b"state one")
    s.put("peer-2", b"")
    assert bytes(s.get("peer-1")) == b"state one" and bytes(s.get("peer-2")) == b""
    s.put("peer-1", b"state two")  # replaced
    assert bytes(s.get("peer-1")) == b"state two"
    assert s.names() == ["peer-1", "peer-2"]
    # Encrypted at rest: the plaintext is not in the file.
    with open(d + "/peer-1", "rb") as f:
        assert b"state two" not in f.read()
    # Names, sizes, absence.
    for bad in ("", "../etc", "Peer", "a/b", "x" * 33, "sp ace"):
        raises(BadName, s.put, bad, b"x")
    raises(Oversize, s.put, "big", bytes(MAX_RECORD + 1))
    s.put("max", bytes(MAX_RECORD))
    raises(NotFound, s.get, "nobody")
    raises(NotFound, s.delete, "nobody")
    s.delete("max")
    raises(NotFound, s.get, "max")
    # Tampering: any flipped byte (version, nonce, ciphertext, tag) -> Corrupted, no key in message.
    s.put("t", b"0123456789abcdef")
    size = os.stat(d + "/t")[6]
    for offset in (0, 1, 13, size - 1):
        s.put("t", b"0123456789abcdef")
        corrupt(d + "/t", offset)
        msg = raises(Corrupted, s.get, "t")
        assert "0001020304" not in msg
    # A record moved to another name, or read with another key, does not authenticate.
    s.put("a", b"for a")
    os.rename(d + "/a", d + "/b")
    raises(Corrupted, s.get, "b")
    raises(Corrupted, RecordStore(d, "sessions", bytes(32)).get, "peer-1")
    raises(Corrupted, RecordStore(d, "prekeys", KEY).get, "peer-1")  # kind is bound too
    # Truncated file.
    with open(d + "/peer-2", "wb") as f:
        f.write(b"\x01abc")
    raises(Corrupted, s.get, "peer-2")
    # An interrupted write (.tmp left behind) is discarded when the store opens.
    with open(d + "/peer-1.tmp", "wb") as f:
        f.write(b"half a write")
    s = RecordStore(d, "sessions", KEY)
    assert "peer-1.tmp" not in os.listdir(d)
    assert bytes(s.get("peer-1")) == b"state two"
    assert "000102" not in repr(s)
    print("ok store")


main(sys.argv[1])
