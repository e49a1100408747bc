"""A board on its own in the field (issue 14, "Must show"; docs/boards.md, "Node"): a virtual ESP32
flashed with only the SDK (`e2ee flash`), the example application firmware/examples/sensor_node.py
as main.py, a claim file, its node settings and the broker's CA. From then on the test never
writes to its serial line; it only reads what the board prints. The project's Mosquitto with its
TLS listener, the provisioning service driving it, hosts on CPython (e2ee_host Messenger)."""
from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from e2ee.protocol import session
from e2ee_host import cli
from e2ee_host.board_link import flash
from e2ee_host.broker import MosquittoProcess
from e2ee_host.client import OperatorClient
from e2ee_host.install import HostInstall
from e2ee_host.messenger import Messenger
from e2ee_host.service import ServiceProcess
from e2ee_host.virtual_board import BOARD_PROFILES, MPY_SDK_HEAP_KB, SerialTap, VirtualBoard

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "firmware" / "examples" / "sensor_node.py"
OPERATOR_KEY = "node-field-tests-operator-key-51c2"
MESSAGES = 100  # each way
# The virtual ESP32's heap: its 120 KB budget plus the SDK loaded as .mpy files into RAM (144 KB,
# e2ee_host.virtual_board.MPY_SDK_HEAP_KB) plus 56 KB: the node's own modules as .mpy (the service
# channel, the upkeep, e2ee.node, ssl: 18 KB measured on the unix port), which a board keeps in
# flash, and room for a second peer's session start on this 64-bit build: at 264 KB that ran out
# of memory, at 288 KB in one run of three (a 1765-byte block). Free heap: docs/performance.md.
HEAP = "%dK" % (int(BOARD_PROFILES["esp32"].heap[:-1]) + MPY_SDK_HEAP_KB + 56)


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Iterator[tuple[MosquittoProcess, ServiceProcess]]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("node-field")
    with MosquittoProcess(tmp / "broker", tls=True) as broker:
        with ServiceProcess(tmp / "service.log", data_dir=tmp / "service", operator_api_key=OPERATOR_KEY,
                            broker_admin_host=broker.host, broker_admin_port=broker.port,
                            broker_admin_user=broker.admin_user, broker_admin_password=broker.admin_password,
                            mqtt_host="localhost", mqtt_port=broker.tls_port) as service:  # what boards get
            yield broker, service


def _until(done: Callable[[], bool], timeout: float, what: str, pump: Messenger | None = None,
           serial: SerialTap | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if serial is not None and any("Traceback" in line for line in serial.lines):
            pytest.fail("the board failed: %s" % "\n".join(serial.lines[-15:]), pytrace=False)
        if time.monotonic() > deadline:
            tail = "\n".join(serial.lines[-15:]) if serial else ""
            pytest.fail("%s: not within %.0f s\n%s" % (what, timeout, tail), pytrace=False)
        if pump is not None:
            pump.pump(0.05)
        else:
            time.sleep(0.05)


def test_a_flashed_board_enrolls_talks_keeps_its_keys_reboots_and_stops_when_revoked(  # type: ignore[no-untyped-def]
        system, tmp_path, capsys) -> None:
    """Packets: (board, TLS listener) CONNECT as claim:<id>, the enrollment requests on
    .../enroll/<id>/req and their answers; CONNECT as the device, SUBSCRIBE inbox, crl, svc resp;
    GET /keys/gw-1/bundle on .../svc/<id>/req; PreKeyMessage and messages to gw-1's inbox, gw-1's
    receipts and messages back (QoS 1 each); inventory checks and POST /keys uploads; after the
    revocation the broker ends the board's connection and refuses its CONNECT (CONNACK 5)."""
    broker, service = system
    operator = OperatorClient(service.url, OPERATOR_KEY)
    fleet = "plant-" + secrets.token_hex(3)
    # the operator's claim file (e2ee claims create --mqtt: broker address, claim, token, CA keys)
    assert cli.main(["--url", service.url, "--api-key", OPERATOR_KEY, "--json", "claims", "create", "--fleet", fleet,
                     "--mqtt", "localhost:%d" % broker.tls_port]) == 0
    claim = json.loads(capsys.readouterr().out)["claim_files"][0]
    assert claim["ca_keys"] == [base64.b64encode(k).decode() for k in operator.ca_keys()]
    files = tmp_path / "files"
    files.mkdir()
    (files / "claim.json").write_text(json.dumps(dict(claim, device_id="sensor-1")))
    # the node's settings: TLS with the broker's CA; readings to gw-1 every 20 ms, MESSAGES of them
    # per boot; the upkeep's schedule shortened (inventory every 3 s, a rotation every 15 s)
    (files / "node.json").write_text(json.dumps({
        "ca": "e2ee_data/broker-ca.der", "peer": "gw-1", "every_ms": 20, "count": MESSAGES,
        "check_every": 3, "soon": 1, "spk_every": 15}))
    pem = broker.tls_files["ca"].read_bytes()  # type: ignore[index]
    (files / "broker-ca.der").write_bytes(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER))

    gateway = HostInstall.init(tmp_path / "gw-1", service.url, "gw-1", fleet, operator.create_claims(fleet).tokens[0])
    got: list[tuple[str, bytes]] = []
    plain = "%s:%d" % (broker.host, broker.port)  # hosts: the plain listener
    host = Messenger.open(gateway, plain, on_message=lambda sender, data: got.append((sender, data)))
    board = VirtualBoard(tmp_path / "flash", "esp32", heap=HEAP).boot()  # an empty board
    serial = None
    try:
        flash(board.port, APP, files=[(files / "claim.json", "e2ee_data/claim.json"),
                                      (files / "node.json", "e2ee_data/node.json"),
                                      (files / "broker-ca.der", "e2ee_data/broker-ca.der")])
        written = -1
        while written != board.host_bytes:  # until the relay has taken the last bytes mpremote wrote
            written = board.host_bytes
            time.sleep(0.5)
        serial = SerialTap(board.port)
        t0 = time.monotonic()
        board.reboot()  # power cycle: main.py runs on its own

        # enrolled by itself over the TLS listener, then readings to a host it never met (the
        # session from gw-1's bundle over the service channel)
        _until(lambda: len(got) >= 1, 60, "the first reading", host, serial)
        first_ms = (time.monotonic() - t0) * 1000
        assert operator.device("sensor-1")["fleet"] == fleet
        assert not (tmp_path / "flash" / "e2ee_data" / "claim.json").exists()
        # messages the other way, on the session the board started
        sent = [host.send("sensor-1", b"cmd %d" % i) for i in range(MESSAGES)]
        _until(lambda: len(got) >= MESSAGES and all(host.status("sensor-1", s)[0] == "delivered" for s in sent),
               60, "100 readings in, 100 commands delivered", host, serial)
        assert sorted(int(d.split()[1]) for s, d in got if s == "sensor-1") == list(range(1, MESSAGES + 1))
        _until(lambda: serial.count("got gw-1 cmd") >= MESSAGES, 10, "the board prints 100 commands")
        assert [line.split()[3] for line in serial.lines if line.startswith("got gw-1 cmd")] == \
            [str(i) for i in range(MESSAGES)]
        exchange_ms = (time.monotonic() - t0) * 1000 - first_ms

        # prekeys: published up to the target; peers use them, the board tops them up by itself
        def inventory() -> tuple[int, int]:
            inv = operator.inventory("sensor-1")
            return inv["one_time_prekeys"], inv["signed_prekey_id"]
        _until(lambda: inventory()[0] == 20, 30, "20 one-time prekeys published", host, serial)
        other = HostInstall.init(tmp_path / "gw-2", service.url, "gw-2", fleet, operator.create_claims(fleet).tokens[0])
        with Messenger.open(other, plain) as second:
            seq = second.send("sensor-1", b"hello from gw-2")  # its session from the board's bundle: one OPK
            for _ in range(3):
                assert other.client.bundle("sensor-1").opk_id is not None
            assert inventory()[0] <= 16
            _until(lambda: second.status("sensor-1", seq)[0] == "delivered", 30, "gw-2's message", second, serial)
        assert "got gw-2 hello from gw-2" in serial.lines
        _until(lambda: inventory()[0] == 20, 30, "one-time prekeys topped up again", host, serial)
        # the signed prekey rotates on its (shortened) schedule, and the service serves the new one
        _until(lambda: inventory()[1] >= 2, 30, "a signed prekey rotation", host, serial)
        assert any(line.startswith("e2ee: rotated signed prekey") for line in serial.lines)
        assert operator.bundle("sensor-1").spk_id >= 2

        # a power cycle: the board comes back as itself and carries on where it was
        mark, before = len(serial.lines), len(got)
        board.reboot()
        _until(lambda: len(got) >= before + MESSAGES, 60, "100 readings after the reboot", host, serial)
        sent = [host.send("sensor-1", b"again %d" % i) for i in range(10)]
        _until(lambda: all(host.status("sensor-1", s)[0] == "delivered" for s in sent), 30,
               "messages after the reboot", host, serial)
        assert serial.count("got gw-1 again", mark) == 10
        assert operator.device("sensor-1")["fleet"] == fleet  # no second enrollment

        # another device revoked: the board takes the new list from its crl topic and carries on
        operator.revoke("gw-2", "retired")
        _until(lambda: serial.count("e2ee: revocation list") == 1, 30, "the new list on the board", host, serial)
        seq = host.send("sensor-1", b"still there?")
        _until(lambda: host.status("sensor-1", seq)[0] == "delivered", 30, "a message after the list", host, serial)
        assert serial.count("stopped:") == 0

        # the operator revokes it: the broker cuts it off, the board stops, the host refuses it
        operator.revoke("sensor-1", "decommissioned")
        _until(lambda: serial.count("stopped:") == 1, 30, "the board stops")
        assert "CONNACK 5" in [line for line in serial.lines if line.startswith("stopped:")][0]
        gateway.refresh_revocation_list()
        with pytest.raises(session.PeerRevoked):
            gateway.sessions.encrypt("sensor-1", b"are you there?")
        quiet = len(got)
        host.pump(1.0)
        assert len(got) == quiet  # nothing more from it

        assert not [line for line in serial.lines if "MemoryError" in line]
        assert board.host_bytes == written  # not a byte on the serial line since flashing
        print("\nnode in the field: power-on to first reading delivered %.0f ms, 100 each way %.0f ms; the board "
              "said:\n%s" % (first_ms, exchange_ms, "\n".join(line for line in serial.lines if not line.startswith("got "))))
    finally:
        board.stop()
        if serial is not None:
            serial.close()
        host.close()
