"""The README's main command: the demo runs the protocol core between a MicroPython device and the
CPython host, and what it prints is what happened on each side and on the wire."""
from __future__ import annotations

import re

from support import run_demo

DEVICE_SENT = ["hello host, sensor-1 here", "temperature 21.5 C", "temperature 21.7 C",
               "yes: rebooted, session restored from flash"]
HOST_SENT = ["welcome sensor-1", "set interval 60 s", "set threshold 30 C", "still there?"]


def received(lines: list[str], prefix: str) -> list[str]:
    return [line[len(prefix):] for line in lines if line.startswith(prefix)]


def test_demo_runs_the_protocol_end_to_end(tmp_path):
    out, lines = run_demo("e2ee_host.demo", tmp_path)  # its temporary directory lands in tmp_path
    assert "device: MicroPython unix port, heap 256K" in out and "~113 KB" in out
    assert lines.count("device: crypto backend viper") == 2  # first boot and reboot
    assert "host:   CPython, crypto backend host" in lines

    # Both identities: each side's own fingerprint is the one the other side binds its session to;
    # the device comes back from its flash with the same identity and session.
    (host_fp,) = re.findall(r"^host:   my fingerprint ([0-9a-f]{32})$", out, re.M)
    device_fps = re.findall(r"^device: my fingerprint ([0-9a-f]{32})$", out, re.M)
    assert len(device_fps) == 2 and device_fps[0] == device_fps[1] != host_fp
    device_fp = device_fps[0]
    assert "device: X3DH with host from its bundle, fingerprint " + host_fp in lines
    assert ("host:   session with sensor-1 from its PreKeyMessage, fingerprint %s (the device's own)"
            % device_fp) in lines
    host_sizes = re.findall(r"^host:   session with sensor-1 \(fingerprint %s\): (\d+) bytes, (\d+) on disk "
                            r"encrypted$" % device_fp, out, re.M)
    device_sizes = re.findall(r"^device: session with host \(fingerprint %s\): (\d+) bytes, (\d+) on flash "
                              r"encrypted$" % host_fp, out, re.M)
    assert len(host_sizes) == 2 and len(device_sizes) == 3
    for record, stored in host_sizes + device_sizes:
        assert 400 < int(record) < 5120 and int(stored) == int(record) + 29  # version, nonce, tag

    # Every plaintext decrypted on the other side, in delivery order: the second temperature
    # overtook the first; the last message each way came after the power cut and the reboot.
    host_got = received(lines, "host:   decrypted from sensor-1: ")
    device_got = received(lines, "device: decrypted from host: ")
    assert host_got == [DEVICE_SENT[0], DEVICE_SENT[2], DEVICE_SENT[1], DEVICE_SENT[3]]
    assert device_got == HOST_SENT
    cut = lines.index("device: -- power cut (SIGKILL) --")
    assert lines[cut + 1] == "device: rebooted, identity and sessions reopened from flash: ['host']"
    assert lines.index("device: decrypted from host: still there?") > cut
    assert lines.index("host:   decrypted from sensor-1: " + DEVICE_SENT[3]) > cut

    # The replayed envelope is refused once, with DuplicateMessage, and it was a real replay.
    assert lines.count("device: refused an envelope from host: DuplicateMessage") == 1
    refusal = lines.index("device: refused an envelope from host: DuplicateMessage")
    replay = lines[refusal - 1]
    assert replay.endswith("  (replayed by the network)")
    original = lines[lines.index("device: decrypted from host: set interval 60 s") - 1]
    assert original == replay[: -len("  (replayed by the network)")]

    # The wire: the bundle, one PreKeyMessage, then RatchetMessages; ciphertext, never plaintext.
    wire = [line for line in lines if line.startswith("wire:")]
    assert [line.split()[4] for line in wire] == ["PrekeyBundle", "PreKeyMessage"] + ["RatchetMessage"] * 8
    for line in wire[1:]:
        assert re.search(r" ciphertext [0-9a-f]{24}\.\.\.", line), line
    for line in wire:
        for text in DEVICE_SENT + HOST_SENT:
            data = text.encode()
            assert text not in line and data.hex() not in line and data[:8].hex() not in line, line
