"""The README's main command: the demo runs to the end and shows a real cross-runtime exchange."""
from __future__ import annotations

import subprocess
import sys

from support import ROOT


def test_demo_runs_end_to_end():
    proc = subprocess.run([sys.executable, "-m", "e2ee_host.demo"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "device: crypto backend viper" in out
    assert "host: crypto backend host" in out
    assert "host: decrypted: hello from the MicroPython device" in out
    assert "device: decrypted reply: hello from the CPython host" in out
    # The channel carries ciphertext, never the plaintext.
    channel = [line for line in out.splitlines() if "channel" in line]
    assert len(channel) == 8
    assert not any("hello" in line or "68656c6c6f" in line for line in channel)
    assert out.rstrip().endswith("demo finished")
