"""The device MQTT client and link (e2ee.transport.mqtt, e2ee.transport.link; docs/boards.md,
"Device MQTT client") under MicroPython and CPython: tests/device/mqtt_client_checks.py runs
against a scripted MQTT 3.1.1 server in this file (resets, oversized, malformed and QoS 2
packets, refused CONNACK and SUBACK, withheld PINGRESP) and against the project's Mosquitto
(refused credentials, an oversized message queued for a persistent session, the retained
revocation list, keepalive, a broker restart under Link.step())."""
from __future__ import annotations

import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from support import DEVICE_TESTS, ROOT

from e2ee.protocol import certificate, envelope
from e2ee.transport import mqtt, topics
from e2ee_host.broker import DynSec, MosquittoProcess

SCRIPT = DEVICE_TESTS / "mqtt_client_checks.py"
RUNTIMES = ("micropython", "cpython")
FLEET = "fake-fleet"  # the checks' fleet for the scripted server
CONNACK_OK = b"\x20\x02\x00\x00"
PINGREQ, PINGRESP, DISCONNECT = 0xC0, b"\xd0\x00", 0xE0


def test_max_packet_fits_the_largest_legitimate_message() -> None:
    """MAX_PACKET holds the largest revocation list and the largest inbox envelope on their
    topics (ids and fleets at their 64-character limit), and stays under the broker's
    max_packet_size, which stops anything larger before it reaches a device."""
    name = "n" * certificate.MAX_NAME
    crl = 2 + len(topics.crl(name)) + 2 + certificate.MAX_SIGNED_REVOCATION_LIST
    inbox = 2 + len(topics.inbox(name, name)) + 2 + len(topics.frame(name, b"e" * envelope.MAX_ENVELOPE))
    assert (crl, inbox) == (9480, 5335)
    assert max(crl, inbox) <= mqtt.MAX_PACKET == 9600 < 16384
    conf = (ROOT / "broker-config" / "mosquitto.conf.template").read_text()
    assert "max_packet_size 16384" in conf


# ---- running the device checks ------------------------------------------------------------------

def _command(runtime: str, micropython, *args: str) -> tuple[list[str], dict[str, str]]:  # type: ignore[no-untyped-def]
    if runtime == "micropython":
        return ([micropython.binary, "-X", "heapsize=" + micropython.heapsize, str(SCRIPT), *args],
                micropython.env())
    return [sys.executable, str(SCRIPT), *args], dict(os.environ, PYTHONPATH="%s%s%s" % (
        ROOT / "firmware", os.pathsep, DEVICE_TESTS))


def run_checks(runtime: str, micropython, *args: str, server: FakeServer | None = None) -> str:  # type: ignore[no-untyped-def]
    cmd, env = _command(runtime, micropython, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    out = proc.stdout + proc.stderr
    problems = server.finish() if server else []
    if proc.returncode or "Traceback" in out or problems:
        pytest.fail("%s checks %s failed (exit %d):\n%s\nserver: %s" % (
            runtime, " ".join(args[:1] + args[-1:]), proc.returncode, out, problems), pytrace=False)
    return proc.stdout


# ---- the scripted server ---------------------------------------------------------------------

def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: bytes, payload: bytes, qos: int = 0, pid: int = 0) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", pid) if qos else b"") + payload
    return bytes((0x30 | qos << 1,)) + _length(len(body)) + body


@dataclass
class Peer:
    """One connection to the scripted server, after its CONNECT."""
    conn: socket.socket
    client_id: str = ""
    flags: int = 0
    keepalive: int = 0
    user: bytes | None = None
    password: bytes | None = None
    seen: list[int] = field(default_factory=list)

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.conn.recv(n - len(data))
            if not chunk:
                raise EOFError("the client closed the connection")
            data += chunk
        return data

    def packet(self) -> tuple[int, bytes]:
        first = self._exact(1)[0]
        n, shift = 0, 0
        while True:
            b = self._exact(1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        self.seen.append(first)
        return first, self._exact(n)

    def expect(self, first: int) -> bytes:
        got, body = self.packet()
        assert got == first, "expected %02x, got %02x %r" % (first, got, body[:16])
        return body

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def read_connect(self) -> None:
        body = self.expect(0x10)
        assert body[:7] == b"\x00\x04MQTT\x04", body[:7]
        self.flags, self.keepalive = body[7], struct.unpack("!H", body[8:10])[0]
        fields, pos = [], 10
        while pos < len(body):
            n = struct.unpack("!H", body[pos:pos + 2])[0]
            fields.append(body[pos + 2:pos + 2 + n])
            pos += 2 + n
        self.client_id = fields.pop(0).decode()
        if self.flags & 0x04:
            fields[:2] = []
        if self.flags & 0x80:
            self.user = fields.pop(0)
        if self.flags & 0x40:
            self.password = fields.pop(0)

    def subscribed(self, granted: int = 1) -> tuple[bytes, int]:
        """Reads a SUBSCRIBE of one filter, answers SUBACK(granted); returns the filter and QoS."""
        body = self.expect(0x82)
        n = struct.unpack("!H", body[2:4])[0]
        assert len(body) == 5 + n, body
        self.send(b"\x90\x03" + body[:2] + bytes((granted,)))
        return body[4:4 + n], body[4 + n]

    def acked(self, kind: int, pid: int) -> None:
        assert self.expect(kind) == struct.pack("!H", pid)

    def closed(self) -> list[int]:
        """Reads until the client closes the connection (a reset when it left bytes unread);
        the packet types it sent before."""
        types = []
        try:
            while True:
                types.append(self.packet()[0])
        except (EOFError, ConnectionResetError):
            return types

    def reset(self) -> None:
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.conn.close()


Script = Callable[[Peer, int], None]


class FakeServer:
    """A scripted MQTT server on 127.0.0.1: the client id in each CONNECT names the script that
    plays the connection (with the connection's number for that name, from 1), in a thread;
    finish() returns what went wrong and which expected connections never came."""

    def __init__(self, scripts: dict[str, Script], expected: set[tuple[str, int]]) -> None:
        self.scripts, self.expected = scripts, expected
        self.done: set[tuple[str, int]] = set()
        self.errors: list[str] = []
        self._counts: dict[str, int] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        peer = Peer(conn)
        name = "?"
        try:
            peer.read_connect()
            name = peer.client_id
            with self._lock:
                n = self._counts[name] = self._counts.get(name, 0) + 1
            self.scripts[name](peer, n)
            with self._lock:
                self.done.add((name, n))
        except Exception as e:  # reported by finish()
            with self._lock:
                self.errors.append("%s: %s %s (packets seen %s)" % (name, type(e).__name__, e,
                                                                    [hex(t) for t in peer.seen]))
        finally:
            conn.close()

    def finish(self) -> list[str]:
        self.sock.close()
        for thread in list(self._threads):
            thread.join(35)
        missing = sorted(self.expected - self.done)
        return self.errors + (["never completed: %s" % missing] if missing else [])


def _inbox(device_id: str) -> bytes:
    return topics.inbox(FLEET, device_id).encode()


def _linked(peer: Peer) -> None:
    """A link's connection: persistent session with its credentials, its inbox and the fleet's
    revocation list subscribed at QoS 1."""
    assert (peer.flags, peer.user, peer.password) == (0xC0, peer.client_id.encode(), b"pw"), peer
    peer.send(CONNACK_OK)
    assert peer.subscribed() == (_inbox(peer.client_id), 1)
    assert peer.subscribed() == (topics.crl(FLEET).encode(), 1)


# CONNECT/CONNACK; PINGREQ; the server resets the connection (RST).
def s_reset(peer: Peer, n: int) -> None:
    peer.send(CONNACK_OK)
    peer.expect(PINGREQ)
    peer.reset()


# CONNECT/CONNACK; PINGREQ; the server closes the connection (FIN).
def s_eof(peer: Peer, n: int) -> None:
    peer.send(CONNACK_OK)
    peer.expect(PINGREQ)


# CONNECT/CONNACK; PUBLISH QoS 1 of 2.1 MB (id 1), QoS 0 of 20 KB, QoS 1 of a full revocation
# list (id 2), QoS 1 of exactly MAX_PACKET (id 3), of MAX_PACKET + 1 (id 4), a small one (id 5);
# PUBACK 1..5 in order (dropped ones too); DISCONNECT.
def s_oversize(peer: Peer, n: int) -> None:
    peer.send(CONNACK_OK)
    peer.send(publish(b"t/huge", b"h" * 2_100_000, 1, 1))
    peer.send(publish(b"t/big", b"b" * 20_000))
    peer.send(publish(topics.crl("f" * 64).encode(), b"c" * 9400, 1, 2))
    peer.send(publish(b"t/max", b"m" * (mqtt.MAX_PACKET - 9), 1, 3))
    peer.send(publish(b"t/over", b"o" * (mqtt.MAX_PACKET - 9), 1, 4))
    peer.send(publish(b"t/end", b"end", 1, 5))
    for pid in range(1, 6):
        peer.acked(0x40, pid)
    assert peer.closed() == [DISCONNECT]


# CONNECT/CONNACK; a PUBLISH whose remaining length runs to a fifth byte; the client closes.
def s_bad_length(peer: Peer, n: int) -> None:
    peer.send(CONNACK_OK + b"\x30\xff\xff\xff\xff\x01")
    peer.closed()


# CONNECT/CONNACK; a 3-byte PUBLISH announcing a 10-byte topic; the client closes.
def s_bad_topic(peer: Peer, n: int) -> None:
    peer.send(CONNACK_OK + b"\x30\x03\x00\x0aX")
    peer.closed()


# CONNECT/CONNACK; PINGREQ is the first packet (the refused QoS 2 publish and subscribe sent
# nothing)/PINGRESP; PUBLISH QoS 2 (id 9)/PUBREC 9; PUBREL 9/PUBCOMP 9; PUBLISH QoS 0; DISCONNECT.
def s_qos2(peer: Peer, n: int) -> None:
    peer.send(CONNACK_OK)
    peer.expect(PINGREQ)
    peer.send(PINGRESP)
    peer.send(publish(b"t/q2", b"two", 2, 9))
    peer.acked(0x50, 9)
    peer.send(b"\x62\x02\x00\x09")
    peer.acked(0x70, 9)
    peer.send(publish(b"t/after", b"after"))
    assert peer.closed() == [DISCONNECT]


# CONNECT/CONNACK 5 (not authorised); the client closes its socket.
def s_refused(peer: Peer, n: int) -> None:
    assert (peer.user, peer.password) == (b"refused", b"wrong")
    peer.send(b"\x20\x02\x00\x05")
    assert peer.closed() == []


# CONNECT/a PUBLISH header instead of CONNACK; the client closes its socket.
def s_not_connack(peer: Peer, n: int) -> None:
    peer.send(b"\x30\x02\x00\x00")
    assert peer.closed() == []


# CONNECT/CONNACK; SUBSCRIBE/SUBACK 0x80; SUBSCRIBE/SUBACK 1; DISCONNECT.
def s_suback(peer: Peer, n: int) -> None:
    peer.send(CONNACK_OK)
    assert peer.subscribed(0x80) == (b"no/such", 1)
    assert peer.subscribed(1) == (b"yes", 1)
    assert peer.closed() == [DISCONNECT]


# Connection 1: the link's CONNECT/CONNACK, SUBSCRIBE x2; PUBLISH m1; PINGREQ/PINGRESP;
# PUBLISH "pong seen"; PINGREQ, withheld; the client closes. Connection 2: CONNECT/CONNACK,
# SUBSCRIBE x2; PUBLISH "again"; DISCONNECT.
def s_link_keepalive(peer: Peer, n: int) -> None:
    _linked(peer)
    assert peer.keepalive == 30
    if n == 1:
        peer.send(publish(_inbox(peer.client_id), topics.frame("peer", b"m1")))
        peer.expect(PINGREQ)
        peer.send(PINGRESP + publish(_inbox(peer.client_id), topics.frame("peer", b"pong seen")))
        peer.expect(PINGREQ)
        assert peer.closed() == []
    else:
        peer.send(publish(_inbox(peer.client_id), topics.frame("peer", b"again")))
        assert peer.closed() == [DISCONNECT]


# Connection 1: the link's CONNECT/CONNACK, SUBSCRIBE x2; reset. Connection 2: the same, then
# PUBLISH QoS 1 (id 1)/PUBACK 1; DISCONNECT.
def s_link_reset(peer: Peer, n: int) -> None:
    _linked(peer)
    if n == 1:
        peer.reset()
    else:
        peer.send(publish(_inbox(peer.client_id), topics.frame("peer", b"back"), 1, 1))
        peer.acked(0x40, 1)
        assert peer.closed() == [DISCONNECT]


# Twice: the link's CONNECT (persistent session, its credentials)/CONNACK 4; the client closes.
def s_link_refused(peer: Peer, n: int) -> None:
    assert (peer.flags, peer.user, peer.password, peer.keepalive) == (0xC0, b"link_refused", b"pw", 60)
    peer.send(b"\x20\x02\x00\x04")
    assert peer.closed() == []


# CONNECT/CONNACK; SUBSCRIBE (inbox)/SUBACK 0x80; the client closes.
def s_link_suback(peer: Peer, n: int) -> None:
    peer.send(CONNACK_OK)
    assert peer.subscribed(0x80) == (_inbox(peer.client_id), 1)
    assert peer.closed() == []


SCRIPTS: dict[str, Script] = {name[2:]: fn for name, fn in globals().items() if name.startswith("s_")}
EXPECTED = {(name, 1) for name in SCRIPTS} | {("link_keepalive", 2), ("link_reset", 2), ("link_refused", 2)}
CHECKS = ("lengths", "encoding", "limits", "backoff", "reset", "eof", "oversize", "bad_length", "bad_topic",
          "qos2", "refused", "suback", "link_keepalive", "link_reset", "link_refused", "link_suback")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_client_and_link_against_the_scripted_server(runtime, micropython) -> None:  # type: ignore[no-untyped-def]
    # One device process runs every check; each check's connection plays the exchange written
    # above its script (s_<check>), the link checks two connections each; a script that saw
    # anything else, or a connection that never came, fails the test with the device's output.
    server = FakeServer(SCRIPTS, EXPECTED)
    out = run_checks(runtime, micropython, "fake", "127.0.0.1", str(server.port), server=server)
    assert out.split("\n")[:-1] == ["ok " + name for name in CHECKS]


# ---- the project's Mosquitto -----------------------------------------------------------------

@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory) -> Iterator[MosquittoProcess]:  # type: ignore[no-untyped-def]
    with MosquittoProcess(tmp_path_factory.mktemp("device-mqtt-broker")) as broker:
        yield broker


def _admin(broker: MosquittoProcess) -> DynSec:
    return DynSec(broker.host, broker.port, broker.admin_user, broker.admin_password)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_link_on_mosquitto(runtime, micropython, mosquitto) -> None:  # type: ignore[no-untyped-def]
    """Phases of mqtt_client_checks.py against the real broker, with the test acting in between:
    refused -> session -> (12 KB and small message queued, 9400-byte list retained) -> queued ->
    again -> restart (the broker restarts, a message is queued, the device's step() loop gets it)."""
    # refused: CONNECT (wrong password)/CONNACK 5; CONNECT/CONNACK, SUBSCRIBE/SUBACK 1, PUBLISH
    # QoS 1 to its own inbox/PUBACK and the PUBLISH back. session: CONNECT (clean_session 0)/CONNACK,
    # SUBSCRIBE x2, DISCONNECT. queued: CONNACK, then the queued 12 KB PUBLISH (dropped, PUBACK) and
    # the small one, the retained list after SUBACK. again: nothing queued; PINGREQ/PINGRESP twice.
    # restart: the TCP connection dies with the broker; step() connects again and gets the queue.
    fleet, device_id, password = "mq-" + runtime, "meter-" + runtime, secrets.token_urlsafe(12)
    admin = _admin(mosquitto)
    try:
        admin.provision_device(fleet, device_id, password)
        args = ("broker", mosquitto.host, str(mosquitto.port), fleet, device_id, password)
        for phase in ("refused", "session"):
            assert run_checks(runtime, micropython, *args, phase) == "ok %s\n" % phase
        admin.publish_inbox(fleet, device_id, "big-sender", b"x" * 12000)  # over MAX_PACKET
        admin.publish_inbox(fleet, device_id, "peer", b"small")
        admin.publish_revocation_list(fleet, os.urandom(certificate.MAX_SIGNED_REVOCATION_LIST))
        for phase in ("queued", "again"):
            assert run_checks(runtime, micropython, *args, phase) == "ok %s\n" % phase
    finally:
        admin.close()

    cmd, env = _command(runtime, micropython, *args, "restart")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=ROOT)
    try:
        assert proc.stdout.readline() == "up\n"  # type: ignore[union-attr]
        mosquitto.restart()  # the device's connection dies; its session and queue persist
        admin = _admin(mosquitto)
        try:
            admin.publish_inbox(fleet, device_id, "peer", b"after restart")
        finally:
            admin.close()
        out, _ = proc.communicate("go\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and out == "ok restart\n", out
