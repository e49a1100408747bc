"""Issue 13, no silent loss, between hosts on the project's Mosquitto and the service (docs/protocol.md
§8): 3,000 messages to a host that is offline, delivered exactly once and in order when it comes
back (the window keeps all but 16 in the sender's outbox, so the broker's queue never overflows),
and a broker SIGKILLed and restarted in the middle of 200 messages: every one delivered exactly
once (the outbox resends what the broker lost), every one reported delivered to its sender.

Before the delivery layer: the broker kept 1,000 of 3,000 (max_queued_messages), dropped the rest
with a log line, and the session failed for good (TooManySkipped); a SIGKILL lost what came since
the last autosave and made the following messages undecryptable."""
from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2ee.protocol.delivery import DELIVERED, WINDOW
from e2ee_host.broker import MosquittoProcess
from e2ee_host.devstack import wired_service
from e2ee_host.client import OperatorClient
from e2ee_host.install import HostInstall
from e2ee_host.messenger import Messenger
from e2ee_host.service import ServiceProcess

FLEET = "plant-north"
OPERATOR_KEY = "no-silent-loss-operator-key-71c3"


class System:
    def __init__(self, broker: MosquittoProcess, service: ServiceProcess) -> None:
        self.broker, self.service = broker, service
        self.op = OperatorClient(service.url, OPERATOR_KEY)

    def install(self, directory: Path, device_id: str) -> HostInstall:
        """An enrolled host whose mailbox is open at the broker (it keeps its inbox from now on)."""
        inst = HostInstall.init(directory, self.service.url, device_id, FLEET, self.op.create_claims(FLEET).tokens[0])
        link = inst.link(timeout=30).connect()
        try:
            inst.open_mailbox(link)
        finally:
            link.close()
        return inst


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Iterator[System]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("no-silent-loss")
    with MosquittoProcess(tmp / "broker") as broker:
        with wired_service(broker, tmp / "service.log", tmp / "service", OPERATOR_KEY) as service:
            yield System(broker, service)


def _drain(sender: Messenger, receiver: Messenger, want: int, timeout: float) -> None:
    """Both sides pump until the receiver holds `want` messages and the sender's outbox is empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        receiver.pump(0.02)
        sender.pump(0.0)
        if len(receiver.received) >= want and sender.pending(receiver.inst.device_id) == 0:
            return
    raise AssertionError("after %.0f s: %d of %d received, %d awaiting a receipt" % (
        timeout, len(receiver.received), want, sender.pending(receiver.inst.device_id)))


def _delivered(statuses: list[tuple[str, int, str, str | None]]) -> list[int]:
    return sorted(seq for _, seq, status, _ in statuses if status == DELIVERED)


def test_3000_messages_to_an_offline_host_arrive_once_in_order(system: System, tmp_path: Path) -> None:
    alice = system.install(tmp_path / "alice", "nsl-alice")
    bob = system.install(tmp_path / "bob", "nsl-bob")  # offline from here: no process of his runs
    statuses: list[tuple[str, int, str, str | None]] = []
    texts = [b"reading %04d" % i for i in range(3000)]
    with Messenger.open(alice, on_status=lambda *s: statuses.append(s)) as sender:
        started = time.monotonic()
        for text in texts:
            sender.delivery.send("nsl-bob", text)
        queued = time.monotonic() - started
        sender.pump(0.5)
        assert sender.pending("nsl-bob") == 3000
        assert len([s for s in statuses if s[2] == "sent"]) == WINDOW  # the rest waits in the outbox
        started = time.monotonic()
        with Messenger.open(bob) as receiver:  # bob is back
            _drain(sender, receiver, 3000, 300)
            drained = time.monotonic() - started
            assert receiver.received == [("nsl-alice", t) for t in texts], "not all, not once, or not in order"
            assert receiver.duplicates == 0 and receiver.failed == 0
            assert _delivered(statuses) == list(range(1, 3001))
            # the session works afterwards, both ways
            receiver.send("nsl-alice", b"all 3000 here")
            sender.send("nsl-bob", b"good")
            _drain(sender, receiver, 3001, 60)
            _drain(receiver, sender, 1, 60)
            assert receiver.received[-1] == ("nsl-alice", b"good") and sender.received == [("nsl-bob", b"all 3000 here")]
    print("3000 messages: queued in %.1f s, drained in %.1f s after the recipient came back" % (queued, drained))


def test_broker_sigkill_mid_stream_loses_nothing(system: System, tmp_path: Path) -> None:
    alice = system.install(tmp_path / "alice", "nsl-ann")
    bob = system.install(tmp_path / "bob", "nsl-ben")
    statuses: list[tuple[str, int, str, str | None]] = []
    texts = [b"command %03d" % i for i in range(200)]
    with Messenger.open(alice, timeout=5, on_status=lambda *s: statuses.append(s)) as sender, \
            Messenger.open(bob, timeout=5) as receiver:
        for text in texts:
            sender.delivery.send("nsl-ben", text)
        deadline = time.monotonic() + 60
        while len(receiver.received) < 80 and time.monotonic() < deadline:
            receiver.pump(0.01)
            sender.pump(0.0)
        assert len(receiver.received) >= 80
        at = len(receiver.received)
        # mid-stream: messages on the way at the broker, receipts on their way back
        proc = system.broker._proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for _ in range(20):  # sends fail while it is down: they stay in the outbox
            sender.pump(0.05)
            receiver.pump(0.05)
        system.broker.start()
        _drain(sender, receiver, 200, 120)
        got = [t for _, t in receiver.received]
        assert sorted(got) == sorted(texts) and len(got) == 200, "lost or delivered twice"
        assert _delivered(statuses) == list(range(1, 201))
        assert sender.link.connects >= 2 and receiver.link.connects >= 2  # both really reconnected
    resent = len([s for s in statuses if s[3] == "resent"])
    print("broker SIGKILL at %d of 200: %d resent, %d duplicates dropped by the receiver" % (
        at, resent, receiver.duplicates))


def test_a_gap_of_100_lost_messages_heals_by_a_signed_reset(system: System, tmp_path: Path) -> None:
    """100 messages lost on the way (the sender's session spent their keys, the broker never saw
    them): the receiver cannot decrypt the next one (TooManySkipped: beyond MAX_SKIP), sends a
    signed reset request; the sender checks it, starts a new session from a fresh bundle of the
    service and resends; the message decrypts, once, and the session works both ways."""
    from e2ee.protocol import delivery
    alice = system.install(tmp_path / "alice", "nsl-amy")
    bob = system.install(tmp_path / "bob", "nsl-bo")
    with Messenger.open(alice) as sender, Messenger.open(bob) as receiver:
        sender.send("nsl-bo", b"first")
        _drain(sender, receiver, 1, 30)
        for _ in range(100):
            alice.sessions.encrypt("nsl-bo", delivery.encode_data(b"\x00" * 8, 1, b"lost"))
        sender.send("nsl-bo", b"after the gap")
        _drain(sender, receiver, 2, 60)
        assert receiver.received == [("nsl-amy", b"first"), ("nsl-amy", b"after the gap")]
        assert receiver.failed == 1 and receiver.last_error == "TooManySkipped"
        assert receiver.delivery.resets_asked == 1 and sender.delivery.resets_taken == 1
        receiver.send("nsl-amy", b"and back")
        _drain(receiver, sender, 1, 30)
        assert sender.received == [("nsl-bo", b"and back")]
