"""The protocol-only demo (`python -m e2ee_host.demo`; the main demo is e2ee_host.system_demo): the
protocol core across runtimes.

A MicroPython device (the real unix-port binary running firmware/examples/session_demo.py with the
SDK compiled to .mpy) and this CPython host each run a SessionManager (docs/protocol.md §6) with
its own encrypted record stores in a temporary directory: the device's flash, the host's disk.
The host publishes its prekey bundle, the device runs X3DH from it and sends a PreKeyMessage, the
host answers, and messages go both ways with one delivered out of order and one replayed (refused).
Then the device loses power (SIGKILL), boots again from its flash and the conversation goes on.

Printed: what each side sees (plaintexts, both identities' fingerprints, stored session sizes),
and what the wire carries: envelope type, size, message number and a prefix of the ciphertext.
Everything it starts is stopped and its temporary directory removed. The full system (provisioning
service, Mosquitto, virtual boards, a host) is the main demo, `scripts/demo`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from e2ee import crypto
from e2ee.protocol import envelope
from e2ee.protocol.keys import fingerprint
from e2ee.protocol.session import SessionManager
from e2ee_host import micropython, resources

DEVICE_SCRIPT = resources.folder("firmware/examples") / "session_demo.py"
# The whole stack imported as .mpy keeps its bytecode in the unix port's heap (~113 KB,
# docs/performance.md); boards run it frozen in flash (issue 7).
HEAP = "256K"
DEVICE = "sensor-1"  # the host's name for the device
HOST = "host"  # the device's name for the host
ANSWERS = ("ready", "ok", "wire", "refused")


class DemoFailed(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(what)


def show_wire(direction: str, data: bytes, note: str = "") -> None:
    """One line per envelope on the wire: its type, size, message number, ciphertext prefix."""
    message = envelope.decode(data)
    inner = message.message if isinstance(message, envelope.PreKeyMessage) else message
    print("wire:   %s  %-15s %3d bytes  n=%d  ciphertext %s...%s" % (
        direction, message.NAME, len(data), inner.n, bytes(inner.ciphertext[:12]).hex(), note))


class Device:
    """A virtual board: the MicroPython unix port running the device app over a pipe. Lines that
    start with "device:" are what the device shows; the others answer the host's commands."""

    def __init__(self, sdk_dir: Path, flash: Path, storage_key: bytes) -> None:
        self.cmd = [micropython.binary(), "-X", "heapsize=" + HEAP, str(DEVICE_SCRIPT),
                    str(flash), storage_key.hex()]
        self.env = micropython.device_env(sdk_dir)
        self.proc: subprocess.Popen[str] | None = None

    def boot(self) -> str:
        """Starts the process; returns the device's identity fingerprint (hex)."""
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=self.env)
        return self._answer("ready")

    def _answer(self, expected: str) -> str:
        assert self.proc and self.proc.stdout
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise DemoFailed("device stopped (exit %s)" % self.proc.wait())
            word, _, value = line.rstrip("\n").partition(" ")
            if word not in ANSWERS:
                print(line.rstrip())
                continue
            check(word == expected, "device answered %r, expected %s" % (line.strip(), expected))
            return value

    def _command(self, expected: str, *words: str) -> str:
        assert self.proc and self.proc.stdin
        self.proc.stdin.write(" ".join(words) + "\n")
        self.proc.stdin.flush()
        return self._answer(expected)

    def start(self, peer: str, bundle: bytes) -> None:
        self._command("ok", "start", peer, bundle.hex())

    def send(self, peer: str, text: str) -> bytes:
        return bytes.fromhex(self._command("wire", "send", peer, text))

    def deliver(self, peer: str, data: bytes, note: str = "") -> None:
        show_wire("host -> device", data, note)
        self._command("ok", "recv", peer, data.hex())

    def deliver_refused(self, peer: str, data: bytes, note: str) -> str:
        show_wire("host -> device", data, note)
        return self._command("refused", "recv", peer, data.hex())

    def show_session(self, peer: str) -> None:
        self._command("ok", "size", peer)

    def power_cut(self) -> None:
        assert self.proc
        self.proc.kill()
        self.proc.wait()
        print("device: -- power cut (SIGKILL) --")

    def stop(self) -> int:
        """Closes the command line (the app returns) and waits; kills it if it hangs."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        try:
            if proc.poll() is None:
                assert proc.stdin and proc.stdout
                proc.stdin.close()
                for line in proc.stdout:
                    print(line.rstrip())
            return proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class Host:
    """The CPython side: the same protocol core on the `host` crypto backend, records on disk."""

    def __init__(self, directory: Path, storage_key: bytes) -> None:
        self.directory = directory
        self.manager = SessionManager.create(str(directory), storage_key, one_time=5)

    def receive(self, peer: str, data: bytes, note: str = "") -> str:
        show_wire("device -> host", data, note)
        text = bytes(self.manager.decrypt(peer, data)).decode()
        print("host:   decrypted from %s: %s" % (peer, text))
        return text

    def send(self, peer: str, text: str) -> bytes:
        print("host:   sending to %s: %s" % (peer, text))
        return self.manager.encrypt(peer, text.encode())

    def show_session(self, peer: str) -> None:
        on_disk = os.path.getsize(self.directory / "sessions" / peer)
        print("host:   session with %s (fingerprint %s): %d bytes, %d on disk encrypted" % (
            peer, fingerprint(*self.manager.peer_identity(peer)).hex(),
            len(self.manager.session_bytes(peer)), on_disk))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="e2ee-demo-") as tmp:
        sdk = Path(tmp) / "sdk"
        micropython.compile_sdk(sdk, micropython.native_arch())
        device = Device(sdk, Path(tmp) / "device-flash", crypto.random_bytes(32))
        try:
            run(device, Host(Path(tmp) / "host-disk", crypto.random_bytes(32)))
            status = device.stop()
            check(status == 0, "device exit %d" % status)
        except DemoFailed as e:
            print("demo FAILED:", e)
            return 1
        finally:
            device.stop()
    print("demo finished")
    return 0


def run(device: Device, host: Host) -> None:
    print("e2ee-iot demo: sessions between a MicroPython device and a CPython host "
          "(X3DH, Double Ratchet, encrypted stores)")
    print("device: MicroPython unix port, heap %s: the whole stack as .mpy needs ~113 KB of heap "
          "on the unix port (boards keep its bytecode in flash)" % HEAP)
    print("host:   CPython, crypto backend", crypto.default.name)
    host_fp = host.manager.keystore.fingerprint().hex()
    print("host:   my fingerprint", host_fp)
    device_fp = device.boot()

    print("-- the host publishes its prekey bundle; the device starts a session from it (X3DH)")
    bundle = host.manager.bundle(host.manager.keystore.one_time_prekey_ids()[0]).to_bytes()
    print("wire:   host -> device  PrekeyBundle    %3d bytes  public keys and signature %s..." % (
        len(bundle), bundle[:12].hex()))
    device.start(HOST, bundle)
    host.receive(DEVICE, device.send(HOST, "hello host, sensor-1 here"))
    seen = fingerprint(*host.manager.peer_identity(DEVICE)).hex()
    check(seen == device_fp, "the host sees fingerprint %s, the device has %s" % (seen, device_fp))
    print("host:   session with %s from its PreKeyMessage, fingerprint %s (the device's own)" % (DEVICE, seen))
    device.deliver(HOST, host.send(DEVICE, "welcome sensor-1"))

    print("-- messages both ways; the network delivers one out of order and replays another")
    first = device.send(HOST, "temperature 21.5 C")
    second = device.send(HOST, "temperature 21.7 C")
    check(host.receive(DEVICE, second, "  (overtook the one before)") == "temperature 21.7 C", "second")
    check(host.receive(DEVICE, first, "  (late)") == "temperature 21.5 C", "late message")
    command = host.send(DEVICE, "set interval 60 s")
    device.deliver(HOST, command)
    refused = device.deliver_refused(HOST, command, "  (replayed by the network)")
    check(refused == "DuplicateMessage", "replay answered %s" % refused)
    device.deliver(HOST, host.send(DEVICE, "set threshold 30 C"))
    host.show_session(DEVICE)
    device.show_session(HOST)

    print("-- the device loses power and boots again from its flash")
    device.power_cut()
    rebooted_fp = device.boot()
    check(rebooted_fp == device_fp, "the device came back with another identity")
    device.show_session(HOST)
    device.deliver(HOST, host.send(DEVICE, "still there?"))
    host.receive(DEVICE, device.send(HOST, "yes: rebooted, session restored from flash"))
    host.show_session(DEVICE)
    device.show_session(HOST)


if __name__ == "__main__":
    sys.exit(main())
