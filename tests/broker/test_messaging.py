"""Encrypted messaging over the project's own Mosquitto (broker-config/, e2ee_host.broker,
e2ee.transport, e2ee_host.transport; docs/broker.md), with the provisioning service driving the
broker's dynamic security: two MicroPython devices and a CPython host enroll, fetch bundles,
start sessions and talk both ways while a sniffer with admin rights sees only ciphertext; the
ACLs hold; offline delivery survives duplicates and a broker restart; revocation cuts a device
off at the broker and at its peers."""
from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from enrollment_support import enroll_micropython_device
from support import DEVICE_TESTS, ROOT

from e2ee.protocol import certificate
from e2ee.protocol import session as session_mod
from e2ee.protocol.keys import KeyStore
from e2ee.protocol.session import SessionManager
from e2ee.protocol.trust import TrustStore
from e2ee.transport import topics
from e2ee.transport.mqtt import MQTTClient, MQTTException
from e2ee_host.broker import MosquittoProcess
from e2ee_host.client import ApiError, DeviceClient, OperatorClient, RelayEnvelope
from e2ee_host.service import ServiceProcess
from e2ee_host.transport import HostLink

FLEET = "plant-north"
OPERATOR_KEY = "broker-tests-operator-key-44c1"
MARKER = "PLAINTEXT-MARKER-c0ffee"


class System:
    def __init__(self, broker: MosquittoProcess, service: ServiceProcess) -> None:
        self.broker, self.service = broker, service
        self.op = OperatorClient(service.url, OPERATOR_KEY)

    def claim(self) -> str:
        return self.op.create_claims(FLEET).tokens[0]


@pytest.fixture
def system(tmp_path) -> Iterator[System]:  # type: ignore[no-untyped-def]
    with MosquittoProcess(tmp_path / "broker") as broker:
        with ServiceProcess(tmp_path / "service.log", data_dir=tmp_path / "service", operator_api_key=OPERATOR_KEY,
                            broker_admin_host=broker.host, broker_admin_port=broker.port,
                            broker_admin_user=broker.admin_user, broker_admin_password=broker.admin_password,
                            mqtt_host=broker.host, mqtt_port=broker.port) as service:
            yield System(broker, service)


class Sniffer:
    """An admin client subscribed to everything: what the broker sees."""

    def __init__(self, broker: MosquittoProcess) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sniffer")
        self.client.username_pw_set(broker.admin_user, broker.admin_password)
        self.client.on_message = lambda c, u, m: self.seen.append((m.topic, bytes(m.payload)))
        ready = threading.Event()
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe("e2ee/#", qos=1)
        assert ready.wait(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Node:
    """A MicroPython device on the broker (tests/device/mqtt_node.py)."""

    def __init__(self, micropython, system: System, flash: Path, device_id: str) -> None:  # type: ignore[no-untyped-def]
        self.device_id, self.skey, self.flash = device_id, os.urandom(32).hex(), str(flash)
        enrolled = enroll_micropython_device(micropython, system.service.url, system.claim(), self.flash,
                                             self.skey, device_id, FLEET)
        self.mqtt = enrolled["mqtt"]
        self.proc = subprocess.Popen(
            [micropython.binary, "-X", "heapsize=256K", str(DEVICE_TESTS / "mqtt_node.py"), self.flash, self.skey,
             device_id, FLEET, self.mqtt["host"], str(self.mqtt["port"]), self.mqtt["password"]],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=micropython.env(), cwd=ROOT)
        self.expect("ready")

    def expect(self, prefix: str) -> list[str]:
        lines = []
        while True:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line or "Traceback" in line:
                pytest.fail("%s failed: %s%s" % (self.device_id, line, self.proc.stdout.read()))  # type: ignore[union-attr]
            lines.append(line.strip())
            if line.startswith(prefix):
                return lines

    def ask(self, line: str, prefix: str) -> list[str]:
        self.proc.stdin.write(line + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.expect(prefix)

    def received(self, ms: int = 1500) -> list[str]:
        return [line for line in self.ask("poll %d" % ms, "polled") if line.startswith(("got ", "refused "))]

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(30)


def _host(system: System, tmp_path: Path, name: str, certified: bool = False) -> tuple[
        DeviceClient, SessionManager, HostLink]:
    """A host client: enrolled, prekeys published, sessions (certified ones with a TrustStore
    holding the pinned CA keys, its certificate and the current list), its broker link."""
    client = DeviceClient(system.service.url, name, FLEET, KeyStore.generate(4))
    pinned = system.op.ca_keys()
    enrolled = client.enroll(system.claim(), trusted_keys=pinned)
    client.upload_prekeys()
    trust = None
    if certified:
        trust = TrustStore(str(tmp_path / name / "trust"), os.urandom(32))
        trust.set_ca_keys(pinned)
        trust.update_revocation_list(enrolled.revocation_list)
        trust.set_certificate(enrolled.certificate, int(time.time()), (client.keystore.ik_pub, client.keystore.is_pub))
    sessions = SessionManager(str(tmp_path / name), os.urandom(32), client.keystore, trust=trust)
    sessions.save_keys()
    link = HostLink(enrolled.mqtt["host"], enrolled.mqtt["port"], FLEET, name, enrolled.mqtt["password"]).connect()
    client.mqtt_password = enrolled.mqtt["password"]  # type: ignore[attr-defined]
    return client, sessions, link


def test_two_devices_and_a_host_talk_and_the_broker_sees_ciphertext(system, micropython, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sniffer = Sniffer(system.broker)
    a = Node(micropython, system, tmp_path / "a", "valve-a")
    b = Node(micropython, system, tmp_path / "b", "valve-b")
    host, sessions, link = _host(system, tmp_path, "gateway")
    try:
        # the host starts sessions with both devices from their bundles, writes first
        for node in (a, b):
            sessions.start(node.device_id, host.bundle(node.device_id))
            link.send(node.device_id, sessions.encrypt(node.device_id, ("%s hello %s" % (MARKER, node.device_id)).encode()))
        assert a.received() == ["got gateway %s hello valve-a" % MARKER]
        assert b.received() == ["got gateway %s hello valve-b" % MARKER]
        # devices answer, and device a starts its own session with device b
        a.ask("send gateway %s from a" % MARKER, "sent")
        b.ask("send gateway %s from b" % MARKER, "sent")
        got = {link.receive()[0]: None for _ in range(2)}
        assert set(got) == {"valve-a", "valve-b"}
        a.ask("start valve-b %s" % host.bundle("valve-b").to_bytes().hex(), "ok")
        a.ask("send valve-b %s device to device" % MARKER, "sent")
        assert b.received() == ["got valve-a %s device to device" % MARKER]
        b.ask("send valve-a %s and back" % MARKER, "sent")
        assert a.received() == ["got valve-b %s and back" % MARKER]
    finally:
        for node in (a, b):
            node.close()
        link.close()
        sniffer.close()
    inboxes = [p for t, p in sniffer.seen if t.endswith("/inbox")]
    assert len(inboxes) >= 6
    for topic, payload in sniffer.seen:
        assert MARKER.encode() not in payload and b"hello" not in payload, topic


def test_acls_hold(system, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a_client, _, a_link = _host(system, tmp_path, "dev-a")
    b_client, _, b_link = _host(system, tmp_path, "dev-b")
    a_link.close()
    b_link.close()
    creds = {}
    for name, client in (("dev-a", a_client), ("dev-b", b_client)):
        creds[name] = client.enroll(system.claim()).mqtt["password"]  # a renewal sets a new broker password
    sniffer = Sniffer(system.broker)
    a = MQTTClient("dev-a", system.broker.host, system.broker.port, "dev-a", creds["dev-a"], keepalive=30)
    a.connect()
    with pytest.raises(MQTTException) as e:  # B's inbox: the broker refuses the subscription
        a.subscribe(topics.inbox(FLEET, "dev-b"), 1)
    assert e.value.args[0] == 0x80
    with pytest.raises(MQTTException):
        a.subscribe("e2ee/#", 1)
    a.publish(topics.crl(FLEET), b"forged revocation list", retain=True, qos=1)  # acknowledged, then dropped
    a.publish(topics.inbox(FLEET, "dev-b"), topics.frame("dev-a", b"allowed"), qos=1)
    time.sleep(1.0)
    sniffer.close()
    assert not [p for t, p in sniffer.seen if t == topics.crl(FLEET) and b"forged" in p]
    assert (topics.inbox(FLEET, "dev-b"), topics.frame("dev-a", b"allowed")) in sniffer.seen
    with pytest.raises(MQTTException) as e:  # a wrong password is refused at CONNECT
        MQTTClient("dev-a", system.broker.host, system.broker.port, "dev-a", "wrong").connect()
    assert e.value.args[0] in (4, 5)
    a.disconnect()


def test_offline_delivery_duplicates_and_broker_restart(system, micropython, tmp_path) -> None:  # type: ignore[no-untyped-def]
    node = Node(micropython, system, tmp_path / "n", "meter-9")
    host, sessions, link = _host(system, tmp_path, "collector")
    sessions.start("meter-9", host.bundle("meter-9"))
    link.send("meter-9", sessions.encrypt("meter-9", b"first"))
    assert node.received() == ["got collector first"]
    node.ask("drop", "dropped")  # the device loses its network
    sent = []
    for i in range(50):
        envelope = sessions.encrypt("meter-9", b"reading %02d" % i)
        link.send("meter-9", envelope)
        sent.append(envelope)
        if i % 10 == 3:
            link.send("meter-9", envelope)  # a redelivered duplicate
        if i == 24:
            link.close()
            system.broker.restart()  # queued messages survive the restart (persistence)
            link = HostLink(system.broker.host, system.broker.port, FLEET, "collector",
                            link._client._password.decode() if isinstance(link._client._password, bytes)
                            else link._client._password).connect()
    lines = node.ask("connect", "connected")  # the queue arrives right after CONNACK
    lines += node.received(4000)
    got = [line for line in lines if line.startswith("got ")]
    assert got == ["got collector reading %02d" % i for i in range(50)]  # all, in order, once
    assert len([line for line in lines if line.startswith("refused collector DuplicateMessage")]) == 5
    node.close()
    link.close()


def test_revocation_end_to_end(system, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a_client, a_sessions, a_link = _host(system, tmp_path, "pump-a", certified=True)
    b_client, b_sessions, b_link = _host(system, tmp_path, "pump-b", certified=True)
    b_cert = base64.b64decode(a_client.signed("GET", "/identities/pump-b")["certificate"])
    a_sessions.start("pump-b", a_client.bundle("pump-b"), b_cert)
    a_link.send("pump-b", a_sessions.encrypt("pump-b", b"before"))
    sender, envelope = b_link.receive()
    assert (sender, b_sessions.decrypt(sender, envelope)) == ("pump-a", b"before")
    b_link.send("pump-a", b_sessions.encrypt("pump-a", b"ack"))
    assert a_sessions.decrypt(*a_link.receive()) == b"ack"
    assert b_sessions.trust.version == 1  # type: ignore[union-attr]

    system.op.revoke("pump-a", "stolen")
    # the broker disconnected pump-a and refuses it from now on
    deadline = time.monotonic() + 10
    while a_link._client.is_connected() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not a_link._client.is_connected()
    with pytest.raises(MQTTException) as e:
        MQTTClient("pump-a", system.broker.host, system.broker.port, "pump-a", a_client.mqtt_password).connect()
    assert e.value.args[0] == 5  # not authorised
    # pump-b gets the new signed list, retained on its fleet's topic, and refuses pump-a
    crl = b_link.crls.get(timeout=10)
    while crl and not b_link.crls.empty():
        crl = b_link.crls.get_nowait()  # the newest one
    assert b_sessions.trust.update_revocation_list(crl) == 2  # type: ignore[union-attr]
    late = a_sessions.encrypt("pump-b", b"after revocation")  # pump-a still holds its keys
    with pytest.raises(session_mod.PeerRevoked):
        b_sessions.decrypt("pump-a", late)
    with pytest.raises(session_mod.PeerRevoked):
        b_sessions.encrypt("pump-a", b"no more")
    a_link.close()
    b_link.close()


def test_finding4_re_registration_publishes_the_revocation_list(  # type: ignore[no-untyped-def]
        system, tmp_path) -> None:
    """pump-c re-registers with new keys (a claim of its owner): the service signs a list that
    revokes the superseded certificate and PUBLISHes it, retained (QoS 1), on the fleet's crl
    topic; pump-d, subscribed there, receives it and refuses the old identity's certificate; a
    client subscribing afterwards gets the same list as the retained message."""
    b_client, b_sessions, b_link = _host(system, tmp_path, "pump-d", certified=True)
    old = DeviceClient(system.service.url, "pump-c", FLEET, KeyStore.generate(2))
    old_serial = old.enroll(system.op.create_claims(FLEET, owner="acme").tokens[0]).cert.serial
    assert b_link.crls.empty()
    new = DeviceClient(system.service.url, "pump-c", FLEET, KeyStore.generate(2))
    new.enroll(system.op.create_claims(FLEET, owner="acme").tokens[0])
    crl = b_link.crls.get(timeout=10)
    assert b_sessions.trust.update_revocation_list(crl) == 2  # type: ignore[union-attr]
    assert certificate.verify_revocation_list(crl, system.op.ca_keys(), 1).is_revoked(old_serial)
    password = b_client.mqtt_password  # type: ignore[attr-defined]
    b_link.close()
    late = HostLink(system.broker.host, system.broker.port, FLEET, "pump-d", password)
    late.connect()
    assert late.crls.get(timeout=10) == crl  # retained
    late.close()


def test_http_relay_for_clients_without_mqtt(system, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A host client without MQTT posts and fetches envelopes over HTTP; the service bridges them to
    the inbox topics and keeps undelivered ones in its database, across its own restart."""
    web = DeviceClient(system.service.url, "web-console", FLEET, KeyStore.generate(4))
    web.enroll(system.claim())
    web.upload_prekeys()
    web.relay_register()
    web_sessions = SessionManager(str(tmp_path / "web"), os.urandom(32), web.keystore)
    web_sessions.save_keys()
    pump, pump_sessions, pump_link = _host(system, tmp_path, "pump-7")
    pump_sessions.start("web-console", pump.bundle("web-console"))
    pump_link.send("web-console", pump_sessions.encrypt("web-console", MARKER.encode() + b" status ok"))

    def fetch(expected: int) -> list[RelayEnvelope]:
        deadline = time.monotonic() + 10
        while True:
            got = web.relay_fetch()
            if len(got) >= expected or time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    [first] = fetch(1)
    assert first.sender == "pump-7"
    assert web_sessions.decrypt("pump-7", first.envelope) == MARKER.encode() + b" status ok"
    web.relay_send("pump-7", web_sessions.encrypt("pump-7", b"set pressure 2 bar"))
    sender, envelope = pump_link.receive()
    assert (sender, pump_sessions.decrypt(sender, envelope)) == ("web-console", b"set pressure 2 bar")
    web.relay_acknowledge([first.id])
    assert web.relay_fetch() == []

    # the service goes down; what arrives meanwhile waits at the broker, then in the database
    system.service.stop()
    for i in range(3):
        pump_link.send("web-console", pump_sessions.encrypt("web-console", b"reading %d" % i))
    system.service.start()
    got = fetch(3)
    assert [web_sessions.decrypt("pump-7", m.envelope) for m in got] == [b"reading 0", b"reading 1", b"reading 2"]
    assert got[0].id > first.id  # relay ids are never reused (issue 13)
    with pytest.raises(ApiError) as e:  # another fleet's inbox, or a device that does not exist
        web.relay_send("nobody", b"\x00\x00\x00")
    assert e.value.status == 404
    pump_link.close()


def test_group_over_the_broker(system, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Ten members: sender keys distributed over pairwise sessions (inboxes), 100 group messages
    published once each to the group topic, which the broker lets only members read; a removed
    member loses the topic and, with everyone's new sender keys, cannot read what follows."""
    from e2ee.protocol.group import GroupSessions
    from e2ee.protocol.sender_key import UnknownChain
    members = []
    for i in range(10):
        client, sessions, link = _host(system, tmp_path, "m%d" % i)
        groups = GroupSessions(str(tmp_path / ("m%d" % i)), os.urandom(32), "m%d" % i)
        assert subprocess.run([str(Path(sys.executable).parent / "e2ee"), "--url", system.service.url, "--api-key",
                               OPERATOR_KEY, "groups", "add", "--fleet", FLEET, "--group", "line-3", "m%d" % i],
                              capture_output=True, text=True).returncode == 0
        members.append((client, sessions, link, groups))
    outsider = _host(system, tmp_path, "outsider")
    assert outsider[2].join_group("line-3") is False  # the ACL refuses a non-member
    for _, _, link, _ in members:
        assert link.join_group("line-3")

    # pairwise sessions first, one initiator per pair (simultaneous initiation is not resolved, docs/protocol.md)
    for i, (a, a_sessions, a_link, _) in enumerate(members):
        for b, b_sessions, b_link, _ in members[i + 1:]:
            a_sessions.start(b.device_id, a.bundle(b.device_id))
            a_link.send(b.device_id, a_sessions.encrypt(b.device_id, b"hello"))
            sender, envelope = b_link.receive()
            assert b_sessions.decrypt(sender, envelope) == b"hello"

    def distribute(group_members: list) -> None:  # type: ignore[type-arg]
        """Each member's new sender key goes to every other member inside their pairwise session."""
        for client, sessions, link, groups in group_members:
            groups.set_members("line-3", [m[0].device_id for m in group_members])  # whose keys it accepts
            dist = groups.create("line-3")
            for other, _, _, _ in group_members:
                if other is client:
                    continue
                link.send(other.device_id, sessions.encrypt(other.device_id, b"SKD" + dist))
        for client, sessions, link, groups in group_members:
            for _ in range(len(group_members) - 1):
                sender, envelope = link.receive()
                plain = sessions.decrypt(sender, envelope)
                assert plain[:3] == b"SKD"
                groups.add_member("line-3", sender, plain[3:])

    distribute(members)
    for n in range(100):
        client, _, link, groups = members[n % 10]
        wire = groups.encrypt("line-3", b"group message %d" % n)
        link.send_group("line-3", wire)
        assert link.group_messages.get(timeout=10) == ("line-3", wire)  # its own copy comes back too
        for other, _, olink, ogroups in members:
            if other is client:
                continue
            group, wire = olink.group_messages.get(timeout=10)
            while group != "line-3":
                group, wire = olink.group_messages.get(timeout=10)
            assert ogroups.decrypt("line-3", client.device_id, wire) == b"group message %d" % n
    for _, _, link, _ in members:
        while not link.group_messages.empty():
            link.group_messages.get_nowait()
    # remove m9: the broker drops it from the topic, everyone else makes and sends new sender keys
    removed = members[9]
    system.op.remove_group_member(FLEET, "line-3", "m9")
    rest = members[:9]
    for _, _, _, groups in rest:
        groups.remove_member("line-3", "m9")
    distribute(rest)
    client, _, link, groups = rest[0]
    wire = groups.encrypt("line-3", b"after m9 left")
    link.send_group("line-3", wire)
    time.sleep(0.5)
    assert removed[2].group_messages.empty()  # the broker no longer gives m9 the topic
    for other, _, olink, ogroups in rest[1:]:
        assert ogroups.decrypt("line-3", client.device_id, olink.group_messages.get(timeout=10)[1]) == b"after m9 left"
    with pytest.raises(UnknownChain):  # even holding the wire, its old chain does not open it
        removed[3].decrypt("line-3", client.device_id, wire)
    for link in [m[2] for m in members] + [outsider[2]]:
        link.close()


def test_tls_listener(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The TLS listener with the development CA made at run time: a device connects over TLS with
    its credentials when it trusts that CA, and a client that does not trust it is refused."""
    import ssl

    from e2ee_host.broker import DynSec
    with MosquittoProcess(tmp_path / "tls-broker", tls=True) as broker:
        assert broker.tls_files and broker.tls_port
        DynSec(broker.host, broker.port, broker.admin_user, broker.admin_password).provision_device(
            FLEET, "tls-dev", "tls-password")
        context = ssl.create_default_context(cafile=str(broker.tls_files["ca"]))
        context.check_hostname = False  # the dev certificate names "localhost", the test dials 127.0.0.1
        device = MQTTClient("tls-dev", broker.host, broker.tls_port, "tls-dev", "tls-password", ssl=context)
        assert device.connect() == 0  # CONNACK accepted, over TLS
        got: list[bytes] = []
        device.set_callback(lambda t, m: got.append(m))
        device.subscribe(topics.inbox(FLEET, "tls-dev"), 1)
        device.publish(topics.inbox(FLEET, "tls-dev"), topics.frame("tls-dev", b"over tls"), qos=1)
        while not got:
            device.wait_msg()
        assert got == [topics.frame("tls-dev", b"over tls")]
        device.disconnect()
        untrusting = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-dev-2")
        untrusting.tls_set()  # the system's CAs only
        with pytest.raises(ssl.SSLError):
            untrusting.connect(broker.host, broker.tls_port)
        assert not (tmp_path / "tls-broker" / "tls" / "server.key").stat().st_mode & 0o077
