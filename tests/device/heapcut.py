# Cutting a MicroPython heap into short free runs, for checks and benchmarks that show what
# still works on a fragmented heap (tests/device/check_record_heap.py, bench/record_heap.py).
# MicroPython only. Sizes come from the running heap, so it cuts 32-bit heaps (ESP32, RP2040, the
# unix port's 32-bit build: 16-byte GC blocks) as it cuts 64-bit ones (32-byte blocks); checked by
# tests/device/check_heapcut.py.
import gc


# MICROPY_BYTES_PER_GC_BLOCK of the running build (4 words by default, a port may change it): what
# the smallest object, a bare object() (one word), takes off the free heap.
def block_size():
    gc.collect()
    free = gc.mem_free()
    a = object()
    b = object()
    c = object()
    d = object()
    used = free - gc.mem_free()
    del a, b, c, d  # alive until the heap was read
    return used // 4


# The address of an object as a small int. id() builds a heap big int for an address of 2^30 and
# above on a 32-bit build (the unix port's heap sits near 0xf7000000), which fails on the full heap
# this module makes; hash() of a plain object is its address with the top bit folded (modulo 2^31,
# two's complement), a small int: block indices keep their order within any 1 GiB of addresses.
def address(obj):
    return hash(obj)


# Fills the free heap with one-block objects, then frees all but those whose block address is a
# multiple of the run length: every free run is then shorter than `size` bytes (a few blocks of
# slack). Returns what must stay alive.
def fragment(size):
    block = block_size()
    run = max(2, size // block - 4)  # slack: a freed temporary may sit where an object would
    # Slot lists of 2 * run objects: small, so that no large block is needed while the heap fills
    # up, and each one followed by more than `run` objects, so that they do not cut the runs.
    per = 2 * run
    gc.collect()
    chunks = [None] * (gc.mem_free() // block // per + 1)
    try:
        for c in range(len(chunks)):
            chunk = chunks[c] = [None] * per
            for i in range(per):
                chunk[i] = object()
    except MemoryError:
        pass
    for chunk in chunks:
        for i in range(per if chunk else 0):
            if chunk[i] is not None and (address(chunk[i]) // block) % run:
                chunk[i] = None
    gc.collect()
    plugs = []
    plug(plugs, size, block)
    return chunks, plugs


# A garbage object that a stale pointer kept alive while the heap filled up leaves a larger hole
# when it goes, and a failed allocation leaves its exception as garbage: plugs holes until two
# collections in a row leave no run of `size` bytes. Call it again where the stack is shallower
# (stale pointers on the deeper stack are gone there).
def plug(plugs, size, block=None):
    block = block or block_size()
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
