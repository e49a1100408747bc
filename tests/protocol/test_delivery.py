"""End-to-end delivery (docs/protocol.md §8): tests/device/check_delivery.py on MicroPython and
CPython: the outbox and its window, receipts, exactly-once by message id across lossy networks,
reboots and session resets, a forced gap of 100 lost messages healed by a signed reset, forged,
replayed and too-early resets refused, full outboxes, expiry and undeliverable peers reported."""
from __future__ import annotations

import pytest
from test_session import run_device_script


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_delivery(runtime, micropython, tmp_path):
    out = run_device_script(runtime, micropython, "check_delivery.py", str(tmp_path))
    assert out.strip().endswith("ok delivery"), out
