"""Checks that run SDK code through `micropython.run` (tests/device/check_sender_key.py) get the
protocol tests' heap, for the reason tests/protocol/conftest.py gives: imported as .mpy files the
SDK keeps its bytecode in the unix port's heap (of 120 KB, 44 KB are free once sender_key is
loaded, 32 KB with group, before the check script compiles). The group members of
test_groups.py (DeviceMember) run their own processes at the ESP32's 120 KB."""
from __future__ import annotations

import dataclasses
import os

import pytest

PROTOCOL_HEAP = "120K" if os.environ.get("E2EE_DEVICE_FROZEN") else "256K"


@pytest.fixture(scope="session")
def micropython(micropython):  # type: ignore[no-untyped-def]
    return dataclasses.replace(micropython, heapsize=PROTOCOL_HEAP)
