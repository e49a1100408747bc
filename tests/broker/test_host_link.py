"""The host transport (e2ee_host.transport.HostLink; docs/broker.md, "Host transport"): connect()
returns once the broker granted its subscriptions, send() once the broker acknowledged the
message, and every failure is a TransportError within the link's timeout."""
from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from e2ee_host.broker import DynSec, MosquittoProcess
from e2ee_host.transport import HostLink, TransportError

FLEET = "plant-north"


@pytest.fixture
def admin(broker: MosquittoProcess) -> Iterator[DynSec]:
    admin = DynSec(broker.host, broker.port, broker.admin_user, broker.admin_password)
    for name in ("pump-1", "pump-2"):
        admin.provision_device(FLEET, name, name + "-broker-password")
    yield admin
    admin.close()


def test_connect_fails_when_the_broker_refuses_a_subscription(broker: MosquittoProcess, admin: DynSec,
                                                              tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Packet exchange: CONNECT/CONNACK 0 for a client without a role, then SUBSCRIBE to its inbox
    # and its fleet's crl topic at QoS 1; the broker's ACLs answer SUBACK 0x80 for both. Before
    # the fix connect() returned a link that would never receive anything.
    admin.command("createClient", username="no-role", password="no-role-broker-password")
    link = HostLink(broker.host, broker.port, FLEET, "no-role", "no-role-broker-password", timeout=5)
    with pytest.raises(TransportError, match="refused the subscription"):
        link.connect()
    with pytest.raises(TransportError, match="refused"):  # CONNACK 5: wrong password
        HostLink(broker.host, broker.port, FLEET, "pump-1", "wrong", timeout=5).connect()
    closed = MosquittoProcess(tmp_path / "never-started")
    with pytest.raises(TransportError):  # no TCP connection (ConnectionRefusedError before the fix)
        HostLink(closed.host, closed.port, FLEET, "pump-1", "pump-1-broker-password", timeout=5).connect()


def test_send_without_puback_is_an_error_and_may_still_arrive(broker: MosquittoProcess, admin: DynSec,
                                                             paused) -> None:  # type: ignore[no-untyped-def]
    # Packet exchange: pump-1 PUBLISHes (QoS 1) to pump-2's inbox while the broker is stopped
    # (SIGSTOP): no PUBACK comes, send() raises TransportError after the link's timeout (it
    # returned as if sent before the fix). On SIGCONT the broker reads the PUBLISH, PUBACKs it and
    # delivers it: a failed send is "not confirmed", not "not delivered" (at least once).
    with HostLink(broker.host, broker.port, FLEET, "pump-1", "pump-1-broker-password", timeout=1.5) as one, \
            HostLink(broker.host, broker.port, FLEET, "pump-2", "pump-2-broker-password") as two:
        with paused(broker):
            t0 = time.monotonic()
            with pytest.raises(TransportError, match="PUBACK"):
                one.send("pump-2", b"unconfirmed")
            assert time.monotonic() - t0 < 10
        assert two.receive(10) == ("pump-1", b"unconfirmed")
        one.send("pump-2", b"confirmed")
        assert two.receive(10) == ("pump-1", b"confirmed")


def test_send_while_the_broker_is_down_is_a_transport_error(broker: MosquittoProcess, admin: DynSec) -> None:
    # Packet exchange: the broker stops (SIGTERM): the link's socket closes and paho reconnects in
    # the background. A send() meanwhile raises TransportError within the timeout (paho's
    # RuntimeError before the fix). After the restart the link is back, subscribed again.
    with HostLink(broker.host, broker.port, FLEET, "pump-1", "pump-1-broker-password", timeout=1.5) as one:
        broker.stop()
        with pytest.raises(TransportError):
            one.send("pump-2", b"nobody takes this")
        broker.start()
        with HostLink(broker.host, broker.port, FLEET, "pump-2", "pump-2-broker-password") as two:
            deadline = time.monotonic() + 15
            while True:  # paho's reconnect delay: the link is back within a few seconds
                try:
                    one.send("pump-2", b"after the restart")
                    break
                except TransportError:
                    if time.monotonic() > deadline:
                        raise
            while True:
                sender, envelope = two.receive(10)
                if envelope == b"after the restart":
                    break
            two.send("pump-1", b"answer")
            assert one.receive(10) == ("pump-2", b"answer")


def test_received_messages_wait_in_bounded_queues(broker: MosquittoProcess, admin: DynSec) -> None:
    # Packet exchange: pump-2 PUBLISHes 8 envelopes to pump-1's inbox, which reads none of them;
    # pump-1's link keeps at most max_queued (5) and counts the rest as dropped, so a peer that
    # floods an inbox cannot exhaust the host's memory (unbounded before).
    with HostLink(broker.host, broker.port, FLEET, "pump-1", "pump-1-broker-password", max_queued=5) as one, \
            HostLink(broker.host, broker.port, FLEET, "pump-2", "pump-2-broker-password") as two:
        for i in range(8):
            two.send("pump-1", b"envelope %d" % i)
        deadline = time.monotonic() + 10
        while one.dropped < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert one.dropped == 3
        assert [one.receive(1) for _ in range(5)] == [("pump-2", b"envelope %d" % i) for i in range(5)]
