"""Shared fixtures: run device code under the real MicroPython unix port (tests/support.py)."""
from __future__ import annotations

import os

import pytest
from support import ROOT, MicroPython, e2ee_micropython


@pytest.fixture(scope="session")
def micropython(tmp_path_factory) -> MicroPython:
    try:
        binary = e2ee_micropython.binary()
        if os.environ.get("E2EE_DEVICE_FROZEN"):
            return MicroPython(binary, None)
        if os.environ.get("E2EE_DEVICE_SOURCE"):
            return MicroPython(binary, ROOT / "firmware")
        sdk = tmp_path_factory.mktemp("sdk-mpy")
        e2ee_micropython.compile_sdk(sdk, e2ee_micropython.native_arch(binary))
        return MicroPython(binary, sdk)
    except FileNotFoundError as e:
        pytest.fail(str(e))
