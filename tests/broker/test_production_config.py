"""broker-config/mosquitto.production.conf (docs/broker.md, "Production"): Mosquitto starts with it
as written (only paths, port and account replaced), serves MQTT over TLS only, refuses anonymous
clients, and its size limits let the protocol's largest messages through and nothing much larger."""
from __future__ import annotations

import getpass
import secrets
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from e2ee.protocol.certificate import MAX_NAME, MAX_SIGNED_REVOCATION_LIST
from e2ee.protocol.envelope import MAX_ENVELOPE
from e2ee.transport import topics
from e2ee_host.broker import (BrokerError, DynSec, _find, _free_port, _plugin, dev_tls, init_dynamic_security,
                              with_settings)
from e2ee_host.transport import HostLink, TransportError

CONF = Path(__file__).resolve().parents[2] / "broker-config" / "mosquitto.production.conf"
FLEET = "f" * MAX_NAME  # the longest fleet and device ids make the longest topics
DEVICE = "d" * MAX_NAME
PEER = "p" * MAX_NAME


def _settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            found.setdefault(key, []).append(value)
    return found


@dataclass
class Broker:
    port: int
    ca: Path
    admin_password: str
    log: Path


@pytest.fixture
def production_broker(tmp_path: Path) -> Iterator[Broker]:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    tls = dev_tls(tmp_path / "certs")
    password = "admin-" + tmp_path.name
    dynsec = data / "dynamic-security.json"
    init_dynamic_security(dynsec, "e2ee-admin", password)  # as an operator does once (docs/broker.md)
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(with_settings(CONF.read_text(), {
        "user": getpass.getuser(), "listener": "%d 127.0.0.1" % port,
        "certfile": str(tls["cert"]), "keyfile": str(tls["key"]),
        "persistence_location": "%s/" % data, "plugin": _plugin(),
        "plugin_opt_config_file": str(dynsec), "log_dest": "file %s/mosquitto.log" % data}))
    proc = subprocess.Popen([_find("mosquitto"), "-c", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = data / "mosquitto.log"
                    pytest.fail("mosquitto refused the production config: %s %s" % (
                        proc.stdout.read() if proc.poll() is not None else b"",  # type: ignore[union-attr]
                        log.read_text() if log.exists() else ""))
                time.sleep(0.05)
        yield Broker(port, tls["ca"], password, data / "mosquitto.log")
    finally:
        proc.terminate()
        proc.wait(15)


def test_production_limits_fit_the_protocol() -> None:
    # No packet exchange: the limits in the file against the protocol's own (firmware constants).
    settings = _settings(CONF.read_text())
    frame = 2 + MAX_NAME + MAX_ENVELOPE  # 0x01 | len | sender id | envelope
    largest_payload = max(frame, MAX_SIGNED_REVOCATION_LIST)
    longest_topic = len(topics.inbox("f" * MAX_NAME, "d" * MAX_NAME))
    largest_packet = 1 + 4 + 2 + longest_topic + 2 + largest_payload  # PUBLISH QoS 1, all headers at most
    assert int(settings["message_size_limit"][0]) == largest_payload
    assert largest_packet <= int(settings["max_packet_size"][0]) <= 2 * largest_packet
    assert settings["allow_anonymous"] == ["false"] and settings["persistence"] == ["true"]
    assert len(settings["listener"]) == 1 and "certfile" in settings and "keyfile" in settings
    assert 0 < int(settings["max_queued_messages"][0]) and 0 < int(settings["max_queued_bytes"][0])


def test_production_config_runs_tls_only(production_broker: Broker) -> None:
    # Packet exchange, all over TLS with hostname checks against the broker's CA: the admin
    # CONNECTs, creates two devices through $CONTROL/dynamic-security/v1; a device PUBLISHes a
    # largest-size inbox frame (64-byte ids, MAX_ENVELOPE envelope) to its peer, which receives it;
    # the admin PUBLISHes a MAX_SIGNED_REVOCATION_LIST-sized list, retained, that the peer receives.
    # A plain-TCP CONNECT gets no MQTT answer; an anonymous CONNECT over TLS gets CONNACK 5; a
    # PUBLISH larger than max_packet_size makes the broker close the connection (no PUBACK).
    b = production_broker
    admin = DynSec("localhost", b.port, "e2ee-admin", b.admin_password, tls_ca=str(b.ca))
    try:
        for name in (DEVICE, PEER):
            admin.provision_device(FLEET, name, name[:8] + "-broker-password")
        with HostLink("localhost", b.port, FLEET, DEVICE, DEVICE[:8] + "-broker-password", tls_ca=str(b.ca)) as dev, \
                HostLink("localhost", b.port, FLEET, PEER, PEER[:8] + "-broker-password", tls_ca=str(b.ca)) as peer:
            envelope = bytes(range(256)) * (MAX_ENVELOPE // 256)
            dev.send(PEER, envelope)
            assert peer.receive(10) == (DEVICE, envelope)
            crl = b"\x5a" * MAX_SIGNED_REVOCATION_LIST
            admin.publish_revocation_list(FLEET, crl)
            assert peer.crls.get(timeout=10) == crl
            with pytest.raises(TransportError, match="MAX_ENVELOPE"):  # the link refuses it itself
                dev.send(PEER, envelope + b"\x00" * (MAX_ENVELOPE + 1 - len(envelope)))
    finally:
        admin.close()

    # a client that ignores the limits: a packet over max_packet_size ends its connection
    raw = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=DEVICE)
    raw.tls_set(ca_certs=str(b.ca))
    raw.username_pw_set(DEVICE, DEVICE[:8] + "-broker-password")
    dropped: list[object] = []
    raw.on_disconnect = lambda c, u, f, rc, p: dropped.append(rc)
    raw.connect("localhost", b.port)
    raw.loop_start()
    try:
        info = raw.publish(topics.inbox(FLEET, PEER), b"\x00" * 10240, qos=1)
        deadline = time.monotonic() + 10
        while not dropped and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dropped and not info.is_published()
    finally:
        raw.disconnect()
        raw.loop_stop()

    with pytest.raises(TransportError):  # no plain MQTT on the TLS port
        HostLink("127.0.0.1", b.port, FLEET, DEVICE, DEVICE[:8] + "-broker-password", timeout=3).connect()
    anonymous = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anonymous-1")
    anonymous.tls_set(ca_certs=str(b.ca))
    refused: list[object] = []
    anonymous.on_connect = lambda c, u, f, rc, p: refused.append(rc)
    anonymous.connect("localhost", b.port)
    deadline = time.monotonic() + 10
    while not refused and time.monotonic() < deadline:
        anonymous.loop(0.1)
    anonymous.disconnect()
    assert refused and refused[0].is_failure  # type: ignore[attr-defined]
    untrusting = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="untrusting-1")
    untrusting.tls_set()  # the system's CAs only
    with pytest.raises(ssl.SSLError):
        untrusting.connect("localhost", b.port)
    log = b.log.read_text()
    assert b.admin_password not in log and "broker-password" not in log
    assert not (b.log.parent / "dynamic-security.json").stat().st_mode & 0o077  # password hashes


def test_the_service_drives_the_production_broker_over_tls(production_broker: Broker, tmp_path: Path) -> None:
    # E2EE_PROV_BROKER_ADMIN_TLS_CA: the service's own admin connects to the TLS-only listener
    # (hostname checked), creates a device's client and role live, and closes its admin on shutdown.
    from fastapi.testclient import TestClient

    from e2ee_provisioning.core.config import Settings
    from e2ee_provisioning.main import create_app
    b = production_broker
    settings = Settings(_env_file=None, data_dir=tmp_path / "service",  # type: ignore[call-arg]
                        operator_api_key=secrets.token_urlsafe(24),  # production: a real key (D19)
                        broker_admin_host="localhost", broker_admin_port=b.port, broker_admin_user="e2ee-admin",
                        broker_admin_password=b.admin_password, broker_admin_tls_ca=b.ca)
    app = create_app(settings)
    with TestClient(app):
        admin = app.state.broker
        assert isinstance(admin, DynSec)
        admin.provision_device(FLEET, DEVICE, "service-made-password")
        with HostLink("localhost", b.port, FLEET, DEVICE, "service-made-password", tls_ca=str(b.ca)) as dev:
            dev.send(DEVICE, b"to myself")
            assert dev.receive(10) == (DEVICE, b"to myself")
    assert app.state.broker is None  # closed with the service
    with pytest.raises(BrokerError):  # and without the CA file the TLS handshake fails
        DynSec("localhost", b.port, "e2ee-admin", b.admin_password, timeout=3)
