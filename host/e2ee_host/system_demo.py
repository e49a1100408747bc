"""The main demo (README's first command, `scripts/demo`): the whole system on embedded defaults.

It starts the project's Mosquitto (broker-config/, dynamic security, own port) and the
provisioning service (SQLite, own Fleet CA) in a temporary directory; flashes two virtual ESP32
boards (the MicroPython unix port behind a pty, driven by mpremote) and provisions them: their
keys are made on the boards, enrollment proves possession, the service creates their broker
clients. A CPython host client enrolls too. Then they talk through the broker with end-to-end
delivery (docs/protocol.md §8: each message kept until the recipient's encrypted receipt): the
host to each board, a board to the host, board to board; an admin sniffer on the broker prints
what the broker sees, which is ciphertext only. Finally the operator revokes one board: the broker cuts it off and
the host, holding the new signed revocation list, refuses it. Everything started is stopped and
the temporary directory removed.
"""
from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt

from e2ee.protocol import session as session_mod
from e2ee.protocol.delivery import DELIVERED, Delivery
from e2ee.protocol.keys import KeyStore
from e2ee.protocol.session import SessionManager
from e2ee.protocol.trust import TrustStore
from e2ee_host import board_link, resources
from e2ee_host.broker import MosquittoProcess
from e2ee_host.client import DeviceClient, OperatorClient
from e2ee_host.service import ServiceProcess
from e2ee_host.transport import HostLink, TransportError
from e2ee_host.virtual_board import VirtualBoard

APP = resources.folder("firmware/examples") / "mqtt_device.py"
FLEET = "plant-north"
# A real random key: the demo service runs as production (the default, docs/decisions.md D19),
# which refuses the development key.
OPERATOR_KEY = "demo-operator-" + base64.b32encode(os.urandom(10)).decode().lower()
BOARDS = ("valve-1", "valve-2")
HOST = "gateway"


class DemoFailed(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(what)


class Sniffer:
    """The broker's view: an admin client subscribed to every e2ee topic."""

    def __init__(self, broker: MosquittoProcess) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-sniffer")
        self.client.username_pw_set(broker.admin_user, broker.admin_password)
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe("e2ee/#", qos=1)
        ready.wait(10)

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        self.seen.append((msg.topic, payload))
        print("broker: %-36s %4d bytes  %s..." % (msg.topic, len(payload), payload[:24].hex()), flush=True)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class BoardApp:
    """A provisioned virtual board running its application (firmware/examples/mqtt_device.py) from
    its flash: the SDK `e2ee flash` put in lib/, the identity `e2ee provision` left in e2ee_data/."""

    def __init__(self, name: str, flash: Path, heap: str) -> None:
        self.name = name
        env = dict(os.environ, MICROPYPATH="lib:.frozen")
        self.proc = subprocess.Popen([_micropython(),
                                      "-X", "heapsize=" + heap, str(APP)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=flash, env=env)
        self.expect("ready")

    def expect(self, prefix: str) -> str:
        while True:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise DemoFailed("board %s stopped: %s" % (self.name, self.proc.wait()))
            line = line.rstrip("\n")
            if line.startswith("device:"):
                print(line, flush=True)
            elif "Traceback" in line or "Error" in line:
                raise DemoFailed("board %s: %s%s" % (self.name, line, self.proc.stdout.read()))  # type: ignore[union-attr]
            if line.startswith(prefix):
                return line

    def ask(self, line: str, prefix: str) -> str:
        self.proc.stdin.write(line + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.expect(prefix)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(30)


def _micropython() -> str:
    from e2ee_host import micropython
    return micropython.binary()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="e2ee-demo-") as tmp:
        try:
            run(Path(tmp))
        except DemoFailed as e:
            print("demo failed: %s" % e)
            return 1
    print("demo finished")
    return 0


def run(tmp: Path) -> None:
    print("== e2ee-iot: the whole system on embedded defaults ==")
    apps: list[BoardApp] = []
    with MosquittoProcess(tmp / "broker") as broker, ServiceProcess(
            tmp / "service.log", data_dir=tmp / "service", operator_api_key=OPERATOR_KEY,
            broker_admin_host=broker.host, broker_admin_port=broker.port, broker_admin_user=broker.admin_user,
            broker_admin_password=broker.admin_password, mqtt_host=broker.host, mqtt_port=broker.port) as service:
        print("broker: Mosquitto on %s:%d (dynamic security: one client and role per device; persistence)" % (
            broker.host, broker.port))
        print("service: provisioning on %s (SQLite in %s, Fleet CA created at first start)" % (
            service.url, (tmp / "service").name))
        op = OperatorClient(service.url, OPERATOR_KEY)
        pinned = op.ca_keys()
        sniffer = Sniffer(broker)
        try:
            # --- two virtual boards: flash, provision (keys made on the board), run the app ---
            for name in BOARDS:
                flash = tmp / name
                with VirtualBoard(flash, "esp32") as board:
                    done = board_link.flash(board.port)
                    print("board %s: virtual ESP32 on %s, flashed %d files (%d bytes of .mpy)" % (
                        name, board.port, done["files"], done["bytes"]))
                    token = op.create_claims(FLEET, owner="acme").tokens[0]
                    enrolled = board_link.provision(board.port, service.url, token, name, FLEET, one_time=5,
                                                    progress=lambda line, n=name: print("board %s: %s" % (n, line)))
                    heap = board.heap
                apps.append(BoardApp(name, flash, heap))
                check(enrolled["one_time_prekeys"] == 5, "prekeys published")

            # --- the host client: certified sessions (pinned CA keys, its certificate, the list) ---
            host = DeviceClient(service.url, HOST, FLEET, KeyStore.generate(5))
            enrolled_host = host.enroll(op.create_claims(FLEET).tokens[0], trusted_keys=pinned)
            host.upload_prekeys()
            trust = TrustStore(str(tmp / "host" / "trust"), os.urandom(32))
            trust.set_ca_keys(pinned)
            trust.update_revocation_list(enrolled_host.revocation_list)
            trust.set_certificate(enrolled_host.certificate, int(time.time()), (host.keystore.ik_pub,
                                                                                 host.keystore.is_pub))
            storage_key = os.urandom(32)
            sessions = SessionManager(str(tmp / "host"), storage_key, host.keystore, trust=trust)
            sessions.save_keys()
            link = HostLink(broker.host, broker.port, FLEET, HOST, enrolled_host.mqtt["password"]).connect()
            print("host:   %s enrolled (certificate %s), fingerprint %s" % (
                HOST, enrolled_host.cert.serial.hex(), host.keystore.fingerprint().hex()))

            def start(peer: str) -> None:  # a session from a fresh bundle and the peer's certificate
                ident = host.signed("GET", "/identities/%s" % peer)
                sessions.start(peer, host.bundle(peer), base64.b64decode(ident["certificate"]))

            got: list[tuple[str, bytes]] = []
            delivered: list[tuple[str, int]] = []

            def on_message(sender: str, payload: memoryview) -> None:
                got.append((sender, bytes(payload)))
                print("host:   decrypted from %s: %s" % (sender, bytes(payload).decode()))

            def on_status(peer: str, seq: int, status: str, reason: str | None) -> None:
                if status == DELIVERED:
                    delivered.append((peer, seq))
                    print("host:   message %d to %s delivered (its encrypted receipt came back)" % (seq, peer))

            outbox = Delivery(sessions, str(tmp / "host"), storage_key, HOST, starter=start, on_status=on_status)

            def pump(until: Callable[[], bool], timeout: float = 10) -> None:
                """The host's loop: receipts and messages out (flush), what arrived in (handle)."""
                deadline = time.monotonic() + timeout
                while True:
                    outbox.flush(link.send)
                    if until():
                        return
                    check(time.monotonic() < deadline, "the host waited %.0f s in vain" % timeout)
                    try:
                        sender, wire = link.receive(timeout=0.1)
                    except TransportError:
                        continue
                    outbox.handle(sender, wire, on_message)

            # --- messages through the broker ---
            for app, text in zip(apps, ("open valve 1 at 07:00", "close valve 2 at 07:05")):
                print("host:   to %s: %s" % (app.name, text))
                seq = outbox.send(app.name, text.encode())
                outbox.flush(link.send)
                app.ask("poll 1500", "polled")
                pump(lambda app=app, seq=seq: (app.name, seq) in delivered)
            for app, text in zip(apps, ("valve 1 open, flow 12 l/min", "valve 2 closed")):
                app.ask("send %s %s" % (HOST, text), "queued")
                app.ask("poll 1500", "polled")
                pump(lambda app=app, text=text: (app.name, text.encode()) in got)
                app.ask("poll 1500", "polled")  # the host's receipt
            a, b = apps
            b_cert = base64.b64decode(host.signed("GET", "/identities/%s" % b.name)["certificate"])
            a.ask("start %s %s %s" % (b.name, host.bundle(b.name).to_bytes().hex(), b_cert.hex()), "ok")
            a.ask("send %s pressure low, open your bypass" % b.name, "queued")
            a.ask("poll 1500", "polled")
            b.ask("poll 1500", "polled")
            a.ask("poll 1500", "polled")  # valve-2's receipt

            # --- revocation ---
            print("operator: revoking %s (reported stolen)" % b.name)
            revoked = op.revoke(b.name, "stolen")
            b.ask("poll 2500", "polled")
            crl = link.crls.get(timeout=10)
            while not link.crls.empty():
                crl = link.crls.get_nowait()
            version = trust.update_revocation_list(crl)
            print("host:   revocation list version %d from the broker's retained topic, signature verified;"
                  " %s's certificate %s is on it" % (version, b.name, revoked["revoked_serials"][0]))
            try:
                sessions.encrypt(b.name, b"are you there?")
                raise DemoFailed("the host still talked to a revoked board")
            except session_mod.PeerRevoked as e:
                print("host:   refuses %s: %s" % (b.name, type(e).__name__))
            link.close()
        finally:
            for app in apps:
                app.stop()
            sniffer.close()
        seen = [p for t, p in sniffer.seen if t.endswith("/inbox")]
        plaintexts = [b"open valve", b"flow 12", b"pressure low", b"closed"]
        check(len(seen) >= 5 and not any(p in payload for p in plaintexts for payload in seen),
              "the broker saw plaintext")
        print("broker: carried %d inbox messages; none holds a plaintext (checked)" % len(seen))
        print("stopping the service and the broker")


if __name__ == "__main__":
    sys.exit(main())
