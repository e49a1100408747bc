"""The board application (firmware/examples/mqtt_device.py, e2ee.device.Device, e2ee.transport.link)
under MicroPython on the project's Mosquitto, provisioned the way `e2ee provision` does it
(e2ee.provision.generate on the board, a certificate from a Fleet CA, e2ee.provision.install), with
CPython peers: issue 12, findings 1 (boards run certified: impersonation and revoked peers are
refused, the link's `crl` messages update the TrustStore) and 6 (a board acknowledges and drops,
counts and logs the type of, a message it cannot use, instead of looping on it)."""
from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ROOT

from e2ee.protocol import certificate, envelope
from e2ee.protocol.keys import KeyStore, PrekeyBundle
from e2ee.protocol.session import SessionManager
from e2ee.protocol.trust import TrustStore
from e2ee.transport import mqtt, topics
from e2ee_host import fleet_ca
from e2ee_host.broker import DynSec, MosquittoProcess
from e2ee_host.transport import HostLink

APP = ROOT / "firmware" / "examples" / "mqtt_device.py"
HEAP = "264K"  # the virtual ESP32's heap with the SDK loaded as .mpy (e2ee_host.virtual_board)
DAY = 86400


class Fleet:
    """A Fleet CA, its revocation lists, and the broker's dynamic security."""

    def __init__(self, broker: MosquittoProcess, tmp: Path) -> None:
        self.broker, self.tmp = broker, tmp
        self.name = "plant-" + secrets.token_hex(4)  # its own topics: no retained list of another test
        self.ca = fleet_ca.FileCAKeystore(tmp / "ca.json")
        self.admin = DynSec(broker.host, broker.port, broker.admin_user, broker.admin_password)
        self.version = 1
        self.crl = fleet_ca.sign_revocation_list(self.ca, version=1, revoked_serials=[])

    def certify(self, device_id: str, ik: bytes, is_: bytes) -> bytes:
        now = int(time.time())
        return fleet_ca.issue_certificate(self.ca, device_id=device_id, fleet=self.name, identity_dh=ik,
                                          identity_sign=is_, not_before=now - 60, not_after=now + DAY)

    def credentials(self, device_id: str) -> str:
        password = secrets.token_urlsafe(12)
        self.admin.provision_device(self.name, device_id, password)
        return password

    def revoke(self, *serials: bytes) -> bytes:
        self.version += 1
        self.crl = fleet_ca.sign_revocation_list(self.ca, version=self.version, revoked_serials=serials)
        self.admin.publish_revocation_list(self.name, self.crl)
        return self.crl

    def close(self) -> None:
        self.admin.close()


class Peer:
    """A CPython fleet member: certified sessions (TrustStore), its own broker link."""

    def __init__(self, fleet: Fleet, name: str, link: bool = True) -> None:
        self.fleet, self.name = fleet, name
        self.keystore = KeyStore.generate(2)
        self.certificate = fleet.certify(name, self.keystore.ik_pub, self.keystore.is_pub)
        self.serial = certificate.decode_certificate_unverified(self.certificate).serial
        self.trust = TrustStore(str(fleet.tmp / name), os.urandom(32))
        self.trust.set_ca_keys(fleet.ca.public_keys())
        self.trust.update_revocation_list(fleet.crl)
        identity = (self.keystore.ik_pub, self.keystore.is_pub)
        self.trust.set_certificate(self.certificate, int(time.time()), identity)
        self.sessions = SessionManager(str(fleet.tmp / name), os.urandom(32), self.keystore, trust=self.trust)
        self.password = fleet.credentials(name)
        self._link = None
        if link:
            self._link = HostLink(fleet.broker.host, fleet.broker.port, fleet.name, name, self.password)
            self._link.connect()

    @property
    def link(self) -> HostLink:
        assert self._link is not None, "%s has no broker link of its own" % self.name
        return self._link

    def forge(self, to: str, claimed_sender: str, wire: bytes) -> None:
        """Publishes a frame into `to`'s inbox under any sender name, with this member's own
        credentials: the broker lets every fleet member write every inbox of its fleet, and the
        frame's sender name is not authenticated (only a certified session proves who wrote)."""
        self.publish(to, topics.frame(claimed_sender, wire))

    def publish(self, to: str, payload: bytes) -> None:
        """Any payload into `to`'s inbox (QoS 1, PUBACK awaited), with this member's credentials (a
        peer without a link of its own: the broker allows one connection per device id)."""
        client = mqtt.MQTTClient(self.name, self.fleet.broker.host, self.fleet.broker.port, self.name,
                                 self.password)
        client.connect(timeout=10)
        client.publish(topics.inbox(self.fleet.name, to), payload, qos=1)
        client.disconnect()

    def close(self) -> None:
        if self._link is not None:
            self._link.close()


def _on_board(micropython, flash: Path, code: str) -> str:  # type: ignore[no-untyped-def]
    proc = subprocess.run([micropython.binary, "-X", "heapsize=" + HEAP, "-c", code], capture_output=True,
                          text=True, cwd=flash, env=micropython.env(), timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc.stdout.strip().splitlines()[-1]


class Board:
    """A board provisioned as `e2ee provision` does (keys made on it, the enrollment installed by
    e2ee.provision.install), running firmware/examples/mqtt_device.py."""

    def __init__(self, micropython, fleet: Fleet, flash: Path, device_id: str) -> None:  # type: ignore[no-untyped-def]
        self.micropython, self.flash, self.device_id = micropython, flash, device_id
        flash.mkdir(parents=True)
        agent = "__import__('e2ee.provision').provision."
        public = json.loads(_on_board(micropython, flash, "print(%sgenerate(2))" % agent))
        ik, is_ = base64.b64decode(public["ik_pub"]), base64.b64decode(public["is_pub"])
        self.certificate = fleet.certify(device_id, ik, is_)
        doc = {"device_id": device_id, "fleet": fleet.name, "service": "http://127.0.0.1:9",
               "now": int(time.time()),
               "mqtt": {"host": fleet.broker.host, "port": fleet.broker.port,
                        "password": fleet.credentials(device_id)},
               "certificate": base64.b64encode(self.certificate).decode(),
               "ca_keys": [base64.b64encode(k).decode() for k in fleet.ca.public_keys()],
               "revocation_list": base64.b64encode(fleet.crl).decode()}
        (flash / "e2ee_data" / "enrollment.json").write_text(json.dumps(doc))
        _on_board(micropython, flash, "print(%sinstall('e2ee_data/enrollment.json'))" % agent)
        self.bundle = PrekeyBundle.from_bytes(bytes.fromhex(_on_board(
            micropython, flash, "print(%s_keystore().bundle().to_bytes().hex())" % agent)))
        self.proc: subprocess.Popen[str] | None = None
        self.boot()

    def boot(self) -> None:
        self.proc = subprocess.Popen([self.micropython.binary, "-X", "heapsize=" + HEAP, str(APP)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, cwd=self.flash, env=self.micropython.env())
        self.lines: list[str] = []
        self.expect("ready")

    def expect(self, *prefixes: str) -> list[str]:
        lines = []
        while True:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line or "Traceback" in line:
                pytest.fail("board %s failed: %s%s" % (self.device_id, line, self.proc.stdout.read()),  # type: ignore[union-attr]
                            pytrace=False)
            lines.append(line.rstrip("\n"))
            self.lines.append(lines[-1])
            if line.startswith(prefixes):
                return lines

    def ask(self, line: str, *prefixes: str) -> list[str]:
        self.proc.stdin.write(line + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.expect(*prefixes)

    def poll(self, ms: int = 1500) -> list[str]:
        return self.ask("poll %d" % ms, "polled")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(30)


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[MosquittoProcess]:  # type: ignore[no-untyped-def]
    with MosquittoProcess(tmp_path_factory.mktemp("board-app-broker")) as running:
        yield running


@pytest.fixture
def fleet(broker: MosquittoProcess, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(broker, tmp_path)
    yield fleet
    fleet.close()


def _session_with_board(gateway: Peer, board: Board, text: str) -> None:
    """The gateway starts a certified session with the board and sends `text`; the board decrypts
    it and answers "ack", which the gateway decrypts."""
    gateway.sessions.start(board.device_id, board.bundle, board.certificate)
    gateway.link.send(board.device_id, gateway.sessions.encrypt(board.device_id, text.encode()))
    assert "device: %s decrypted from %s: %s" % (board.device_id, gateway.name, text) in board.poll()
    assert board.ask("send %s ack" % gateway.name, "sent", "refused")[-1].startswith("sent ")
    sender, wire = gateway.link.receive(timeout=10)
    assert (sender, gateway.sessions.decrypt(sender, wire)) == (board.device_id, b"ack")


def test_finding1_board_refuses_a_fleet_member_impersonating_the_gateway(micropython, fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue 12, finding 1: Device.open() built its sessions without a TrustStore, so any fleet member
    could send a PreKeyMessage under the gateway's name and the board bound that name to the
    attacker's keys (and refused the real gateway from then on). Now: a fleet member with a valid
    certificate of its own, and one presenting none, both speaking as "gateway-1", are refused,
    the messages acknowledged and dropped; the real gateway's session works.
    Packets: the attacker's CONNECT/PUBLISH QoS 1 (frame sender "gateway-1") into valve-1's inbox;
    the board's PUBLISH in, PUBACK out, nothing decrypted; then the gateway's PUBLISH, decrypted."""
    board = Board(micropython, fleet, tmp_path / "valve-1", "valve-1")
    gateway = Peer(fleet, "gateway-1")
    attacker = Peer(fleet, "sensor-9", link=False)
    try:
        # with its own (valid) certificate: a certificate of sensor-9 presented for gateway-1
        attacker.sessions.start(board.device_id, board.bundle, board.certificate)
        attacker.forge(board.device_id, gateway.name, attacker.sessions.encrypt(board.device_id, b"open all valves"))
        # without one: an uncertified manager sends no sender certificate
        bare = SessionManager(str(tmp_path / "bare"), os.urandom(32), attacker.keystore)
        bare.start(board.device_id, board.bundle)
        attacker.forge(board.device_id, gateway.name, bare.encrypt(board.device_id, b"close all valves"))
        lines = board.poll()
        assert not [line for line in lines if "decrypted" in line], lines
        assert "device: valve-1 e2ee: dropped a message from 'gateway-1': WrongPeer" in lines
        assert "device: valve-1 e2ee: dropped a message from 'gateway-1': MissingCertificate" in lines
        assert lines[-1] == "polled 2 dropped 2"
        # the name is still the gateway's: its certified session starts and works both ways
        _session_with_board(gateway, board, "open valve 1")
        assert any("valve-1 online" in line and "certified" in line and "UNCERTIFIED" not in line
                   for line in board.lines)
    finally:
        board.stop()
        for peer in (gateway, attacker):
            peer.close()


def test_finding1_and_6_certified_board_refuses_revoked_peers_and_forged_lists(micropython, fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue 12, finding 1: revocation was never enforced on boards (no TrustStore, no `crl`
    wiring). Now the board takes the signed list from its link's retained `crl` topic, refuses
    the revoked gateway (its messages are acknowledged and dropped, sending to it is refused),
    keeps the list across a reboot, and drops a forged list (finding 6: without blocking).
    Packets: the service's retained PUBLISH on e2ee/v1/<fleet>/crl (version 2, revoking the
    gateway), PUBACK; the gateway's PUBLISH, PUBACK, nothing decrypted; a forged retained list."""
    board = Board(micropython, fleet, tmp_path / "valve-2", "valve-2")
    gateway = Peer(fleet, "gateway-2")
    other = Peer(fleet, "gateway-3")
    try:
        _session_with_board(gateway, board, "before revocation")
        fleet.revoke(gateway.serial)
        assert "device: valve-2 revocation list version 2" in board.poll()
        gateway.link.send(board.device_id, gateway.sessions.encrypt(board.device_id, b"after revocation"))
        lines = board.poll()
        assert "device: valve-2 e2ee: dropped a message from 'gateway-2': PeerRevoked" in lines, lines
        assert not [line for line in lines if "decrypted" in line], lines
        assert board.ask("send gateway-2 still there?", "sent", "refused")[-1] == "refused PeerRevoked"
        # a new session from the revoked gateway: its certificate is on the list
        fresh = SessionManager(str(tmp_path / "fresh"), os.urandom(32), gateway.keystore, trust=gateway.trust)
        fresh.start(board.device_id, board.bundle, board.certificate)
        gateway.link.send(board.device_id, fresh.encrypt(board.device_id, b"let me in again"))
        assert "device: valve-2 e2ee: dropped a message from 'gateway-2': Revoked" in board.poll()
        # the list survives a reboot (the retained copy, handed over again, is not newer: no log)
        board.stop()
        board.boot()
        lines = board.poll()
        assert not [line for line in lines if "revocation list" in line or "dropped a message" in line], lines
        gateway.link.send(board.device_id, gateway.sessions.encrypt(board.device_id, b"after reboot"))
        assert "device: valve-2 e2ee: dropped a message from 'gateway-2': PeerRevoked" in board.poll()
        # a list signed by another CA key is dropped; the stored one stays, other peers still work
        rogue = fleet_ca.FileCAKeystore(tmp_path / "rogue-ca.json")
        fleet.admin.publish_revocation_list(fleet.name, fleet_ca.sign_revocation_list(
            rogue, version=99, revoked_serials=[other.serial]))
        lines = board.poll()
        assert "device: valve-2 e2ee: dropped a message from the crl topic: UnknownIssuer" in lines, lines
        _session_with_board(other, board, "a peer still in good standing")
    finally:
        board.stop()
        for peer in (gateway, other):
            peer.close()


def test_finding6_link_acks_and_drops_a_poison_message(micropython, fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue 12, finding 6: a message the board cannot use (an empty frame sender, which raised
    store.BadName; a RatchetMessage whose dh is the peer's signed prekey while the board, the
    initiator, has no receiving chain yet, which raised TypeError; a frame that is none; bytes
    that are no envelope) escaped the link's handler, so it was never acknowledged and came
    back after every reconnect, blocking the inbox. Now each is acknowledged, dropped, counted
    and its error type logged; the message behind them is delivered; after a reboot (persistent
    session) none comes again.
    Packets: four PUBLISH QoS 1 into the board's inbox, each answered by PUBACK, then the gateway's
    PUBLISH, decrypted; after a reconnect (clean_session 0) nothing is delivered."""
    board = Board(micropython, fleet, tmp_path / "valve-3", "valve-3")
    gateway = Peer(fleet, "gateway-4")
    member = Peer(fleet, "sensor-5", link=False)  # any fleet member can write the board's inbox
    try:
        # the board starts the session and writes first; the gateway has it, the board has no
        # receiving chain until the gateway's answer arrives
        gateway.sessions.save_keys()
        bundle = gateway.keystore.bundle()
        assert board.ask("start %s %s %s" % (gateway.name, bundle.to_bytes().hex(), gateway.certificate.hex()),
                         "ok", "refused")[-1] == "ok"
        board.ask("send %s hello gateway" % gateway.name, "sent")
        sender, wire = gateway.link.receive(timeout=10)
        assert gateway.sessions.decrypt(sender, wire) == b"hello gateway"
        # poison ahead of the gateway's answer
        member.forge(board.device_id, gateway.name,
                     envelope.encode(envelope.RatchetMessage(bundle.spk_pub, 0, 1, bytes(40))))
        stranger = os.urandom(31) + b"\x01"  # a canonical X25519 key (finding 7)
        member.forge(board.device_id, "", envelope.encode(envelope.RatchetMessage(stranger, 0, 0, bytes(40))))
        member.publish(board.device_id, b"\x07not a frame")
        member.forge(board.device_id, gateway.name, b"\x01\xff garbage")
        gateway.link.send(board.device_id, gateway.sessions.encrypt(board.device_id, b"hello valve"))
        lines = board.poll(2500)
        drops = [line for line in lines if "dropped a message" in line]
        assert len(drops) == 4, lines
        for line in drops:  # the error's type only: no key, no plaintext, no envelope bytes
            assert line.rsplit(": ", 1)[1].isidentifier(), line
        assert "device: valve-3 decrypted from gateway-4: hello valve" in lines
        assert lines[-1] == "polled 4 dropped 4"  # the frame that is none never reached on_message
        # acknowledged: after a reboot (same persistent session) nothing comes back
        board.stop()
        board.boot()
        assert board.poll(2000)[-1] == "polled 0 dropped 0"
        gateway.link.send(board.device_id, gateway.sessions.encrypt(board.device_id, b"still flowing"))
        assert "device: valve-3 decrypted from gateway-4: still flowing" in board.poll()
    finally:
        board.stop()
        gateway.close()
