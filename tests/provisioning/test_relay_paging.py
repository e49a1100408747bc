"""The HTTP relay across service restarts (issue 13, item 5; docs/broker.md, "Relay"): on SQLite
and on PostgreSQL, a client pages with `after=` and acknowledges what it fetched while a device
sends 300 envelopes over MQTT and the service process is stopped and started again three times
mid-stream. Every envelope reaches the client exactly once.

Before the fix, SQLite's `relay_messages` had no AUTOINCREMENT: once an acknowledgement emptied the
table the next envelope got id 1 again, below the client's cursor, and the client never saw it
(the issue measured 191 of 300 lost)."""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2ee.protocol.keys import KeyStore
from e2ee_host.broker import MosquittoProcess
from e2ee_host.client import ApiError, DeviceClient, OperatorClient
from e2ee_host.service import ServiceProcess
from e2ee_host.transport import HostLink

FLEET = "plant-north"
OPERATOR_KEY = "relay-paging-operator-key-5d1e"
MESSAGES = 300
RESTART_AT = (60, 140, 220)  # envelopes sent when the service is restarted
SEND_PAUSE = 0.01  # s between two envelopes: the client often empties the relay meanwhile


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    with MosquittoProcess(tmp_path / "broker") as running:
        yield running


def _service(tmp_path: Path, broker: MosquittoProcess, database_url: str) -> ServiceProcess:
    return ServiceProcess(tmp_path / "service.log", data_dir=tmp_path / "service", database_url=database_url,
                          operator_api_key=OPERATOR_KEY, broker_admin_host=broker.host,
                          broker_admin_port=broker.port, broker_admin_user=broker.admin_user,
                          broker_admin_password=broker.admin_password, mqtt_host=broker.host,
                          mqtt_port=broker.port)


def _send_all(link: HostLink, sent: list[bytes], failures: list[str]) -> None:
    try:
        for i in range(MESSAGES):
            envelope = b"reading %03d" % i
            link.send("web-1", envelope)  # the broker took it (PUBACK), whether the service is up or not
            sent.append(envelope)
            time.sleep(SEND_PAUSE)
    except Exception as e:  # reported by the test, not lost in the thread
        failures.append(repr(e))


def test_relay_pages_with_after_across_service_restarts_without_loss(
        database_url: str, broker: MosquittoProcess, tmp_path: Path) -> None:
    service = _service(tmp_path, broker, database_url).start()
    link = None
    try:
        op = OperatorClient(service.url, OPERATOR_KEY)
        web = DeviceClient(service.url, "web-1", FLEET, KeyStore.generate(2))
        web.enroll(op.create_claims(FLEET).tokens[0])
        web.relay_register()
        pump = DeviceClient(service.url, "pump-1", FLEET, KeyStore.generate(2))
        mqtt = pump.enroll(op.create_claims(FLEET).tokens[0]).mqtt
        assert mqtt is not None
        link = HostLink(mqtt["host"], mqtt["port"], FLEET, "pump-1", mqtt["password"]).connect()

        sent: list[bytes] = []
        failures: list[str] = []
        sender = threading.Thread(target=_send_all, args=(link, sent, failures), daemon=True)
        sender.start()
        received: list[bytes] = []
        cursor = 0
        restarts = list(RESTART_AT)
        last_progress = time.monotonic()
        while time.monotonic() - last_progress < 20:
            if restarts and len(sent) >= restarts[0]:
                restarts.pop(0)
                service.stop()  # SIGTERM: a new process on the same database
                time.sleep(0.3)  # envelopes sent meanwhile wait at the broker
                service.start()
            try:
                page = web.relay_fetch(after=cursor)
                web.relay_acknowledge(m.id for m in page)
            except ApiError as e:
                assert e.status == 0, e  # only "unreachable" (a restart under way) is expected
                time.sleep(0.05)
                continue
            if not page:
                if not sender.is_alive() and len(received) >= MESSAGES:
                    break
                time.sleep(0.02)
                continue
            assert all(m.sender == "pump-1" for m in page)
            received += [m.envelope for m in page]
            cursor = page[-1].id
            last_progress = time.monotonic()
        sender.join(30)
        assert not failures, failures
        assert not restarts, "the service was not restarted %d more times" % len(restarts)
        assert len(sent) == MESSAGES
        counts = collections.Counter(received)
        lost = [m for m in sent if m not in counts]
        twice = [m for m, n in counts.items() if n > 1]
        print("relay paging on %s: %d sent, %d received, %d lost, %d duplicated, %d restarts" % (
            database_url.split(":", 1)[0], len(sent), len(received), len(lost), len(twice), len(RESTART_AT)))
        assert not lost, "%d of %d envelopes lost, e.g. %r" % (len(lost), MESSAGES, lost[:3])
        assert not twice, "%d envelopes received twice" % len(twice)
        assert received == sent  # in the order they were sent, too
    finally:
        if link is not None:
            link.close()
        service.stop()
