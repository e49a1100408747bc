# Per-primitive cost on MicroPython: micropython bench/device_bench.py <time|alloc> <backend>
# time:  microseconds per operation, gc enabled (collections included), run with the board heap.
# alloc: heap bytes allocated by one operation, gc disabled around it; run with a large heap so
#        garbage-heavy backends do not run out while the collector is off.
# count: runs operation <op> <n> times and nothing else (bench/crypto.py wraps it in valgrind
#        to count instructions, which unlike time does not depend on the machine's load).
# Prints "<op> <value>" lines, then the free heap and the import cost.
# bench/crypto.py imports make_ops() to time the same operations on CPython.
import gc
import sys
import time

try:
    from time import ticks_diff, ticks_us
except ImportError:  # CPython (bench/device_protocol.py runs there too)
    def ticks_us():
        return time.perf_counter_ns() // 1000

    def ticks_diff(a, b):
        return a - b

# The pure backend's curve operations take far longer; fewer rounds keep the run short.
SLOW = ("x25519", "ed25519")


# (name, zero-argument callable, rounds) for every benchmarked operation of suite c.
def make_ops(c):
    k1, k2 = bytes(range(32)), bytes(range(32, 64))
    pub2 = c.x25519_base(k2)
    nonce = bytes(12)
    m64, m1k = bytes(64), bytes(1024)
    out64, out1k = bytearray(64 + 16), bytearray(1024 + 16)
    sealed1k = bytes(c.aead_encrypt(k1, nonce, m1k))
    ed_pub = c.ed25519_public_key(k1)
    sig = c.ed25519_sign(k1, m64, ed_pub)
    return (
        ("x25519", lambda: c.x25519(k1, pub2), 20),
        ("x25519_base", lambda: c.x25519_base(k1), 20),
        ("ed25519_public_key", lambda: c.ed25519_public_key(k1), 10),
        ("ed25519_sign_64B", lambda: c.ed25519_sign(k1, m64, ed_pub), 10),
        ("ed25519_verify_64B", lambda: c.ed25519_verify(ed_pub, m64, sig), 10),
        ("aead_seal_into_64B", lambda: c.aead_encrypt_into(k1, nonce, m64, None, out64), 200),
        ("aead_seal_into_1KiB", lambda: c.aead_encrypt_into(k1, nonce, m1k, None, out1k), 100),
        ("aead_encrypt_1KiB", lambda: c.aead_encrypt(k1, nonce, m1k), 100),
        ("aead_decrypt_1KiB", lambda: c.aead_decrypt(k1, nonce, sealed1k), 100),
        ("hkdf_sha256_32B", lambda: c.hkdf_sha256(k1, None, b"e2ee-iot bench", 32), 200),
        ("hmac_sha256_64B", lambda: c.hmac_sha256(k1, m64), 200),
        ("sha512_64B", lambda: c.sha512(m64), 100),
        ("sha512_1KiB", lambda: c.sha512(m1k), 50),
    )


def rounds_for(backend, name, rounds):
    return 2 if backend == "pure" and name.startswith(SLOW) else rounds


# Best of BATCHES batches: shared machines add noise that only ever makes a batch slower.
BATCHES = 5


def per_op_us(fn, rounds):
    fn()
    best = None
    for _ in range(BATCHES):
        gc.collect()
        t = ticks_us()
        for _ in range(rounds):
            fn()
        us = ticks_diff(ticks_us(), t) / rounds
        best = us if best is None or us < best else best
    return best


def allocated(fn):
    fn()
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    fn()
    used = gc.mem_alloc() - before
    gc.enable()
    return used


def main(mode, backend, op=None, n=0):
    if mode == "count":
        from e2ee import crypto

        c = crypto.load(backend)
        c.resolve()
        for name, fn, _ in make_ops(c):
            if name == op:
                for _ in range(int(n)):
                    fn()
        return
    gc.collect()
    base = gc.mem_alloc()
    from e2ee import crypto

    c = crypto.load(backend)
    c.resolve()
    gc.collect()
    import_cost = gc.mem_alloc() - base
    for name, fn, rounds in make_ops(c):
        if mode == "time":
            print(name, per_op_us(fn, rounds_for(backend, name, rounds)))
        else:
            print(name, allocated(fn))
    gc.collect()
    print("heap_free", gc.mem_free())
    print("import_bytes", import_cost)


if __name__ == "__main__":
    main(*sys.argv[1:])
