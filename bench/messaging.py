"""Messaging benchmark (a benchmark, not a test): end-to-end encrypted messages host -> host
through the project's Mosquitto (e2ee_host.messenger.Messenger, the Delivery layer, window 16)
against raw paho QoS 1 publishes of the same payload sizes through the same broker, measured
side by side in one run (raw, E2EE, raw, E2EE, ...; the best of each kept).

    scripts/bench-messaging [--messages N] [--sizes 64 1024] [--rounds R] [--no-write]

E2EE: alice sends N messages to bob; each one is encrypted (the session record saved before it
leaves), published QoS 1, decrypted by bob (his session saved), handed to his application once,
and acknowledged by an encrypted receipt; the clock stops when bob holds all N and alice has every
receipt (her outbox empty). Raw: one paho client publishes N QoS 1 messages of the same payload
size, at most 16 in flight (the E2EE window), to a second paho client subscribed with QoS 1; the
clock stops when the subscriber holds all N. Results go to the <!-- bench:messaging --> block of
docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from bench.crypto import write_doc
from e2ee.protocol.delivery import WINDOW
from e2ee_host.broker import MosquittoProcess
from e2ee_host.client import OperatorClient
from e2ee_host.install import HostInstall
from e2ee_host.messenger import Messenger
from e2ee_host.service import ServiceProcess

FLEET = "bench"
OPERATOR_KEY = secrets.token_urlsafe(24)
TARGET = 0.8  # issue 16: E2EE at >= 0.8x the raw QoS 1 rate


def _install(op: OperatorClient, service: ServiceProcess, directory: Path, device_id: str) -> HostInstall:
    inst = HostInstall.init(directory, service.url, device_id, FLEET, op.create_claims(FLEET).tokens[0])
    link = inst.link(timeout=30).connect()
    try:
        inst.open_mailbox(link)
    finally:
        link.close()
    return inst


RAW_USER = "bench-raw"


def add_raw_client(broker: MosquittoProcess) -> str:
    """A broker client for the raw runs (dynamic security: publish and subscribe on bench/#);
    its password."""
    password = secrets.token_urlsafe(16)
    ctrl = [shutil.which("mosquitto_ctrl") or "mosquitto_ctrl", "-h", broker.host, "-p", str(broker.port),
            "-u", broker.admin_user, "-P", broker.admin_password, "dynsec"]
    for command in (["createClient", RAW_USER, "-p", password], ["createRole", RAW_USER],
                    ["addRoleACL", RAW_USER, "publishClientSend", "bench/#", "allow"],
                    ["addRoleACL", RAW_USER, "subscribePattern", "bench/#", "allow"],
                    ["addRoleACL", RAW_USER, "publishClientReceive", "bench/#", "allow"],
                    ["addClientRole", RAW_USER, RAW_USER]):
        subprocess.run(ctrl + command, check=True, capture_output=True, timeout=30)
    return password


def raw_rate(broker: MosquittoProcess, password: str, size: int, n: int) -> float:
    """Messages/s of n raw QoS 1 publishes of `size` bytes, publisher to subscriber."""
    topic = "bench/raw-%s" % secrets.token_hex(4)
    got = threading.Event()
    count = [0]

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        count[0] += 1
        if count[0] == n:
            got.set()

    clients = []
    subscribed = threading.Event()
    for role in ("sub", "pub"):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw-%s-%s" % (role, secrets.token_hex(3)))
        c.username_pw_set(RAW_USER, password)
        c.max_inflight_messages_set(WINDOW)
        c.max_queued_messages_set(0)  # unlimited: paho queues what the window does not let out yet
        if role == "sub":
            c.on_message = on_message
            c.on_subscribe = lambda *a: subscribed.set()
        c.connect(broker.host, broker.port)
        c.loop_start()
        clients.append(c)
    clients[0].subscribe(topic, qos=1)
    if not subscribed.wait(10):
        raise SystemExit("raw subscriber got no SUBACK")
    payload = secrets.token_bytes(size)
    start = time.perf_counter()
    for _ in range(n):
        clients[1].publish(topic, payload, qos=1)
    if not got.wait(300):
        raise SystemExit("raw: %d of %d arrived" % (count[0], n))
    wall = time.perf_counter() - start
    for c in clients:
        c.loop_stop()
        c.disconnect()
    return n / wall


def e2ee_rate(alice: HostInstall, bob: HostInstall, size: int, n: int) -> float:
    """Messages/s of n E2EE messages alice -> bob, delivered and acknowledged."""
    with Messenger.open(alice, timeout=10) as sender, Messenger.open(bob, timeout=10) as receiver:
        receiver.received.clear()
        payloads = [secrets.token_bytes(size) for _ in range(n)]
        done = threading.Event()
        failure: list[BaseException] = []

        def receive() -> None:  # bob's own thread, as his own process would be
            try:
                deadline = time.monotonic() + 300
                while len(receiver.received) < n and time.monotonic() < deadline and not failure:
                    receiver.pump(0.01)
                receiver.pump(0.05)  # the last receipts out
            except BaseException as e:  # reported by the main thread
                failure.append(e)
            finally:
                done.set()

        thread = threading.Thread(target=receive)
        start = time.perf_counter()
        thread.start()
        for p in payloads:
            sender.delivery.send(bob.device_id, p)
        deadline = time.monotonic() + 300
        while sender.pending(bob.device_id) and time.monotonic() < deadline:
            sender.pump(0.005)
        wall = time.perf_counter() - start
        done.wait(30)
        thread.join(30)
        if failure:
            raise failure[0]
        got = [p for _, p in receiver.received]
        if got != payloads or sender.pending(bob.device_id):
            raise SystemExit("e2ee: %d of %d received in order, %d awaiting a receipt" % (
                sum(1 for a, b in zip(got, payloads) if a == b), n, sender.pending(bob.device_id)))
    return n / wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--rounds", type=int, default=2, help="raw/E2EE pairs per size (the best of each kept)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    results: dict[int, dict[str, float]] = {}
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(dir=shm) as tmpfs:
        work = Path(tmp)
        with MosquittoProcess(work / "broker") as broker, ServiceProcess(
                work / "service.log", log_level="warning", data_dir=work / "service", operator_api_key=OPERATOR_KEY,
                environment="development", broker_admin_host=broker.host, broker_admin_port=broker.port,
                broker_admin_user=broker.admin_user, broker_admin_password=broker.admin_password,
                mqtt_host=broker.host, mqtt_port=broker.port) as service:
            op = OperatorClient(service.url, OPERATOR_KEY)
            alice = _install(op, service, work / "alice", "bench-alice")
            bob = _install(op, service, work / "bob", "bench-bob")
            # the same on tmpfs, where fsync costs nothing: what the disk's share is
            alice_m = _install(op, service, Path(tmpfs) / "alice", "bench-alice-m")
            bob_m = _install(op, service, Path(tmpfs) / "bob", "bench-bob-m")
            password = add_raw_client(broker)
            e2ee_rate(alice, bob, 16, WINDOW * 2)  # the sessions started (X3DH, first messages), off the clock
            e2ee_rate(alice_m, bob_m, 16, WINDOW * 2)
            for size in args.sizes:
                raw, e2ee, e2ee_m = [], [], []
                for _ in range(args.rounds):
                    raw.append(raw_rate(broker, password, size, args.messages))
                    e2ee.append(e2ee_rate(alice, bob, size, args.messages))
                    e2ee_m.append(e2ee_rate(alice_m, bob_m, size, args.messages))
                results[size] = {"raw": max(raw), "e2ee": max(e2ee), "e2ee_tmpfs": max(e2ee_m)}
                print(size, results[size], flush=True)
            op.close()
    lines = ["| payload bytes | raw paho QoS 1 msg/s | E2EE msg/s (delivered + receipt) | E2EE / raw "
             "| E2EE msg/s, installs on tmpfs |",
             "| ---: | ---: | ---: | --- | ---: |"]
    for size, r in results.items():
        ratio = r["e2ee"] / r["raw"]
        lines.append("| %d | %.0f | %.0f | %.3fx (target %.1fx%s) | %.0f (%.2fx) |" % (
            size, r["raw"], r["e2ee"], ratio, TARGET, "" if ratio >= TARGET else ", **missed**", r["e2ee_tmpfs"],
            r["e2ee_tmpfs"] / r["raw"]))
    notes = [
        "%d messages per run, best of %d alternating raw/E2EE runs per size, one Mosquitto (the project's "
        "broker-config/), all on this 2-core machine (sender, receiver, broker, service)." % (
            args.messages, args.rounds),
        "E2EE: Messenger (Delivery, window %d) alice -> bob, each message encrypted with its session record "
        "saved (fsync) before it leaves, decrypted and saved by bob, acknowledged by an encrypted receipt; "
        "the clock stops at the last receipt. Raw: paho QoS 1, %d in flight, publisher to subscriber, no "
        "encryption, no persistence at either end." % (WINDOW, WINDOW),
        "Where the time goes (py-spy of this bench): the installs' durable writes, RecordStore.put_with "
        "(write, fsync, rename, directory fsync: about 2.5 ms on this VM's disk) for the session record at "
        "every encrypt and decrypt and for the delivery state (outbox, receipts, seen ids) at every send, "
        "receipt and delivery. On tmpfs (last column) the same code runs without the fsync cost. Reaching "
        "0.8x needs a save per batch rather than per message (encrypt the window's messages, save once, then "
        "publish; decrypt a batch, save once, then acknowledge): not built yet.",
    ]
    table = "\n".join(lines)
    print(table)
    print("\n".join(notes))
    print(json.dumps(results, indent=1))
    if not args.no_write:
        write_doc("messaging", table, notes, reproduce="scripts/bench-messaging")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
