"""Device (MicroPython process) <-> host (CPython) sessions over a hostile network.

X3DH in both directions, and both sides starting at once (simultaneous initiation, docs/protocol.md
§6 "Session records"), then at least 200 messages each way through a simulated network that
reorders, drops and duplicates, with both sides restarted from their stored sessions midway (the
device by SIGKILL). Every delivered message decrypts exactly once to its plaintext; every
duplicate is refused with DuplicateMessage.
"""
from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from support import DEVICE_TESTS

from e2ee.protocol import ratchet, session
from e2ee.protocol.keys import PrekeyBundle
from e2ee.protocol.session import SessionManager

STORAGE_KEY = bytes(range(32))
MESSAGES = 200  # per direction


class Device:
    """The MicroPython side, one process; restart() kills it with SIGKILL and reopens its flash.
    trust=True gives it a TrustStore (certified sessions, tests/protocol/test_trust.py)."""

    def __init__(self, micropython, directory: Path, trust: bool = False):
        self.micropython, self.directory = micropython, str(directory)
        self.store_args = (self.directory, STORAGE_KEY.hex()) + (("trust",) if trust else ())
        self._spawn()
        assert self._call("create", *self.store_args) == "ok"

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [self.micropython.binary, "-X", "heapsize=" + self.micropython.heapsize, str(DEVICE_TESTS / "session_peer.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=self.micropython.env())

    def _call(self, *words: str | bytes | bytearray) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(" ".join(w if isinstance(w, str) else w.hex() for w in words) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("device died:\n" + self.proc.stdout.read())
        return line.strip()

    def restart(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._spawn()
        assert self._call("open", *self.store_args) == "ok"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def bundle(self) -> bytes:
        return bytes.fromhex(self._call("bundle", self._call("opk")))

    def start(self, peer: str, bundle: bytes) -> None:
        assert self._call("start", peer, bundle.hex()) == "ok"

    def encrypt(self, peer: str, plaintext: bytes) -> bytes:
        return bytes.fromhex(self._call("enc", peer, plaintext.hex()))

    def decrypt(self, peer: str, data: bytes) -> tuple[str, bytes | str]:
        status, value = self._call("dec", peer, data.hex()).split(" ", 1)
        return (status, bytes.fromhex(value)) if status == "ok" else (status, value)


class Host:
    """The CPython side: the same protocol core with the host crypto backend."""

    def __init__(self, directory: Path):
        self.directory = str(directory)
        self.manager = SessionManager.create(self.directory, STORAGE_KEY, one_time=5)

    def restart(self) -> None:
        self.manager = SessionManager.open(self.directory, STORAGE_KEY)

    def close(self) -> None:
        pass

    def bundle(self) -> bytes:
        return self.manager.bundle(self.manager.keystore.one_time_prekey_ids()[0]).to_bytes()

    def start(self, peer: str, bundle: bytes) -> None:
        self.manager.start(peer, PrekeyBundle.from_bytes(bundle))

    def encrypt(self, peer: str, plaintext: bytes) -> bytes:
        return self.manager.encrypt(peer, plaintext)

    def decrypt(self, peer: str, data: bytes) -> tuple[str, bytes | str]:
        try:
            return "ok", bytes(self.manager.decrypt(peer, data))
        except ratchet.RatchetError as e:
            return "err", type(e).__name__


class Link:
    """One direction of the network: reorders (picks among the 4 oldest), drops 5 %,
    duplicates 5 % of the messages sent over it."""

    def __init__(self, rng: random.Random, sender, receiver, receiver_calls_sender: str):
        self.rng, self.sender, self.receiver, self.name = rng, sender, receiver, receiver_calls_sender
        self.queue: list[tuple[int, bytes]] = []
        self.sent = 0
        self.expected: dict[int, bytes] = {}
        self.decrypted: set[int] = set()
        self.duplicates_refused = self.dropped = 0

    def send(self, peer_name: str) -> None:
        plaintext = b"%s message %d " % (peer_name.encode(), self.sent) + self.rng.randbytes(self.rng.randrange(0, 80))
        self.expected[self.sent] = plaintext
        envelope = self.sender.encrypt(peer_name, plaintext)
        if self.rng.random() < 0.05:
            self.dropped += 1
        else:
            self.queue.append((self.sent, envelope))
            if self.rng.random() < 0.05:
                self.queue.insert(self.rng.randrange(len(self.queue) + 1), (self.sent, envelope))
        self.sent += 1

    def deliver(self, count: int) -> None:
        for _ in range(min(count, len(self.queue))):
            seq, envelope = self.queue.pop(self.rng.randrange(min(4, len(self.queue))))
            status, value = self.receiver.decrypt(self.name, envelope)
            if seq in self.decrypted:
                assert (status, value) == ("err", "DuplicateMessage"), (seq, status, value)
                self.duplicates_refused += 1
            else:
                assert status == "ok" and value == self.expected[seq], (seq, status, value)
                self.decrypted.add(seq)


def converse(rng: random.Random, device: Device, host: Host, a_to_b: Link, b_to_a: Link) -> None:
    """Sends and delivers at random until MESSAGES went each way, restarts both sides midway,
    then delivers the rest: every message that was not dropped decrypted exactly once."""
    restarted = False
    while a_to_b.sent < MESSAGES or b_to_a.sent < MESSAGES:
        for _ in range(rng.randrange(0, 4)):
            a_to_b.send("b")
        if b_to_a.queue or a_to_b.decrypted or b_to_a.sent:  # b needs a session to send
            for _ in range(rng.randrange(0, 4)):
                b_to_a.send("a")
        a_to_b.deliver(rng.randrange(0, 5))
        b_to_a.deliver(rng.randrange(0, 5))
        if not restarted and a_to_b.sent > MESSAGES // 2:
            device.restart()  # power cut: SIGKILL, reopen from flash
            host.restart()
            restarted = True
    for link in (a_to_b, b_to_a):
        link.deliver(len(link.queue))
        assert not link.queue
        assert len(link.decrypted) == link.sent - link.dropped
        assert link.sent >= MESSAGES
    assert restarted and a_to_b.duplicates_refused + b_to_a.duplicates_refused > 0
    assert a_to_b.dropped + b_to_a.dropped > 0


@pytest.mark.parametrize("initiator", ["device", "host"])
def test_device_host_conversation(micropython, tmp_path, initiator):
    rng = random.Random("interop-" + initiator)
    device, host = Device(micropython, tmp_path / "device"), Host(tmp_path / "host")
    try:
        a, b = (device, host) if initiator == "device" else (host, device)
        a.start("b", b.bundle())  # X3DH: a fetched b's bundle
        a_to_b = Link(rng, a, b, "a")
        b_to_a = Link(rng, b, a, "b")
        a_to_b.send("b")
        a_to_b.deliver(1)  # b holds a session only once a's first message arrived
        converse(rng, device, host, a_to_b, b_to_a)
    finally:
        device.close()


@pytest.mark.parametrize("first", ["device", "host"])
def test_device_host_simultaneous_start(micropython, tmp_path, first):
    # Both fetch the other's bundle and start a session before either hears from the other; their
    # PreKeyMessages cross and `first` decrypts the other's first. Each side then holds the
    # session it answered as current and its own archived; the conversation goes on over the
    # hostile network (messages of both sessions in flight, a restart midway) and nothing that
    # was not dropped is lost.
    rng = random.Random("simultaneous-" + first)
    device, host = Device(micropython, tmp_path / "device"), Host(tmp_path / "host")
    try:
        a, b = (device, host) if first == "device" else (host, device)
        a.start("b", b.bundle())
        b.start("a", a.bundle())
        a_to_b = Link(rng, a, b, "a")
        b_to_a = Link(rng, b, a, "b")
        for _ in range(3):  # PreKeyMessages of both sessions
            a_to_b.send("b")
            b_to_a.send("a")
        assert a_to_b.queue and b_to_a.queue, "some PreKeyMessages of each side got through"
        b_to_a.deliver(1)  # a decrypts one of b's PreKeyMessages first
        a_to_b.send("b")  # a's first message in the session it answered
        a_to_b.deliver(2)
        converse(rng, device, host, a_to_b, b_to_a)
        host_peer, device_peer = ("a", "b") if first == "device" else ("b", "a")
        records = (host.manager.session_bytes(host_peer), bytes.fromhex(device._call("session", device_peer)))
        for record in records:
            assert len(session._Record.from_bytes(record).states) == 2, "both sessions kept"
    finally:
        device.close()


def test_power_cuts_while_saving_sessions(micropython, tmp_path):
    # The device encrypts (and saves its session) in a loop and is SIGKILLed at a random instant,
    # 25 times; the cut often lands inside the session write. After every cut the device reopens
    # from flash, the host decrypts everything the device had handed out, and every fifth round
    # the host answers and the device decrypts it: the conversation goes on.
    import signal
    import time

    rng = random.Random(11)
    device, host = Device(micropython, tmp_path / "device"), Host(tmp_path / "host")
    try:
        device.start("host", host.bundle())
        assert host.decrypt("device", device.encrypt("host", b"hello"))[0] == "ok"
        device.close()
        cmd = [micropython.binary, "-X", "heapsize=" + micropython.heapsize, str(DEVICE_TESTS / "session_power_cut.py"),
               str(tmp_path / "device"), STORAGE_KEY.hex()]
        received = 0
        for round_ in range(25):
            proc = subprocess.Popen(cmd + ["round%d" % round_], stdout=subprocess.PIPE, text=True,
                                    env=micropython.env())
            time.sleep(rng.uniform(0.15, 0.4))
            proc.send_signal(signal.SIGKILL)
            out = proc.communicate()[0]
            for line in out[: out.rfind("\n") + 1].splitlines():
                plaintext, envelope = (bytes.fromhex(x) for x in line.split())
                assert host.decrypt("device", envelope) == ("ok", plaintext)
                received += 1
            if round_ % 5 == 4:
                device._spawn()
                assert device._call("open", device.directory, STORAGE_KEY.hex()) == "ok"
                reply = b"host reply %d" % round_
                assert device.decrypt("host", host.encrypt("device", reply)) == ("ok", reply)
                device.close()
        assert received > 25
    finally:
        device.close()
