"""The service channel over MQTT and zero-touch enrollment by claim (issue 14, items 1 and 2;
docs/provisioning.md, "Service channel"; e2ee_provisioning.api.channel, e2ee.transport.service,
e2ee.enroll, e2ee.upkeep): the project's Mosquitto, the provisioning service as a process driving
it, boards under MicroPython (tests/device/service_node.py) and CPython clients of the channel."""
from __future__ import annotations

import base64
import json
import queue
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families
from support import DEVICE_TESTS

from e2ee.protocol import enrollment
from e2ee.protocol.keys import KeyStore
from e2ee.transport import mqtt, topics
from e2ee.transport.service import Service
from e2ee_host import cli
from e2ee_host.broker import MosquittoProcess, dev_tls
from e2ee_host.client import DeviceClient, OperatorClient
from e2ee_host.install import HostInstall
from e2ee_host.service import ServiceProcess
from e2ee_host.transport import TransportError

OPERATOR_KEY = "service-channel-tests-operator-key-3b7e"
HEAP = "264K"  # the virtual ESP32's heap with the SDK loaded as .mpy (tests/broker/test_board_app.py)
NODE = DEVICE_TESTS / "service_node.py"


class System:
    def __init__(self, broker: MosquittoProcess, service: ServiceProcess, tmp: Path) -> None:
        self.broker, self.service, self.tmp = broker, service, tmp
        self.operator = OperatorClient(service.url, OPERATOR_KEY)

    def claim(self, fleet: str, **fields: Any) -> tuple[int, str]:
        created = self.operator.create_claims(fleet, mqtt=True, **fields)
        return int(created.claims[0]["id"]), created.tokens[0]

    def host(self, fleet: str, device_id: str) -> HostInstall:
        token = self.operator.create_claims(fleet).tokens[0]
        return HostInstall.init(self.tmp / device_id, self.service.url, device_id, fleet, token)


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Iterator[System]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("service-channel")
    with MosquittoProcess(tmp / "broker", tls=True) as broker:
        with ServiceProcess(tmp / "service.log", data_dir=tmp / "service", operator_api_key=OPERATOR_KEY,
                            broker_admin_host=broker.host, broker_admin_port=broker.port,
                            broker_admin_user=broker.admin_user, broker_admin_password=broker.admin_password,
                            mqtt_host=broker.host, mqtt_port=broker.port) as service:
            yield System(broker, service, tmp)


def _fleet() -> str:
    return "plant-" + secrets.token_hex(3)


class Channel:
    """A CPython client on the channel with any broker credential: raw payloads in, answers out."""

    def __init__(self, broker: MosquittoProcess, user: str, password: str, request_topic: str,
                 answer_topic: str | None) -> None:
        self.request_topic = request_topic
        self.answers: list[dict[str, Any]] = []
        # a device's account takes its device id as client id only; a claim's any
        client_id = "t-" + secrets.token_hex(4) if user.startswith("claim:") else user
        self.client = mqtt.MQTTClient(client_id, broker.host, broker.port, user, password)
        self.client.set_callback(lambda topic, payload: self.answers.append(json.loads(payload)))
        self.client.connect(timeout=10)
        if answer_topic is not None:
            self.client.subscribe(answer_topic, 1)

    def pump(self, done: Any, timeout: float = 10.0) -> None:
        """Reads what arrives (to the client's callback) until done() or the timeout."""
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self.client.sock.settimeout(0.1)
            try:
                self.client.check_msg()
            except OSError:
                pass

    def wait(self, rid: str | None, timeout: float = 10.0) -> dict[str, Any] | None:
        self.pump(lambda: any(a.get("id") == rid for a in self.answers), timeout)
        for answer in self.answers:
            if answer.get("id") == rid:
                self.answers.remove(answer)
                return answer
        return None

    def ask(self, payload: bytes, rid: str | None, timeout: float = 10.0) -> dict[str, Any] | None:
        self.client.publish(self.request_topic, payload, qos=1)
        return self.wait(rid, timeout)

    def close(self) -> None:
        try:
            self.client.disconnect()
        except OSError:
            pass  # the broker ended it already (a client id taken over, a credential deleted)


def _signed(keystore: KeyStore, device_id: str, method: str, path: str, body: bytes = b"",
            ts: int | None = None, rid: str | None = None) -> tuple[bytes, str]:
    rid = rid or secrets.token_hex(6)
    ts = ts or time.time_ns() // 1_000_000
    sig = keystore.sign(enrollment.request_message(method, path, ts, device_id, body))
    head = {"id": rid, "m": method, "p": path, "ts": ts, "sig": base64.b64encode(sig).decode()}
    return json.dumps(head).encode() + b"\n" + body, rid


# --- a board on its own: MicroPython ----------------------------------------------------------

class Board:
    """tests/device/service_node.py in a flash directory holding only a claim file."""

    def __init__(self, micropython, flash: Path, claim: dict[str, Any], *args: str) -> None:  # type: ignore[no-untyped-def]
        (flash / "e2ee_data").mkdir(parents=True)
        (flash / "e2ee_data" / "claim.json").write_text(json.dumps(claim))
        self.proc = subprocess.Popen([micropython.binary, "-X", "heapsize=" + HEAP, str(NODE), *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, cwd=flash, env=micropython.env())
        self.lines: list[str] = []
        self._out: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self._out.put(line)
        self._out.put("")

    def expect(self, prefix: str, timeout: float = 90.0) -> list[str]:
        """The words of the first line starting with prefix (every line is kept in `lines`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._out.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                pytest.fail("board said no %r within %.0f s: %s" % (prefix, timeout, "\n".join(self.lines[-20:])),
                            pytrace=False)
            if not line or "Traceback" in line:
                rest = []
                while line:
                    try:
                        line = self._out.get(timeout=5)  # the traceback, until the board exits
                    except queue.Empty:
                        break
                    rest.append(line)
                self.proc.kill()
                pytest.fail("board failed: %s" % "".join(rest), pytrace=False)
            self.lines.append(line.rstrip("\n"))
            if line.startswith(prefix):
                return line.split()

    def tell(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def ask(self, command: str, prefix: str) -> list[str]:
        self.tell(command)
        return self.expect(prefix)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(30)


def test_a_board_with_only_a_claim_enrolls_and_runs_on_its_own(system, micropython, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A MicroPython board flashed with a claim file only: enrolls itself over MQTT (keys made on
    the board, proof of possession, certificate and its own broker account), reconnects as
    itself, fetches a host's bundle and certificate over the service channel and starts a
    certified session (messages both ways), publishes and tops up its one-time prekeys as peers
    use them, rotates its signed prekey, reads the revocation list and the service's time; the
    spent claim's credential is refused by the broker; a revoked peer's bundle is refused.
    Packets: CONNECT as claim:<id> (the token), SUBSCRIBE .../enroll/<id>/resp, PUBLISH
    .../enroll/<id>/req (challenge, then enroll), answers on resp; DISCONNECT; CONNECT as the
    device, SUBSCRIBE inbox, crl, .../svc/<id>/resp; requests on .../svc/<id>/req."""
    fleet = _fleet()
    # the operator's claim file for the board (e2ee claims create --mqtt), the device id added
    assert cli.main(["--url", system.service.url, "--api-key", OPERATOR_KEY, "--json", "claims", "create",
                     "--fleet", fleet, "--mqtt", "%s:%d" % (system.broker.host, system.broker.port)]) == 0
    claim = json.loads(capsys.readouterr().out)["claim_files"][0]
    assert claim["ca_keys"] == [base64.b64encode(k).decode() for k in system.operator.ca_keys()]
    claim_id, token = claim["claim"], claim["token"]
    board = Board(micropython, tmp_path / "valve-zt", dict(claim, device_id="valve-zt"))
    gateway = system.host(fleet, "gw-zt")
    link = gateway.link().connect()
    try:
        words = board.expect("enrolled")
        assert words[1] == "valve-zt"
        enroll_ms, sent, received = int(words[2]), int(words[3]), int(words[4])
        assert board.expect("ready")[1] == "valve-zt"
        device = system.operator.device("valve-zt")
        assert device["fleet"] == fleet and not device["revoked"]
        # the claim is spent: its broker credential is gone (CONNACK refused)
        assert [c for c in system.operator.list_claims(fleet) if c["id"] == claim_id][0]["used"] == 1
        with pytest.raises(mqtt.MQTTException):
            spent = mqtt.MQTTClient("again", system.broker.host, system.broker.port, topics.claim_user(claim_id),
                                    token)
            spent.connect(timeout=10)

        # prekeys: the signed prekey and one-time prekeys up to the target, over the channel
        assert board.ask("upkeep 30000", "upkeep")[1:] == ["20", "1"]
        inventory = system.operator.inventory("valve-zt")
        assert (inventory["one_time_prekeys"], inventory["signed_prekey_id"]) == (20, 1)

        # time and revocation list
        words = board.ask("time", "time")
        assert words[1] == "200" and abs(int(words[2]) - time.time() * 1000) < 5000
        assert board.ask("crl", "crl")[1:] == ["200", "1"]

        # a certified session with a host the board never met, its bundle from the channel
        before = system.operator.inventory("gw-zt")["one_time_prekeys"]
        wire_before = [int(w) for w in board.ask("wire", "wire")[1:]]
        t0 = time.monotonic()
        assert board.ask("bundle gw-zt", "started")[1] == "gw-zt"
        bundle_ms = (time.monotonic() - t0) * 1000
        bundle_wire = [int(w) - b for w, b in zip(board.ask("wire", "wire")[1:], wire_before)]
        assert system.operator.inventory("gw-zt")["one_time_prekeys"] == before - 1  # handed out once
        assert board.ask("send gw-zt hello from the field", "sent")
        sender, wire = link.receive(timeout=10)
        assert (sender, gateway.sessions.decrypt(sender, wire)) == ("valve-zt", b"hello from the field")
        link.send("valve-zt", gateway.sessions.encrypt("valve-zt", b"close valve 3"))
        board.ask("poll 2000", "polled")
        assert "got gw-zt close valve 3" in board.lines

        # peers use its one-time prekeys: the upkeep tops them up again
        for _ in range(3):
            assert gateway.client.bundle("valve-zt").opk_id is not None
        assert system.operator.inventory("valve-zt")["one_time_prekeys"] == 17
        board.ask("upkeep 30000", "upkeep")
        assert system.operator.inventory("valve-zt")["one_time_prekeys"] == 20

        # a host starts a session from the board's bundle: the PreKeyMessage uses up one of the
        # board's one-time prekeys, and its upkeep tops the service up again by itself
        gateway.start_session("valve-zt")
        assert system.operator.inventory("valve-zt")["one_time_prekeys"] == 19
        link.send("valve-zt", gateway.sessions.encrypt("valve-zt", b"from a new session"))
        assert board.ask("auto 30000", "auto")[1] == "20"
        assert "got gw-zt from a new session" in board.lines
        assert system.operator.inventory("valve-zt")["one_time_prekeys"] == 20

        # signed prekey rotation: stored, uploaded, served
        assert board.ask("rotate 30000", "rotated")[1] == "2"
        assert system.operator.inventory("valve-zt")["signed_prekey_id"] == 2
        assert system.operator.bundle("valve-zt").spk_id == 2

        # the channel refuses what HTTP refuses, with its status
        assert board.ask("ask GET /keys/gw-zt/inventory", "answer")[1] == "403"
        assert board.ask("ask GET /keys/nobody-here/bundle", "answer")[1] == "404"
        sent_total, received_total = (int(w) for w in board.ask("wire", "wire")[1:])
        heap = board.ask("heap", "heap")

        # end-to-end delivery to a host the board never met: Delivery's starter is the channel's
        # BundleStarter; the host's delivery layer delivers once and sends the receipt
        other = system.host(fleet, "gw-dl")
        other_link = other.link().connect()
        try:
            board.tell("deliver gw-dl valve 3 is closed")
            host_delivery = other.delivery()
            got: list[tuple[str, bytes]] = []
            deadline = time.monotonic() + 60
            while not got and time.monotonic() < deadline:
                try:
                    sender, wire = other_link.receive(timeout=0.5)
                except TransportError:
                    continue
                host_delivery.handle(sender, wire, lambda s, p: got.append((s, bytes(p))))
            host_delivery.flush(other_link.send)  # the receipt
            assert got == [("valve-zt", b"valve 3 is closed")]
            assert board.expect("delivered")[1] == "1"
            assert any(line.startswith("status gw-dl 1 sent") for line in board.lines)
        finally:
            other_link.close()

        # a revoked peer: the service refuses its bundle, the starter gives up on it
        system.operator.revoke("gw-zt", "stolen")
        words = board.ask("bundle gw-zt", "refused")
        assert words[1] == "Undeliverable" and "410" in words
        print("\nzero-touch enrollment: %d ms, %d bytes sent, %d received (topics + payloads); bundle and "
              "session start over the channel: %.0f ms (board command to session), %d bytes sent, %d received; "
              "channel total %d/%d bytes; %s"
              % (enroll_ms, sent, received, bundle_ms, bundle_wire[0], bundle_wire[1], sent_total, received_total,
                 " ".join(heap)))
    finally:
        board.stop()
        link.close()


# --- the channel's refusals: CPython clients --------------------------------------------------

@pytest.fixture(scope="module")
def devices(system) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Two devices of one fleet enrolled over HTTP, with their broker accounts."""
    fleet = _fleet()
    out: dict[str, Any] = {"fleet": fleet}
    for name in ("pump-a", "pump-b"):
        keystore = KeyStore.generate(4)
        client = DeviceClient(system.service.url, name, fleet, keystore)
        enrolled = client.enroll(system.operator.create_claims(fleet).tokens[0])
        client.upload_prekeys()
        out[name] = (keystore, enrolled.mqtt["password"])
    return out


def test_a_device_cannot_use_another_devices_channel(system, devices) -> None:  # type: ignore[no-untyped-def]
    # Packets: pump-a SUBSCRIBEs to pump-b's resp topic: SUBACK 0x80. pump-a PUBLISHes a request
    # (signed by its own key, QoS 1) on pump-b's req topic: PUBACK, but the broker drops it (the
    # ACL allows pump-a its own req topic only), so nothing answers on pump-b's resp topic.
    # pump-a on its own topic with a signature by another key: the answer says 401.
    fleet = devices["fleet"]
    key_a, password_a = devices["pump-a"]
    key_b, password_b = devices["pump-b"]
    a = Channel(system.broker, "pump-a", password_a, topics.service_request(fleet, "pump-b"), None)
    b = Channel(system.broker, "pump-b", password_b, topics.service_request(fleet, "pump-b"),
                topics.service_response(fleet, "pump-b"))
    try:
        with pytest.raises(mqtt.MQTTException):
            a.client.subscribe(topics.service_response(fleet, "pump-b"), 1)
        a = Channel(system.broker, "pump-a", password_a, topics.service_request(fleet, "pump-b"), None)
        payload, rid = _signed(key_a, "pump-a", "GET", "/time")
        a.client.publish(topics.service_request(fleet, "pump-b"), payload, qos=1)
        assert b.wait(rid, timeout=2) is None  # dropped by the broker: never served
        a.close()
        own = Channel(system.broker, "pump-a", password_a, topics.service_request(fleet, "pump-a"),
                      topics.service_response(fleet, "pump-a"))
        try:
            forged, rid = _signed(key_b, "pump-a", "GET", "/keys/pump-b/bundle")  # pump-b's key for pump-a
            assert own.ask(forged, rid) == {"id": rid, "status": 401, "detail": "request signature does not verify"}
            payload, rid = _signed(key_a, "pump-a", "GET", "/keys/pump-b/bundle")
            answer = own.ask(payload, rid)
            assert answer is not None and answer["status"] == 200 and answer["body"]["device_id"] == "pump-b"
        finally:
            own.close()
    finally:
        a.close()
        b.close()


def test_malformed_and_replayed_requests_get_error_answers(system, devices) -> None:  # type: ignore[no-untyped-def]
    # Packets: pump-a PUBLISHes each payload on its req topic and reads the answer on its resp
    # topic; none of them stops the service's consumer: a good request is answered at the end.
    fleet = devices["fleet"]
    key_a, password_a = devices["pump-a"]
    ch = Channel(system.broker, "pump-a", password_a, topics.service_request(fleet, "pump-a"),
                 topics.service_response(fleet, "pump-a"))
    try:
        assert ch.ask(b"not json at all", None)["status"] == 400  # type: ignore[index]
        assert ch.ask(b"[1, 2]\n", None)["status"] == 400  # type: ignore[index]
        assert ch.ask(b'{"id": "bad id!"}', None)["status"] == 400  # type: ignore[index]
        assert ch.ask(b'{"id": "r1", "m": "DELETE", "p": "/keys"}', "r1")["status"] == 400  # type: ignore[index]
        assert ch.ask(b'{"id": "r2", "m": "GET", "p": "/keys/pump-a/inventory"}', "r2")["status"] == 401  # type: ignore[index]
        assert ch.ask(b'{"id": "r3", "m": "GET", "p": "/x", "ts": "soon", "sig": "AA=="}', "r3")["status"] == 401  # type: ignore[index]
        assert ch.ask(b"\xff\xfe\n\x00", None)["status"] == 400  # type: ignore[index]
        payload, rid = _signed(key_a, "pump-a", "GET", "/devices")
        assert ch.ask(payload, rid)["status"] == 404  # type: ignore[index]  # not an operation of the channel
        payload, rid = _signed(key_a, "pump-a", "POST", "/keys", b"{not json")
        assert ch.ask(payload, rid)["status"] == 400  # type: ignore[index]
        payload, rid = _signed(key_a, "pump-a", "POST", "/keys", b'{"one_time_prekeys": [{"opk_id": 1}]}')
        assert ch.ask(payload, rid)["status"] == 422  # type: ignore[index]
        stale = time.time_ns() // 1_000_000 - 3_600_000
        payload, rid = _signed(key_a, "pump-a", "GET", "/keys/pump-a/inventory", ts=stale)
        assert ch.ask(payload, rid)["status"] == 401  # type: ignore[index]
        payload, rid = _signed(key_a, "pump-a", "GET", "/keys/pump-a/inventory")
        assert ch.ask(payload, rid)["status"] == 200  # type: ignore[index]
        replay = ch.ask(payload, rid)  # the same signed bytes again: single use, as over HTTP
        assert replay is not None and replay["status"] == 409
        # the consumer lives on: the device SDK's own Service class, on CPython
        svc = Service.for_device(fleet, "pump-a", key_a.sign)
        svc.publish = lambda topic, data: ch.client.publish(topic, data, qos=1)
        ch.client.set_callback(lambda topic, data: svc.handle(topic, data))
        got: list[tuple[int, Any]] = []
        svc.inventory(lambda status, doc: got.append((status, doc)))
        ch.pump(lambda: got)
        assert got and got[0][0] == 200 and got[0][1]["device_id"] == "pump-a"
        # counted, without content: requests and refusals
        text = httpx.get(system.service.url + "/metrics").text
        counts = {s.labels["status"]: s.value for family in text_string_to_metric_families(text)
                  for s in family.samples if s.name == "e2ee_channel_requests_total" and s.labels["kind"] == "device"}
        refused = sum(n for status, n in counts.items() if status != "2xx")
        assert refused >= 12 and counts["2xx"] >= 2
    finally:
        ch.close()


def test_a_claims_credential_may_only_enroll_and_is_gone_once_spent(system) -> None:  # type: ignore[no-untyped-def]
    # Packets: CONNECT as claim:<id> with the token; SUBSCRIBE to an inbox: SUBACK 0x80; enrollment
    # over .../enroll/<id>/req twice (quota 2, CPython keys); a token of another claim on this
    # credential: 403; after the second enrollment the credential's CONNECT is refused (CONNACK 5).
    fleet = _fleet()
    claim_id, token = system.claim(fleet, quota=2)
    _, other_token = system.claim(fleet)
    ch = Channel(system.broker, topics.claim_user(claim_id), token, topics.enroll_request(fleet, claim_id),
                 topics.enroll_response(fleet, claim_id))
    try:
        with pytest.raises(mqtt.MQTTException):
            ch.client.subscribe(topics.inbox(fleet, "anyone"), 1)
        ch = Channel(system.broker, topics.claim_user(claim_id), token, topics.enroll_request(fleet, claim_id),
                     topics.enroll_response(fleet, claim_id))

        def enroll(device_id: str, claim_token: str, password: str = "p" * 32) -> dict[str, Any]:
            answer = ch.ask(b'{"id": "c-%s", "m": "POST", "p": "/enroll/challenge"}' % device_id.encode(),
                            "c-" + device_id)
            assert answer is not None and answer["status"] == 200, answer
            challenge = base64.b64decode(answer["body"]["challenge"])
            keystore = KeyStore.generate(0)
            fields = enrollment.enrollment_fields(keystore, challenge, claim_token, device_id, fleet)
            body = {"claim_token": claim_token, "challenge": answer["body"]["challenge"], "device_id": device_id,
                    "fleet": fleet, "mqtt_password": password,
                    **{k: base64.b64encode(v).decode() for k, v in fields.items()}}
            rid = "e-" + device_id
            answer = ch.ask(b'{"id": "%s", "m": "POST", "p": "/enroll"}\n' % rid.encode() + json.dumps(body).encode(),
                            rid)
            assert answer is not None
            return answer

        assert enroll("meter-x", other_token)["status"] == 403  # another claim's token
        assert enroll("meter-y", token, password="short")["status"] == 422
        first = enroll("meter-1", token, password="meter-1-password-chosen-here")
        assert first["status"] == 201 or first["status"] == 200, first
        assert first["body"]["mqtt"] == {"host": system.broker.host, "port": system.broker.port,
                                         "username": "meter-1", "client_id": "meter-1"}  # no password back
        mqtt.MQTTClient("meter-1", system.broker.host, system.broker.port, "meter-1",
                        "meter-1-password-chosen-here").connect(timeout=10)  # its own account
        assert enroll("meter-2", token)["status"] == 200
        time.sleep(0.5)
        with pytest.raises(mqtt.MQTTException):
            mqtt.MQTTClient("later", system.broker.host, system.broker.port, topics.claim_user(claim_id),
                            token).connect(timeout=10)
    finally:
        try:
            ch.close()
        except OSError:
            pass  # the service ended the spent claim's connection


def test_a_revoked_claims_credential_is_cut_off(system) -> None:  # type: ignore[no-untyped-def]
    # Packets: CONNECT as claim:<id>; the operator revokes the claim (POST /claims/<id>/revoke):
    # the service deletes the credential (deleteClient), the broker ends the connection; a new
    # CONNECT with the token is refused (CONNACK 5).
    fleet = _fleet()
    claim_id, token = system.claim(fleet, quota=10)
    ch = Channel(system.broker, topics.claim_user(claim_id), token, topics.enroll_request(fleet, claim_id),
                 topics.enroll_response(fleet, claim_id))
    try:
        assert ch.ask(b'{"id": "c1", "m": "POST", "p": "/enroll/challenge"}', "c1")["status"] == 200  # type: ignore[index]
        assert system.operator.revoke_claim(claim_id, "batch lost")["revoked_at"]
        with pytest.raises(OSError):  # the connection is gone
            ch.client.sock.settimeout(5)
            ch.client.wait_msg()
        with pytest.raises(mqtt.MQTTException):
            mqtt.MQTTClient("later", system.broker.host, system.broker.port, topics.claim_user(claim_id),
                            token).connect(timeout=10)
    finally:
        ch.close()


def test_a_board_enrolls_by_claim_over_the_tls_listener(system, micropython, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The claim's connection over the broker's TLS listener (the production broker has no
    other), the broker's certificate checked against its CA and the name on it (a board trusting
    another CA refuses it and spends nothing); then the board runs as itself and its signed
    requests are served.
    Packets: TLS handshake, CONNECT as claim:<id>, the two enrollment requests and answers;
    CONNECT as the device; GET /time and its own inventory on the service channel."""
    fleet = _fleet()
    claim_id, token = system.claim(fleet)
    ca_keys = [base64.b64encode(k).decode() for k in system.operator.ca_keys()]
    claim = {"fleet": fleet, "host": system.broker.host, "port": system.broker.tls_port, "claim": claim_id,
             "token": token, "ca_keys": ca_keys, "device_id": "meter-tls"}
    # MicroPython's mbedTLS reads a CA in DER (PEM only NUL-terminated), as a board stores it
    pem = system.broker.tls_files["ca"].read_bytes()  # type: ignore[index]
    der = tmp_path / "broker-ca.der"
    der.write_bytes(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER))
    # a board that trusts another CA refuses the broker's certificate: nothing is sent, the claim stays
    other = dev_tls(tmp_path / "other-ca")["ca"]
    other_der = tmp_path / "other-ca.der"
    other_der.write_bytes(x509.load_pem_x509_certificate(other.read_bytes()).public_bytes(serialization.Encoding.DER))
    (tmp_path / "wrong" / "e2ee_data").mkdir(parents=True)
    (tmp_path / "wrong" / "e2ee_data" / "claim.json").write_text(json.dumps(dict(claim, device_id="meter-wrong")))
    refused = subprocess.run([micropython.binary, "-X", "heapsize=" + HEAP, str(NODE), str(other_der)],
                             capture_output=True, text=True, cwd=tmp_path / "wrong", env=micropython.env(), timeout=60)
    assert refused.returncode != 0 and "not correctly signed by the trusted CA" in refused.stdout + refused.stderr
    assert [c for c in system.operator.list_claims(fleet) if c["id"] == claim_id][0]["used"] == 0
    board = Board(micropython, tmp_path / "meter-tls", claim, str(der))
    try:
        assert board.expect("enrolled")[1] == "meter-tls"
        assert board.expect("ready")[1] == "meter-tls"
        assert board.ask("time", "time")[1] == "200"
        assert board.ask("ask GET /keys/meter-tls/inventory", "answer")[1] == "200"
        assert system.operator.device("meter-tls")["fleet"] == fleet
    finally:
        board.stop()


def test_a_board_without_a_clock_takes_the_services_time_before_signing(system, devices, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Packets: pump-b's unsigned GET /time on its req topic and the answer; then a signed GET of
    # its inventory, timestamped with the service's clock carried on by the tick counter.
    import e2ee.transport.service as service_module
    monkeypatch.setattr(service_module, "_wall_ms", lambda: 946684800000)  # an ESP32 that booted in 2000
    fleet = devices["fleet"]
    key_b, password_b = devices["pump-b"]
    ch = Channel(system.broker, "pump-b", password_b, topics.service_request(fleet, "pump-b"),
                 topics.service_response(fleet, "pump-b"))
    try:
        svc = Service.for_device(fleet, "pump-b", key_b.sign)
        svc.publish = lambda topic, data: ch.client.publish(topic, data, qos=1)
        ch.client.set_callback(lambda topic, data: svc.handle(topic, data))
        assert svc.now_ms() is None
        with pytest.raises(service_module.ServiceError):
            svc.inventory(lambda status, doc: None)  # nothing to sign a timestamp with yet
        got: list[tuple[int, Any]] = []
        svc.sync_time(lambda status, doc: got.append((status, doc)))
        ch.pump(lambda: got)
        assert got and got[0][0] == 200
        assert abs(svc.now_ms() - time.time() * 1000) < 2000  # type: ignore[operator]
        svc.inventory(lambda status, doc: got.append((status, doc)))
        ch.pump(lambda: len(got) == 2)
        assert len(got) == 2 and got[1][0] == 200 and got[1][1]["device_id"] == "pump-b"
    finally:
        ch.close()


def test_a_device_reports_its_counts_over_the_channel(system, devices) -> None:  # type: ignore[no-untyped-def]
    # Packets: pump-b PUBLISHes a signed POST /reports on its req topic (QoS 1) and reads the
    # answer on its resp topic: 200 with an empty body; the counts land in its fleet's
    # e2ee_client_events_total, and the channel counts the request as a 2xx. A report with an
    # unknown field is a 422 and counts nothing.
    fleet = devices["fleet"]
    key_b, password_b = devices["pump-b"]
    own = Channel(system.broker, "pump-b", password_b, topics.service_request(fleet, "pump-b"),
                  topics.service_response(fleet, "pump-b"))
    try:
        payload, rid = _signed(key_b, "pump-b", "POST", "/reports", b'{"received": 7, "decrypt_failures": 2}')
        assert own.ask(payload, rid) == {"id": rid, "status": 200, "body": {}}
        payload, rid = _signed(key_b, "pump-b", "POST", "/reports", b'{"received": 1, "peer": "pump-a"}')
        answer = own.ask(payload, rid)
        assert answer is not None and answer["status"] == 422
    finally:
        own.close()
    text = httpx.get(system.service.url + "/metrics").text
    events = {(s.labels.get("event"), s.value) for family in text_string_to_metric_families(text)
              for s in family.samples if s.name == "e2ee_client_events_total" and s.labels.get("fleet") == fleet}
    assert ("received", 7) in events and ("decrypt_failures", 2) in events
    served = [s.value for family in text_string_to_metric_families(text) for s in family.samples
              if s.name == "e2ee_channel_requests_total" and s.labels == {"kind": "device", "status": "2xx"}]
    assert served and served[0] >= 1
