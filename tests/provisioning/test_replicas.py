"""Replicas (issue 16, item 2; docs/provisioning.md, "Replicas"): two service processes on one
PostgreSQL database, the project's Mosquitto and the machine's Redis.

Packet exchange checked: each replica's admin connects with its own client id
(e2ee-provisioning-a, -b; persistent sessions) and subscribes $share/e2ee-provisioning/<inbox
filter>; a sender publishes QoS 1 envelopes into a relay client's inbox and the broker hands each
one to one replica, which stores it and only then sends its PUBACK. Replica a is killed (SIGKILL)
while it stores its share: what the broker had handed it and it had not acknowledged, and its
share of what is published while it is down, wait in its session; restarted with its id it
receives them again. Every envelope is in relay_messages exactly once (the copy of one that a
stored before its PUBACK went out is not stored twice). The broker ends neither admin's session for
the other's (no reconnect loop). Service-channel requests are shared alike: each answered once, by
one replica or the other. An enrollment rate limit in Redis is one bucket for both: requests
of one client (forwarded by a trusted proxy) split across the replicas hit the one limit."""
from __future__ import annotations

import json
import queue
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from service_support import OPERATOR_KEY, TestDevice, metric
from sqlalchemy import create_engine, select

from e2ee.transport import topics
from e2ee_host.broker import DynSec, MosquittoProcess
from e2ee_host.service import ServiceProcess
from e2ee_provisioning.models import RelayMessage

FLEET = "plant-north"
SENT = 400  # envelopes published in all, in two halves around the kill
CAPACITY = 6  # enrollment requests of one client allowed, summed over both replicas


class Replicas:
    def __init__(self, tmp: Path, broker: MosquittoProcess, database_url: str) -> None:
        self.tmp, self.broker, self.database_url = tmp, broker, database_url
        settings = dict(environment="development", operator_api_key=OPERATOR_KEY, data_dir=tmp / "data",
                        database_url=database_url, broker_admin_host=broker.host, broker_admin_port=broker.port,
                        broker_admin_user=broker.admin_user, broker_admin_password=broker.admin_password,
                        rate_limit_store="redis", rate_limit_prefix="e2ee:test:%s:" % secrets.token_hex(6),
                        enroll_rate_capacity=CAPACITY, enroll_rate_per_second=0.001, trusted_proxies="127.0.0.1")
        self.a = ServiceProcess(tmp / "a.log", replica_id="a", **settings)
        self.b = ServiceProcess(tmp / "b.log", replica_id="b", **settings)


@pytest.fixture
def replicas(tmp_path: Path, database_url_postgres: str) -> Iterator[Replicas]:
    with MosquittoProcess(tmp_path / "broker") as broker:
        stack = Replicas(tmp_path, broker, database_url_postgres)
        stack.a.start()  # migrations and the CA keystore first, then the second replica
        stack.b.start()
        try:
            yield stack
        finally:
            stack.a.stop()
            stack.b.stop()


def _stored(service: ServiceProcess) -> float:
    return metric(httpx.get(service.url + "/metrics").text, "e2ee_relay_envelopes_stored_total", fleet=FLEET)


def _publisher(broker: MosquittoProcess) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-sender-" + secrets.token_hex(4))
    client.username_pw_set(broker.admin_user, broker.admin_password)  # the admin may write every inbox
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def _publish(client: mqtt.Client, numbers: range) -> None:
    for i in numbers:
        client.publish(topics.inbox(FLEET, "web-1"), topics.frame("pump-1", b"envelope-%04d" % i),
                       qos=1).wait_for_publish(10)


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_replica_killed_mid_stream_loses_and_duplicates_nothing(replicas: Replicas) -> None:
    web = TestDevice("web-1")
    with httpx.Client(base_url=replicas.a.url, headers={"X-Forwarded-For": "198.51.100.1"}) as http:
        web.register(http)
        assert web.post(http, "/relay/register", b"").status_code == 204
    sender = _publisher(replicas.broker)
    try:
        _publish(sender, range(SENT // 2))
        # both replicas store their shares; a dies while it is at it
        _wait(lambda: _stored(replicas.a) >= 20 and _stored(replicas.b) >= 20, 20, "both replicas storing")
        replicas.a.kill()
        _publish(sender, range(SENT // 2, SENT))  # while a is down
        engine = create_engine(replicas.database_url)
        try:
            def count() -> int:
                with engine.connect() as conn:
                    return len(conn.execute(select(RelayMessage.id)).all())
            # b serves on: its share of both halves arrives, a's share waits in a's session
            _wait(lambda: _stored(replicas.b) >= SENT // 2 - 5, 20, "b stores its share while a is down")
            assert count() < SENT
            replicas.a.start()  # the same replica id: its session, with what it had not acknowledged
            _wait(lambda: count() >= SENT, 30, "every envelope stored after a's restart")
            time.sleep(0.5)  # a late duplicate would land now
            with engine.connect() as conn:
                envelopes = Counter(conn.execute(select(RelayMessage.envelope)).scalars())
        finally:
            engine.dispose()
    finally:
        sender.loop_stop()
        sender.disconnect()
    assert set(envelopes) == {b"envelope-%04d" % i for i in range(SENT)}
    assert [e for e, n in envelopes.items() if n > 1] == []
    # the HTTP client receives them too, through either replica
    with httpx.Client(base_url=replicas.b.url) as http:
        target = "/relay/messages?after=0"
        page = http.get(target, headers=web.headers("GET", target)).json()
    assert len(page) > 0 and all(m["sender"] == "pump-1" for m in page)

    # one admin client id each, and neither session taken over by the other (the broker's log
    # names a takeover "already connected, closing old connection")
    log = (replicas.broker.data_dir / "mosquitto.log").read_text()
    assert " as e2ee-provisioning-a " in log and " as e2ee-provisioning-b " in log
    assert "already connected, closing old connection" not in log
    assert "lost its connection" not in replicas.b.log_file.read_text()


def test_each_service_channel_request_is_served_by_one_replica(replicas: Replicas) -> None:
    # a device publishes unsigned GET /time requests on its request topic (QoS 1); each goes to
    # one replica of the share group, which answers on the device's answer topic
    broker, password = replicas.broker, secrets.token_urlsafe(18)
    admin = DynSec(broker.host, broker.port, broker.admin_user, broker.admin_password)
    try:
        admin.provision_device(FLEET, "sensor-1", password)
    finally:
        admin.close()
    answers: queue.Queue[dict[str, object]] = queue.Queue()
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sensor-1")
    device.username_pw_set("sensor-1", password)
    device.on_message = lambda client, userdata, msg: answers.put(json.loads(msg.payload))
    device.connect(broker.host, broker.port)
    device.loop_start()
    try:
        device.subscribe(topics.service_response(FLEET, "sensor-1"), 1)
        time.sleep(0.3)
        for i in range(20):
            request = json.dumps({"id": "r%d" % i, "m": "GET", "p": "/time"}).encode() + b"\n"
            device.publish(topics.service_request(FLEET, "sensor-1"), request, qos=1).wait_for_publish(10)
        got = [answers.get(timeout=10) for _ in range(20)]
        time.sleep(0.5)  # a second answer to any request would be here by now
        assert answers.empty()
    finally:
        device.loop_stop()
        device.disconnect()
    assert sorted(a["id"] for a in got) == sorted("r%d" % i for i in range(20))  # type: ignore[type-var]
    # the channel's per-device limit is in Redis too: CAPACITY answered, the rest refused, over both
    assert sorted(a["status"] for a in got) == [200] * CAPACITY + [429] * (20 - CAPACITY)  # type: ignore[type-var]
    for service in (replicas.a, replicas.b):
        served = sum(metric(httpx.get(service.url + "/metrics").text, "e2ee_channel_requests_total",
                            kind="device", status=s) for s in ("2xx", "4xx"))
        assert served > 0, "%s served no request" % service


def test_a_rate_limit_in_redis_is_shared_by_the_replicas(replicas: Replicas) -> None:
    answers = []
    for i in range(2 * CAPACITY):
        service = (replicas.a, replicas.b)[i % 2]
        # one client behind the trusted proxy (127.0.0.1), whatever it wrote into the header itself
        r = httpx.post(service.url + "/enroll/challenge",
                       headers={"X-Forwarded-For": "10.9.9.%d, 203.0.113.7" % i})
        answers.append(r.status_code)
    assert answers.count(201) == CAPACITY and answers[CAPACITY:] == [429] * CAPACITY, answers
    # another forwarded client has a bucket of its own, on either replica
    r = httpx.post(replicas.b.url + "/enroll/challenge", headers={"X-Forwarded-For": "203.0.113.8"})
    assert r.status_code == 201
