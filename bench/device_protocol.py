# Protocol cost on MicroPython or CPython:
#   micropython bench/device_protocol.py <time|alloc> <scratch directory>
# Prints "<op> <value>" lines: µs (best of 5 batches) or heap bytes allocated by one call (gc off),
# then the stored session size and the heap the imported stack holds.
import gc
import sys

from device_bench import allocated, per_op_us, ticks_diff, ticks_us  # same directory

gc.collect()
_BASE = gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0
from e2ee.protocol.session import SessionManager  # noqa: E402  (loads crypto first)
from e2ee.protocol import ratchet  # noqa: E402

KEY = bytes(range(32))
PAYLOAD = bytes(64)


def setup(root, tag):
    alice = SessionManager.create(root + "/alice" + tag, KEY, one_time=2)
    bob = SessionManager.create(root + "/bob" + tag, KEY, one_time=2)
    return alice, bob


def ops(root):
    counter = [0]

    # X3DH as initiator + the first (PreKey) message, and the responder's first decrypt.
    def first_message():
        counter[0] += 1
        alice, bob = setup(root, str(counter[0]))
        opk = bob.keystore.one_time_prekey_ids()[0]
        bundle = bob.bundle(opk)
        t0 = ticks_us()
        alice.start("bob", bundle)
        env = alice.encrypt("bob", PAYLOAD)
        t1 = ticks_us()
        bob.decrypt("alice", env)
        return ticks_diff(t1, t0), ticks_diff(ticks_us(), t1)

    alice, bob = setup(root, "s")
    bob_bundle = bob.bundle(bob.keystore.one_time_prekey_ids()[0])
    alice.start("bob", bob_bundle)
    bob.decrypt("alice", alice.encrypt("bob", PAYLOAD))
    alice.decrypt("bob", bob.encrypt("alice", PAYLOAD))
    pending = []

    def session_encrypt():
        pending.append(alice.encrypt("bob", PAYLOAD))

    def session_decrypt():
        if not pending:
            pending.append(alice.encrypt("bob", PAYLOAD))
        bob.decrypt("alice", pending.pop(0))

    sk = bytes(32)
    ad = bytes(128)
    pair = ratchet.generate_keypair()
    a = ratchet.init_initiator(sk, pair[1], ad)
    b = ratchet.init_responder(sk, pair, ad)
    queue = []

    def ratchet_encrypt():
        queue.append(a.encrypt(PAYLOAD))

    def ratchet_decrypt():
        if not queue:
            queue.append(a.encrypt(PAYLOAD))
        b.decrypt(*queue.pop(0))

    def ratchet_step():  # a reply and an answer: each decrypt performs a DH ratchet step
        b.decrypt(*a.encrypt(PAYLOAD))
        a.decrypt(*b.encrypt(PAYLOAD))

    return first_message, (
        ("session_encrypt_64B", session_encrypt),
        ("session_decrypt_64B", session_decrypt),
        ("ratchet_encrypt_64B", ratchet_encrypt),
        ("ratchet_decrypt_64B", ratchet_decrypt),
        ("ratchet_round_trip_with_dh_steps", ratchet_step),
    ), bob


def main(mode, root):
    gc.collect()
    code = (gc.mem_alloc() - _BASE) if hasattr(gc, "mem_alloc") else 0
    first_message, steady, bob = ops(root)
    if mode == "time":
        best = [None, None]
        for _ in range(3):
            x, y = first_message()
            best = [x if best[0] is None else min(best[0], x), y if best[1] is None else min(best[1], y)]
        print("x3dh_start_and_first_message", best[0])
        print("first_message_decrypt_as_responder", best[1])
    else:
        first_message()
        gc.collect()
        gc.disable()
        before = gc.mem_alloc()
        first_message()
        print("x3dh_start_and_first_message", gc.mem_alloc() - before)  # both sides together
        gc.enable()
        print("first_message_decrypt_as_responder", 0)
    for name, fn in steady:
        print(name, per_op_us(fn, 20) if mode == "time" else allocated(fn))
    print("stored_session_bytes", len(bob.session_bytes("alice")))
    print("imported_stack_heap_bytes", code)


main(sys.argv[1], sys.argv[2])
