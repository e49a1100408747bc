# heapcut on the running MicroPython (tests/device/heapcut.py): the GC block size it reads from the
# heap is the build's (4 words), and after fragment(size) no free run of `size` bytes is left while
# most of the heap is still free, in runs of more than half of it. Usage: check_heapcut.py SIZE...
# (prints "ok heapcut BLOCK"). Runs on 64-bit and 32-bit builds (docs/performance.md, 32-bit check).
import gc
import sys

from heapcut import allocatable, block_size, fragment, plug


def check(size):
    gc.collect()
    before = gc.mem_free()
    chunks, plugs = fragment(size)
    plug(plugs, size)  # a shallower stack: stale pointers of fragment's frames are gone
    assert not allocatable(size), "a run of %d bytes is left" % size
    assert allocatable(size // 2), "no run of %d bytes: the heap is used up, not cut" % (size // 2)
    gc.collect()
    free = gc.mem_free()
    assert free * 2 > before, "only %d of %d bytes free after cutting into %d-byte runs" % (free, before, size)
    chunks = plugs = None


def main(sizes):
    block = block_size()
    word = 8 if sys.maxsize > 2 ** 32 else 4
    assert block == 4 * word, "GC block of %d bytes on a %d-bit build" % (block, 8 * word)
    for size in sizes:
        check(size)
        gc.collect()
    print("ok heapcut", block)


main([int(a) for a in sys.argv[1:]])
