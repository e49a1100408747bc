"""The README's main command (`scripts/demo` -> e2ee_host.system_demo): broker, service, two
virtual boards and a host client; what it prints is what each side saw, and it cleans up."""
from __future__ import annotations

import re

from support import run_demo


def test_system_demo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out, lines = run_demo("e2ee_host.system_demo", tmp_path)  # its temporary directory lands in tmp_path
    for board in ("valve-1", "valve-2"):
        assert re.search(r"^board %s: virtual ESP32 on /dev/pts/\d+, flashed \d+ files" % board, out, re.M)
        assert "board %s: generating identity keys on the board (they never leave it)" % board in lines
        assert "device: %s online (crypto viper, certified), inbox e2ee/v1/plant-north/d/%s/inbox" % (board, board) in lines
    # what each side decrypted, in order
    assert "device: valve-1 decrypted from gateway: open valve 1 at 07:00" in lines
    assert "device: valve-2 decrypted from gateway: close valve 2 at 07:05" in lines
    assert "host:   decrypted from valve-1: valve 1 open, flow 12 l/min" in lines
    assert "host:   decrypted from valve-2: valve 2 closed" in lines
    assert "device: valve-2 decrypted from valve-1: pressure low, open your bypass" in lines
    # what the broker carried: only ciphertext (the demo checks every payload too)
    broker_lines = [line for line in lines if line.startswith("broker: e2ee/v1/")]
    assert len(broker_lines) >= 6
    for line in broker_lines:
        for plaintext in ("open valve", "flow 12", "pressure low", "closed"):
            assert bytes(plaintext, "ascii").hex() not in line
    # revocation: the broker cut the board off, the host refuses it with the new list
    assert "device: valve-2 refused by the broker (5): revoked?" in lines
    assert any(re.match(r"host:   revocation list version 2 from the broker's retained topic", line) for line in lines)
    assert "host:   refuses valve-2: PeerRevoked" in lines
