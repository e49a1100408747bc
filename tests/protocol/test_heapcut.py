"""tests/device/heapcut.py, which cuts a MicroPython heap into short free runs for the fragmented-heap
checks (check_record_heap.py, bench/record_heap.py): it reads the GC block size from the heap and
addresses without allocating, so it also works where id() would build big ints on the full heap
it makes (32-bit builds, whose heap sits above 2^30: `E2EE_MICROPYTHON=<32-bit build>`, the local
check in docs/performance.md). Sizes: 512 bytes, and the runs the record check cuts (MAX_RECORD/4)."""
from __future__ import annotations

import pytest
from support import DEVICE_TESTS

from e2ee.protocol.store import MAX_RECORD


@pytest.mark.parametrize("heap", ["120K", "288K"])
def test_heapcut_micropython(micropython, heap: str) -> None:  # type: ignore[no-untyped-def]
    out = micropython.run(DEVICE_TESTS / "check_heapcut.py", "512", "2000", str(MAX_RECORD // 4), heapsize=heap)
    assert out.strip().startswith("ok heapcut "), out
