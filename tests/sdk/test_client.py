"""e2ee_host.Client (e2ee_host.sdk) between installs on the project's broker and service:
delivery handles, the durable inbox with explicit acknowledgement (a message received and not
acknowledged comes back after reopening; what the broker handed over and nobody took is spooled
at close), a broker restart mid-stream losing nothing, groups, and a Client shared by threads."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from e2ee_host import Client, ClientClosed, ClientError, Message
from e2ee_host.install import NotGroupMember

from sdk_support import FLEET, System


def _pump_both(a: Client, b: Client, until: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:  # type: ignore[operator]
        a.pump(0.02)
        b.pump(0.02)
    assert until(), "not done within %.0f s" % timeout  # type: ignore[operator]


def test_send_wait_receive_ack(system: System, tmp_path: Path) -> None:
    statuses: list[tuple[str, int, str, str | None]] = []
    with system.enroll(tmp_path / "a", "sdk-ann", on_status=lambda *s: statuses.append(s)) as ann, \
            system.enroll(tmp_path / "b", "sdk-bob") as bob:
        outs = [ann.send("sdk-bob", b"reading %d" % i) for i in range(3)]
        assert [o.id for o in outs] == [1, 2, 3] and all(o.status == "sent" for o in outs)
        got = []
        for msg in bob.receive(timeout=10):
            got.append((msg.sender, msg.group, msg.data))
            assert not msg.acked
            msg.ack()
            assert msg.acked
            if len(got) == 3:
                break
        assert got == [("sdk-ann", None, b"reading %d" % i) for i in range(3)]
        assert bob.unacknowledged() == 0
        # ann has not pumped since: her handles learn the receipts by wait()
        assert outs[2].wait(30) == "delivered" and all(o.delivered for o in outs)
        assert ("sdk-bob", 1, "delivered", None) in statuses
        assert ann.pending("sdk-bob") == 0
        with pytest.raises(ClientError):
            ann.send("sdk-ann", b"to myself")
        # an unknown peer is no exception: its handle fails with the service's reason
        out = ann.send("sdk-nobody", b"hello?")
        assert out.wait(10) == "failed" and out.failed and "sdk-nobody" in str(out.reason)
        assert repr(Message(bob, 7, "x", None, b"secret", 0)).find("secret") < 0
    with pytest.raises(ClientClosed):
        ann.send("sdk-bob", b"after close")


def test_unacked_and_unhandled_messages_survive_close_and_a_broker_restart(system: System, tmp_path: Path) -> None:
    """Before the SDK, an application that closed its link lost what paho had acknowledged to
    the broker and nobody handled. Here: bob takes at most 5 messages into his inbox
    (max_unacked), acknowledges 2 and closes; the broker is SIGKILLed and restarted while ann's
    200 messages are on the way; bob reopens (twice): every message exactly once, all acked,
    every one reported delivered to ann."""
    texts = [b"command %03d" % i for i in range(200)]
    acked: list[bytes] = []
    ann = system.enroll(tmp_path / "a", "sdk-amy", timeout=5)
    bob_dir = tmp_path / "b"
    system.enroll(bob_dir, "sdk-ben").close()
    outs = [ann.send("sdk-ben", t) for t in texts]
    assert sum(o.status == "sent" for o in outs) == 16  # the window: the rest waits in the outbox
    bob = Client.open(bob_dir, timeout=5, max_unacked=5)
    deadline = time.monotonic() + 30
    while bob.unacknowledged() < 5 and time.monotonic() < deadline:
        bob.pump(0.05)
    assert bob.unacknowledged() == 5
    handed = [bob.get(0) for _ in range(3)]
    for msg in handed[:2]:
        assert msg is not None
        acked.append(msg.data)
        msg.ack()
    time.sleep(0.5)  # the rest of the window reached bob's link queue, acknowledged to the broker
    assert bob.messenger.link.inbox.qsize() > 0
    bob.close()  # 3 unacknowledged in the inbox, the link's queue spooled
    assert bob.install.spooled(), "nothing spooled: the test did not reach the case it is about"

    bob = Client.open(bob_dir, timeout=5)
    first = bob.get(5)
    assert first is not None and first.data == texts[2]  # the one handed out and not acknowledged
    first.ack()
    acked.append(first.data)
    proc = system.broker._proc
    assert proc is not None
    for msg in bob.receive(timeout=5):
        acked.append(msg.data)
        msg.ack()
        ann.pump(0.0)
        if len(acked) == 80:
            break
    proc.kill()  # SIGKILL mid-stream: messages and receipts on the way
    proc.wait()
    for _ in range(10):  # sends fail while it is down: they stay in the outbox
        ann.pump(0.05)
        bob.pump(0.05)
    system.broker.start()
    for msg in bob.receive(timeout=3):
        acked.append(msg.data)
        if len(acked) % 50:
            msg.ack()  # every 50th left unacknowledged: it comes back after the reopen below
        else:
            acked.pop()
        ann.pump(0.0)
        if len(acked) + bob.unacknowledged() >= 200:
            break
    bob.close()
    with Client.open(bob_dir, timeout=5) as bob:
        deadline = time.monotonic() + 120
        while len(acked) < 200 and time.monotonic() < deadline:
            for msg in bob.receive(timeout=0.2):
                acked.append(msg.data)
                msg.ack()
            ann.pump(0.05)
        assert sorted(acked) == texts, "lost or delivered twice"
        _pump_both(ann, bob, lambda: all(o.delivered for o in outs), 120)
        assert bob.unacknowledged() == 0
    assert ann.messenger.link.connects >= 2  # she really reconnected
    ann.close()


def test_serve_acknowledges_only_what_the_handler_finished(system: System, tmp_path: Path) -> None:
    with system.enroll(tmp_path / "a", "sdk-cat") as cat, system.enroll(tmp_path / "b", "sdk-dan") as dan:
        for i in range(3):
            cat.send("sdk-dan", b"job %d" % i)
        seen: list[bytes] = []

        def handler(msg: Message) -> None:
            seen.append(msg.data)
            if msg.data == b"job 1":
                raise RuntimeError("the local service is down")

        with pytest.raises(RuntimeError):
            dan.serve(handler, timeout=10)
        assert seen == [b"job 0", b"job 1"] and not dan.unacknowledged() < 1
        # job 1 (not acknowledged) is there after the next open, and job 2
    with Client.open(tmp_path / "b") as dan:
        assert dan.serve(lambda m: seen.append(m.data), timeout=3) == 2
        assert seen[2:] == [b"job 1", b"job 2"] and dan.unacknowledged() == 0


def test_groups_join_send_receive(system: System, tmp_path: Path) -> None:
    g1, g2, g3 = (system.enroll(tmp_path / n, "sdk-%s" % n) for n in ("g1", "g2", "g3"))
    outsider = system.enroll(tmp_path / "x", "sdk-gx")
    for member in ("sdk-g1", "sdk-g2", "sdk-g3"):
        system.op.add_group_member(FLEET, "sdk-line", member)
    try:
        g2.join_group("sdk-line", members=["sdk-g1", "sdk-g3"])
        g3.join_group("sdk-line", members=["sdk-g1", "sdk-g2"])
        with pytest.raises(NotGroupMember):
            outsider.join_group("sdk-line")
        g1.send_group("sdk-line", b"line stop", members=["sdk-g2", "sdk-g3"])
        g1.send_group("sdk-line", b"line start")  # members remembered
        for member in (g2, g3):
            got = []
            for msg in member.receive(timeout=15):
                got.append((msg.group, msg.sender, msg.data))
                msg.ack()
                g1.pump(0.0)
                if len(got) == 2:
                    break
            assert got == [("sdk-line", "sdk-g1", b"line stop"), ("sdk-line", "sdk-g1", b"line start")]
        with pytest.raises(ClientError):
            g2.send_group("sdk-other", b"no members")
    finally:
        for c in (g1, g2, g3, outsider):
            c.close()


def test_one_client_shared_by_a_receiving_and_a_sending_thread(system: System, tmp_path: Path) -> None:
    """A gateway receives on one thread and answers from another: 50 requests, 50 answers."""
    with system.enroll(tmp_path / "a", "sdk-eve") as eve, system.enroll(tmp_path / "b", "sdk-fay") as fay:
        answers: list[bytes] = []
        stop = threading.Event()

        def eve_receives() -> None:
            while not stop.is_set():
                msg = eve.get(0.2)
                if msg is not None:
                    answers.append(msg.data)
                    msg.ack()

        thread = threading.Thread(target=eve_receives)
        thread.start()
        try:
            for i in range(50):
                eve.send("sdk-fay", b"q%d" % i)  # from this thread while the other one pumps
            asked = 0
            deadline = time.monotonic() + 60
            while asked < 50 and time.monotonic() < deadline:
                msg = fay.get(0.5)
                if msg is not None:
                    fay.send("sdk-eve", b"a" + msg.data[1:])
                    msg.ack()
                    asked += 1
            deadline = time.monotonic() + 60
            while len(answers) < 50 and time.monotonic() < deadline:
                fay.pump(0.1)
        finally:
            stop.set()
            thread.join()
        assert sorted(answers) == sorted(b"a%d" % i for i in range(50))
