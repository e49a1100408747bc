# Cutting a MicroPython heap into short free runs, for checks and benchmarks that show what
# still works on a fragmented heap (tests/device/check_record_heap.py, bench/record_heap.py).
# MicroPython only: it relies on id() being the object's address.
import gc
import sys


# Fills the free heap with one-block tuples, then frees all but those whose block address is a
# multiple of the run length: every free run is then shorter than `size` bytes (a few blocks of
# slack). Returns what must stay alive.
def fragment(size):
    gc.collect()
    block = 32 if sys.maxsize > 2 ** 32 else 16  # MICROPY_BYTES_PER_GC_BLOCK: 4 words
    run = max(2, size // block - 4)  # slack: a freed temporary may sit where a tuple would
    # Slot lists of 2 * run tuples: small, so that no large block is needed while the heap fills
    # up, and each one followed by more than `run` tuples, so that they do not cut the runs.
    per = 2 * run
    chunks = [None] * (gc.mem_free() // block // per + 1)
    try:
        for c in range(len(chunks)):
            chunk = chunks[c] = [None] * per
            for i in range(per):
                chunk[i] = (c, i)
    except MemoryError:
        pass
    for chunk in chunks:
        for i in range(per if chunk else 0):
            if chunk[i] is not None and (id(chunk[i]) // block) % run:
                chunk[i] = None
    gc.collect()
    plugs = []
    plug(plugs, size)
    return chunks, plugs


# A garbage object that a stale pointer kept alive while the heap filled up leaves a larger hole
# when it goes, and a failed allocation leaves its exception as garbage: plugs holes until two
# collections in a row leave no run of `size` bytes. Call it again where the stack is shallower
# (stale pointers on the deeper stack are gone there).
def plug(plugs, size):
    block = 32 if sys.maxsize > 2 ** 32 else 16
    refused = 0
    while refused < 2:
        gc.collect()
        if allocatable(size):
            refused = 0
            gc.collect()  # the probe's block is free again: the plug may go there
            plugs.append(bytearray(size - 4 * block))
        else:
            refused += 1


def allocatable(size):
    try:
        bytearray(size)
        return True
    except MemoryError:
        return False
