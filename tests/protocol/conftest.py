"""Protocol tests give MicroPython a 256 KB heap instead of the ESP32's 120 KB.

Imported as .mpy files, the protocol stack keeps its bytecode in the heap on the unix port: about
110 KB with the viper crypto backend (docs/performance.md), so a 120 KB heap leaves too little and
how little depends on incidental layout (path lengths shift it). Boards run the SDK frozen, with
its bytecode in flash (issue 7); until the virtual board can run frozen code, the protocol tests
check behaviour with this heap, and scripts/bench reports what the stack holds. With the SDK
frozen into the binary (E2EE_DEVICE_FROZEN=1, the local check in docs/performance.md) the code is
out of the heap, as on a board, and the protocol tests run with the ESP32's 120 KB.
"""
from __future__ import annotations

import dataclasses
import os

import pytest

PROTOCOL_HEAP = "120K" if os.environ.get("E2EE_DEVICE_FROZEN") else "256K"


@pytest.fixture(scope="session")
def micropython(micropython):
    return dataclasses.replace(micropython, heapsize=PROTOCOL_HEAP)
