# The largest revocation list (MAX_REVOKED serials, about 9.3 KB signed) verifies without a copy
# of itself (issue 14, item 4). Usage: check_crl_heap.py CASES
# prints "ok crl heap <bytes the decode allocates> <bytes the verification allocates> <free heap>"
# CASES holds crl.bin (the signed list), ca-keys.bin (the CA key), revoked.bin (a serial on it),
# good.bin (a serial not on it), small.bin (a one-serial list). On MicroPython, with the collector
# off, everything allocated (garbage included) is counted for the decode alone and for the whole
# verification: the signature check is the difference, and it must stay below the list's size.
# The code before copied label || list into one buffer for Ed25519, a second block of the list's
# size (9.3 KB) that a fragmented 111-120 KB heap may not have; SHA-512 now takes the label and
# the list one after the other (crypto.ed25519_verify with parts).
import gc
import sys

from e2ee.protocol import certificate

CASES = sys.argv[1]
MICROPYTHON = sys.implementation.name == "micropython"


def read(name):
    with open(CASES + "/" + name, "rb") as f:
        return f.read()


def check(cond, what):
    if not cond:
        raise AssertionError(what)


# Bytes fn(*args) allocates with the collector off (0 on CPython), and its result.
def allocation(fn, *args):
    if not MICROPYTHON:
        return 0, fn(*args)
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    try:
        result = fn(*args)
        return gc.mem_alloc() - before, result
    finally:
        gc.enable()


def main():
    keys = [read("ca-keys.bin")]
    revoked, good = read("revoked.bin"), read("good.bin")
    data = read("crl.bin")
    # every module the verification imports (the backend's Ed25519 and SHA-512), loaded first
    certificate.verify_revocation_list(read("small.bin"), keys, 0)
    gc.collect()
    free = gc.mem_free() if MICROPYTHON else 0
    decoding, crl = allocation(certificate.decode_revocation_list_unverified, data)
    crl = None
    verifying, crl = allocation(certificate.verify_revocation_list, data, keys, 0)
    check(crl.count == certificate.MAX_REVOKED, "count %d" % crl.count)
    check(crl.is_revoked(revoked) and not crl.is_revoked(good), "lookups")
    check(verifying - decoding < len(data), "the signature check allocated %d bytes beyond the decode: the "
          "%d-byte list was copied" % (verifying - decoding, len(data)))
    print("ok crl heap %d %d %d" % (decoding, verifying, free))


main()
