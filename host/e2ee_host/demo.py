"""The main demo (README's first command).

Today it shows the crypto layer working across runtimes: a MicroPython device (the real unix-port
binary with an ESP32-sized 120 KB heap) and this CPython host run an Ed25519-authenticated X25519
key agreement and exchange ChaCha20-Poly1305 messages. The demo prints what each side sees and
what the channel carries (public keys, signatures, ciphertext only). Later issues grow it into the
full system demo (provisioning service, Mosquitto, several devices).
"""
from __future__ import annotations

import subprocess
import tempfile
import sys
from pathlib import Path

from e2ee import crypto
from e2ee_host import micropython

ROOT = Path(__file__).resolve().parents[2]
DEVICE_SCRIPT = ROOT / "firmware" / "examples" / "crypto_handshake.py"
INFO = b"e2ee-iot demo v1"
HEAP = "120K"


class Device:
    """A virtual board: the MicroPython unix port running the device script over a pipe."""

    def __init__(self, sdk_dir: Path) -> None:
        env = micropython.device_env(sdk_dir)
        self.proc = subprocess.Popen(
            [micropython.binary(), "-X", "heapsize=" + HEAP, str(DEVICE_SCRIPT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def receive(self, label: str) -> bytes:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("device stopped (exit %s)" % self.proc.wait())
            got, _, value = line.strip().partition(" ")
            if got == label:
                print("  channel  device -> host  %-10s %s" % (label, value[:64]))
                return bytes.fromhex(value)
            print("  " + line.rstrip())

    def send(self, label: str, data: bytes) -> None:
        assert self.proc.stdin is not None
        print("  channel  host -> device  %-10s %s" % (label, data.hex()[:64]))
        self.proc.stdin.write("%s %s\n" % (label, data.hex()))
        self.proc.stdin.flush()

    def finish(self) -> int:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            print("  " + line.rstrip())
        return self.proc.wait()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="e2ee-sdk-") as sdk:
        micropython.compile_sdk(Path(sdk), micropython.native_arch())
        return run(Device(Path(sdk)))


def run(device: Device) -> int:
    print("e2ee-iot crypto demo: MicroPython device (heap %s) <-> CPython host" % HEAP)
    print("host: crypto backend", crypto.default.name)
    identity = crypto.random_bytes(32)
    ephemeral = crypto.random_bytes(32)
    public = crypto.x25519_base(ephemeral)
    device_identity = device.receive("identity")
    device_public = device.receive("public")
    crypto.ed25519_verify(device_identity, device_public, device.receive("signature"))
    print("host: device signature on its X25519 key verifies")
    device.send("identity", crypto.ed25519_public_key(identity))
    device.send("public", public)
    device.send("signature", crypto.ed25519_sign(identity, public))
    shared = crypto.x25519(ephemeral, device_public)
    key = crypto.hkdf_sha256(shared, None, INFO + device_public + public, 32)
    message = crypto.aead_decrypt(key, bytes(12), device.receive("ciphertext"), device_public)
    print("host: decrypted:", bytes(message).decode())
    device.send("ciphertext", bytes(crypto.aead_encrypt(
        key, b"\x00" * 11 + b"\x01", b"hello from the CPython host", public)))
    status = device.finish()
    print("demo %s" % ("finished" if status == 0 else "FAILED (device exit %d)" % status))
    return status


if __name__ == "__main__":
    sys.exit(main())
