"""The service's broker metrics (core/gauges.py BrokerGauges, DynSec(observe=...)) against the
project's Mosquitto: e2ee_broker_admin_up follows the admin's connection, and every dynamic-security
command the service sends is timed in e2ee_broker_command_duration_seconds; host messengers report
their delivered / received / undecryptable counts (Messenger.report, POST /reports)."""
from __future__ import annotations

import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from e2ee.protocol.keys import KeyStore
from e2ee_host.broker import MosquittoProcess
from e2ee_host.client import DeviceClient, OperatorClient
from e2ee_host.install import HostInstall
from e2ee_host.messenger import Messenger
from e2ee_host.service import ServiceProcess

FLEET = "plant-north"
OPERATOR_KEY = "service-metrics-tests-operator-key-8c2f"


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a /metrics text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def _until(url: str, name: str, value: float, timeout: float = 20.0, **labels: str) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(url + "/metrics").text
        if metric(text, name, **labels) == value or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def test_broker_admin_up_and_command_latency(broker: MosquittoProcess, tmp_path: Path) -> None:
    # Packet exchange: the service's admin CONNECTs, SUBSCRIBEs to the dynamic-security answers,
    # and at the enrollment PUBLISHes createRole/addRoleACL/createClient commands, each answered on
    # $CONTROL/dynamic-security/v1/response; at the revocation disableClient, then the retained
    # revocation list (PUBACK). The broker stopped: the admin's connection drops (up 0), and once the
    # broker is back paho reconnects and subscribes again (up 1).
    with ServiceProcess(tmp_path / "service.log", data_dir=tmp_path / "service", operator_api_key=OPERATOR_KEY,
                        broker_admin_host=broker.host, broker_admin_port=broker.port,
                        broker_admin_user=broker.admin_user, broker_admin_password=broker.admin_password,
                        mqtt_host=broker.host, mqtt_port=broker.port) as service:
        text = httpx.get(service.url + "/metrics").text
        assert metric(text, "e2ee_broker_admin_up") == 1
        assert metric(text, "e2ee_broker_admin_queued", queue="inbox") == 0
        with OperatorClient(service.url, OPERATOR_KEY) as op:
            DeviceClient(service.url, "pump-1", FLEET, KeyStore.generate(1)).enroll(op.create_claims(FLEET).tokens[0])
            op.revoke("pump-1", "stolen")
        text = httpx.get(service.url + "/metrics").text
        count = "e2ee_broker_command_duration_seconds_count"
        for command in ("createClient", "disableClient", "publish_revocation_list"):
            assert metric(text, count, command=command, outcome="ok") >= 1, command
        assert metric(text, count, command="createClient", outcome="error") == 0
        assert metric(text, "e2ee_broker_command_duration_seconds_sum", command="createClient", outcome="ok") < 10
        assert "pump-1" not in text

        broker.stop()
        assert metric(_until(service.url, "e2ee_broker_admin_up", 0), "e2ee_broker_admin_up") == 0
        broker.start()
        assert metric(_until(service.url, "e2ee_broker_admin_up", 1), "e2ee_broker_admin_up") == 1


def test_messengers_report_their_counts(broker: MosquittoProcess, tmp_path: Path) -> None:
    # Packets: gw-1 PUBLISHes 3 messages into valve-1's inbox, valve-1's receipts come back; a
    # garbage envelope goes into valve-1's inbox. Each install then POSTs /reports: the service
    # sums delivered 3 (gw-1), received 3 and decrypt_failures 1 (valve-1) in the fleet's counters.
    with ServiceProcess(tmp_path / "service.log", data_dir=tmp_path / "service", operator_api_key=OPERATOR_KEY,
                        broker_admin_host=broker.host, broker_admin_port=broker.port,
                        broker_admin_user=broker.admin_user, broker_admin_password=broker.admin_password,
                        mqtt_host=broker.host, mqtt_port=broker.port) as service:
        with OperatorClient(service.url, OPERATOR_KEY) as op:
            gw, valve = (HostInstall.init(tmp_path / name, service.url, name, FLEET, op.create_claims(FLEET).tokens[0])
                         for name in ("gw-1", "valve-1"))
        with Messenger.open(gw) as sender, Messenger.open(valve) as receiver:
            ids = [sender.send("valve-1", b"open %d" % i) for i in range(3)]
            assert receiver.wait(lambda: len(receiver.received) == 3, 30)
            assert sender.wait(lambda: all(sender.status("valve-1", i)[0] == "delivered" for i in ids), 30)
            sender.link.send("valve-1", b"\x00garbage")  # not an envelope: valve-1 cannot decrypt it
            assert receiver.wait(lambda: receiver.failed == 1, 30)
            assert sender.report()["delivered"] == 3
            assert receiver.report() == {"delivered": 0, "undelivered": 0, "received": 3, "decrypt_failures": 1}
            assert receiver.report()["received"] == 0  # counted once
        text = httpx.get(service.url + "/metrics").text
        events = {event: metric(text, "e2ee_client_events_total", fleet=FLEET, event=event)
                  for event in ("delivered", "received", "decrypt_failures", "undelivered")}
        assert events == {"delivered": 3, "received": 3, "decrypt_failures": 1, "undelivered": 0}
        assert metric(text, "e2ee_client_reports_total", fleet=FLEET) == 3
