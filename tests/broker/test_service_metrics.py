"""The service's broker metrics (core/gauges.py BrokerGauges, DynSec(observe=...)) against the
project's Mosquitto: e2ee_broker_admin_up follows the admin's connection, and every dynamic-security
command the service sends is timed in e2ee_broker_command_duration_seconds."""
from __future__ import annotations

import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from e2ee.protocol.keys import KeyStore
from e2ee_host.broker import MosquittoProcess
from e2ee_host.client import DeviceClient, OperatorClient
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
