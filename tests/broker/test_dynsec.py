"""The dynamic-security admin (e2ee_host.broker.DynSec; docs/broker.md, "The service drives the
broker"): it survives broker restarts, keeps only the answers it waits for, and every failure
reaches the caller as a BrokerError within its timeout."""
from __future__ import annotations

import time

import pytest

from e2ee.transport import topics
from e2ee_host.broker import BrokerError, DynSec, MosquittoProcess
from e2ee_host.transport import HostLink

FLEET = "plant-north"


@pytest.mark.parametrize("session", ["clean", "persistent"])
def test_admin_works_after_a_broker_restart(broker: MosquittoProcess, session: str) -> None:
    # Packet exchange: the admin CONNECTs and SUBSCRIBEs to $CONTROL/dynamic-security/v1/response
    # and the inbox wildcard. The broker goes away: gracefully (SIGTERM) for a clean session, which
    # the broker forgets; by SIGKILL for the service's persistent session (client id
    # e2ee-provisioning), its store removed, so the broker restarts without it (a crash before the
    # session was saved, or a new broker node). paho reconnects
    # by itself; the admin must SUBSCRIBE again on that CONNACK, else no command is ever answered
    # (each one timed out before the fix) and no inbox message reaches the relay.
    got: list[bytes] = []
    admin = DynSec(broker.host, broker.port, broker.admin_user, broker.admin_password, timeout=15,
                   client_id="e2ee-provisioning" if session == "persistent" else None,
                   on_inbox=lambda fleet, device_id, payload: got.append(payload))
    try:
        admin.provision_device(FLEET, "pump-1", "pump-1-broker-password")
        if session == "clean":
            broker.restart()
        else:
            broker.kill()
            (broker.data_dir / "mosquitto.db").unlink(missing_ok=True)
            broker.start()
        # at once: the command waits (within its timeout) for the admin to be back
        assert admin.command("getClient", username="pump-1")["data"]["client"]["username"] == "pump-1"
        with HostLink(broker.host, broker.port, FLEET, "pump-1", "pump-1-broker-password") as link:
            link.send("web-1", b"after the restart")
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [topics.frame("pump-1", b"after the restart")]
    finally:
        admin.close()


def test_an_admin_keeps_only_its_own_answers(broker: MosquittoProcess) -> None:
    # Packet exchange: two admins (two service replicas, or the service and an operator's tool)
    # share the answer topic $CONTROL/dynamic-security/v1/response, so each receives the other's
    # answers. Before the fix each kept every answer it saw, forever: memory grew with the other
    # admin's traffic.
    first = DynSec(broker.host, broker.port, broker.admin_user, broker.admin_password)
    second = DynSec(broker.host, broker.port, broker.admin_user, broker.admin_password)
    try:
        for i in range(10):
            first.command("createRole", rolename="role-%d" % i)
        second.command("getRole", rolename="role-9")  # its own answer arrives after all of those
        assert second._answers == {} and first._answers == {}
    finally:
        first.close()
        second.close()


def test_admin_failures_are_broker_errors(broker: MosquittoProcess, paused, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Packet exchange: CONNECT with a wrong password (CONNACK 5) and a TCP connection to a closed
    # port fail the admin's construction with BrokerError (an OSError before). Then, with the broker
    # stopped by SIGSTOP, a PUBLISH of the revocation list and of a relayed envelope get no PUBACK:
    # BrokerError after the timeout (before the fix they returned as if published).
    with pytest.raises(BrokerError):
        DynSec(broker.host, broker.port, broker.admin_user, "wrong password", timeout=5)
    closed = MosquittoProcess(tmp_path / "never-started")
    with pytest.raises(BrokerError):
        DynSec(closed.host, closed.port, broker.admin_user, broker.admin_password, timeout=5)
    admin = DynSec(broker.host, broker.port, broker.admin_user, broker.admin_password, timeout=1.5)
    try:
        with paused(broker):
            t0 = time.monotonic()
            with pytest.raises(BrokerError):
                admin.publish_revocation_list(FLEET, b"signed list")
            with pytest.raises(BrokerError):
                admin.publish_inbox(FLEET, "pump-1", "web-1", b"envelope")
            with pytest.raises(BrokerError):
                admin.command("getClient", username="pump-1")
            assert time.monotonic() - t0 < 15
    finally:
        admin.close()


def test_the_admin_publishes_its_revocation_list_again_after_a_broker_crash(broker: MosquittoProcess) -> None:
    # Packet exchange: the admin PUBLISHes revocation list 1 (retained, QoS 1); a graceful restart
    # saves it. The admin PUBLISHes list 2 and gets its PUBACK; the broker is SIGKILLed before its
    # next save (fewer than 16 changes) and restarts with list 1. paho reconnects; on the SUBACK of
    # that connection the admin PUBLISHes list 2 again, so a client that SUBSCRIBEs to the crl topic
    # afterwards gets list 2 as the retained message. Before, the broker served list 1 until the
    # next revocation.
    admin = DynSec(broker.host, broker.port, broker.admin_user, broker.admin_password, timeout=15)
    try:
        admin.publish_revocation_list(FLEET, b"signed list 1")
        broker.restart()
        admin.command("getClient", username=broker.admin_user)  # waits until the admin is back
        admin.publish_revocation_list(FLEET, b"signed list 2")
        broker.kill()
        broker.start()
        admin.command("getClient", username=broker.admin_user)
        admin.provision_device(FLEET, "pump-1", "pump-1-broker-password")
        with HostLink(broker.host, broker.port, FLEET, "pump-1", "pump-1-broker-password") as link:
            assert link.crls.get(timeout=10) == b"signed list 2"
    finally:
        admin.close()
