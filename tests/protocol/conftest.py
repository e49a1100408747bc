"""Protocol tests give MicroPython a 288 KB heap instead of the ESP32's 120 KB.

Imported as .mpy files, the protocol stack keeps its bytecode in the heap on the unix port: about
110 KB with the viper crypto backend when this was 256 KB (docs/performance.md); 162 KB in use once
check_trust.py has imported what it runs (the audit fixes of issue 12 among the growth), which left
the largest free block of a 256 KB heap near 6 KB, so whether a 9 KB revocation list loaded
depended on incidental layout (path lengths shift it). A 120 KB heap leaves too little. Boards run the SDK frozen, with
its bytecode in flash (issue 7); until the virtual board can run frozen code, the protocol tests
check behaviour with this heap, and scripts/bench reports what the stack holds. With the SDK
frozen into the binary (E2EE_DEVICE_FROZEN=1, the local check in docs/performance.md) the code is
out of the heap, as on a board, and the protocol tests run with the ESP32's 120 KB.
"""
from __future__ import annotations

import dataclasses
import os

import pytest

PROTOCOL_HEAP = "120K" if os.environ.get("E2EE_DEVICE_FROZEN") else "288K"


@pytest.fixture(scope="session")
def micropython(micropython):
    return dataclasses.replace(micropython, heapsize=PROTOCOL_HEAP)
