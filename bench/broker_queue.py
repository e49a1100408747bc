"""Broker queue benchmark (not a test), and the scenario helpers tests/broker/test_queue_sizing.py
shares: the project's Mosquitto (broker-config/mosquitto.conf.template, e2ee_host.broker) holding
the queue of an offline device (docs/broker.md, "Offline promise and queue sizing").

- crash loss: N QoS 1 messages PUBACKed into an offline device's persistent session, the broker
  SIGKILLed at once and restarted on the same data directory; how many the device never gets,
  for the old setting (`autosave_interval 30`) and the autosave settings around the chosen one;
- write cost: the same settings filling one device's queue with the promised load (from several
  senders at once), as publish rate, bytes the broker wrote and its store's size, then the time
  the device takes to fetch it all when it returns.

    scripts/bench-broker [--no-write] [--quick]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from e2ee.transport import topics
from e2ee_host.broker import DynSec, MosquittoProcess, with_settings

FLEET = "plant-north"
DEVICE = "valve-7"
GROUP = "line-3"
# the promise of docs/broker.md: 7 days offline, one inbox message a minute and one group message
# every five minutes, each an inbox frame or group message of at most TYPICAL_FRAME bytes
PROMISED_INBOX = 7 * 24 * 60
PROMISED_GROUP = 7 * 24 * 60 // 5
TYPICAL_FRAME = 256
LARGEST_FRAME = 2 + 64 + 5120  # 0x01 | len | sender id (certificate.MAX_NAME) | envelope.MAX_ENVELOPE
TEMPLATE = Path(__file__).resolve().parents[1] / "broker-config" / "mosquitto.conf.template"


def password(device_id: str) -> str:
    return "%s-broker-password" % device_id


def config_settings(conf: str) -> dict[str, str]:
    """The options of Mosquitto configuration text, the first value of each."""
    found: dict[str, str] = {}
    for line in conf.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            found.setdefault(key, value)
    return found


def template_settings(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The options of the development template (with `overrides` applied), first value of each."""
    return config_settings(with_settings(TEMPLATE.read_text(), overrides or {}))


def frames(sender: str, count: int, size: int, first: int = 0) -> list[bytes]:
    """`count` inbox frames of exactly `size` bytes from `sender`, numbered from `first` (the
    number leads the envelope part, so every frame is distinct; the rest stands for ciphertext)."""
    head = topics.frame(sender, b"")
    pad = os.urandom(size - len(head) - 8)
    return [head + b"%08d" % (first + i) + pad for i in range(count)]


def provision(broker: MosquittoProcess, devices: Iterable[str], group_members: Iterable[str] = ()) -> None:
    """Dynamic-security clients and roles, as the provisioning service makes them at enrollment."""
    admin = DynSec(broker.host, broker.port, broker.admin_user, broker.admin_password)
    try:
        for name in devices:
            admin.provision_device(FLEET, name, password(name))
        for name in group_members:
            admin.add_group_member(FLEET, GROUP, name)
    finally:
        admin.close()


def _client(device_id: str, clean_session: bool) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, clean_session=clean_session)
    client.username_pw_set(device_id, password(device_id))
    return client


class Device:
    """A device's persistent session (client id = device id, clean_session False) on its inbox and
    optionally the group topic, QoS 1, like e2ee.transport.link.Link; paho acknowledges each
    message as it arrives. `received` collects (topic, payload) across visits."""

    def __init__(self, broker: MosquittoProcess, device_id: str = DEVICE, group: bool = False) -> None:
        self.broker, self.device_id = broker, device_id
        self.wanted = [(topics.inbox(FLEET, device_id), 1)] + ([(topics.group(FLEET, GROUP), 1)] if group else [])
        self.received: list[tuple[str, bytes]] = []
        self._client: mqtt.Client | None = None

    def join(self, timeout: float = 10.0) -> Device:
        """CONNECT (persistent session), SUBSCRIBE to its topics; returns once SUBACKed."""
        granted = threading.Event()
        client = _client(self.device_id, clean_session=False)
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.wanted)
        client.on_subscribe = lambda *a: granted.set()
        client.on_message = lambda c, u, m: self.received.append((m.topic, bytes(m.payload)))
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        self._client = client
        if not granted.wait(timeout):
            raise TimeoutError("%s: no SUBACK within %.0f s" % (self.device_id, timeout))
        return self

    def leave(self) -> None:
        """DISCONNECT: the session stays, and messages for it queue at the broker."""
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def wait(self, count: int, idle: float = 2.0, timeout: float = 120.0) -> list[tuple[str, bytes]]:
        """Waits until `count` messages have arrived, then `idle` seconds more for any extra one (or
        only until nothing came for `idle` seconds, or `timeout`); returns what arrived."""
        deadline, seen, last = time.monotonic() + timeout, -1, time.monotonic()
        while time.monotonic() < deadline:
            if len(self.received) != seen:
                seen, last = len(self.received), time.monotonic()
            elif time.monotonic() - last > idle:
                break
            time.sleep(0.05 if len(self.received) < count else idle / 4)
        return list(self.received)


def publish(broker: MosquittoProcess, sender: str, topic: str, payloads: list[bytes], timeout: float = 120.0) -> None:
    """QoS 1 PUBLISHes from `sender`, 20 in flight; returns once every one was PUBACKed."""
    client = _client(sender, clean_session=True)
    client.max_inflight_messages_set(20)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, p, qos=1) for p in payloads]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        if not all(info.is_published() for info in infos):
            raise TimeoutError("%s: %d of %d PUBLISHes without PUBACK" % (
                sender, sum(not i.is_published() for i in infos), len(infos)))
    finally:
        client.disconnect()
        client.loop_stop()


def publish_concurrently(broker: MosquittoProcess, batches: list[tuple[str, str, list[bytes]]]) -> None:
    """Each (sender, topic, payloads) from its own connection, all at once; every one PUBACKed."""
    errors: list[BaseException] = []

    def run(sender: str, topic: str, payloads: list[bytes]) -> None:
        try:
            publish(broker, sender, topic, payloads)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=batch) for batch in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def written(broker: MosquittoProcess) -> int:
    """Bytes the broker process wrote so far (/proc/<pid>/io wchar: its store saves, plus PUBACKs
    and log lines, which are small)."""
    with open("/proc/%d/io" % broker._proc.pid) as f:  # type: ignore[union-attr]
        return next(int(line.split()[1]) for line in f if line.startswith("wchar"))


def resident(broker: MosquittoProcess) -> int:
    """The broker's resident memory in bytes (/proc/<pid>/status VmRSS)."""
    with open("/proc/%d/status" % broker._proc.pid) as f:  # type: ignore[union-attr]
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def crash_loss(data_dir: Path, settings: Mapping[str, str] | None = None, count: int = 200,
               senders: int = 4) -> dict[str, Any]:
    """The crash scenario: DEVICE's session exists (saved by a graceful restart), DEVICE leaves;
    `senders` devices publish `count` QoS 1 messages to its inbox at once, all PUBACKed; SIGKILL at
    once, start on the same data directory; DEVICE returns. {"sent", "received" (distinct),
    "lost"}."""
    names = ["gw-%d" % i for i in range(senders)]
    with MosquittoProcess(data_dir, settings=settings) as broker:
        provision(broker, [DEVICE, *names])
        device = Device(broker).join()
        device.leave()
        broker.restart()  # the session and its subscription on disk, whatever the autosave setting
        per = count // senders
        publish_concurrently(broker, [(name, topics.inbox(FLEET, DEVICE), frames(name, per, TYPICAL_FRAME))
                                      for name in names])
        broker.kill()
        broker.start()
        got = {payload for _, payload in device.join().wait(per * senders, idle=1.0)}
        device.leave()
    return {"sent": per * senders, "received": len(got), "lost": per * senders - len(got)}


def fill_cost(data_dir: Path, settings: Mapping[str, str] | None = None, count: int = PROMISED_INBOX,
              senders: int = 4) -> dict[str, Any]:
    """`count` TYPICAL_FRAME messages from `senders` devices at once into the inbox of an offline
    DEVICE: publish rate, bytes the broker wrote meanwhile, its memory growth, store size after a
    graceful restart; then DEVICE returns: the time until it has them all."""
    names = ["gw-%d" % i for i in range(senders)]
    with MosquittoProcess(data_dir, settings={"max_queued_messages": str(count), "max_queued_bytes": "0",
                                              **(settings or {})}) as broker:
        provision(broker, [DEVICE, *names])
        device = Device(broker).join()
        device.leave()
        before, memory, t = written(broker), resident(broker), time.perf_counter()
        per = count // senders
        publish_concurrently(broker, [(name, topics.inbox(FLEET, DEVICE), frames(name, per, TYPICAL_FRAME))
                                      for name in names])
        elapsed, wrote = time.perf_counter() - t, written(broker) - before
        memory = resident(broker) - memory
        broker.restart()
        store = (data_dir / "mosquitto.db").stat().st_size
        t = time.perf_counter()
        device.join()
        while len(device.received) < per * senders and time.perf_counter() - t < 300:
            time.sleep(0.02)
        fetch = time.perf_counter() - t
        device.leave()
    return {"sent": per * senders, "rate": per * senders / elapsed, "written": wrote, "store": store, "memory": memory,
            "fetch": fetch, "received": len(device.received)}


CRASH_COUNTS = (200, 204, 208, 212)
SETTINGS = [  # (label, autosave settings)
    ("`autosave_interval 30` (before)", {"autosave_on_changes": "false", "autosave_interval": "30"}),
    ("`autosave_interval 1`", {"autosave_on_changes": "false", "autosave_interval": "1"}),
    ("`autosave_on_changes true`, `autosave_interval 1`", {"autosave_on_changes": "true", "autosave_interval": "1"}),
    ("`autosave_on_changes true`, `autosave_interval 16` (chosen)",
     {"autosave_on_changes": "true", "autosave_interval": "16"}),
    ("`autosave_on_changes true`, `autosave_interval 64`", {"autosave_on_changes": "true", "autosave_interval": "64"}),
    ("`autosave_on_changes true`, `autosave_interval 256`",
     {"autosave_on_changes": "true", "autosave_interval": "256"}),
]


def main() -> int:
    from bench.crypto import write_doc
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print only, keep docs/performance.md")
    parser.add_argument("--quick", action="store_true", help="fill 2016 messages instead of the promise's 10080")
    args = parser.parse_args()
    fill = PROMISED_INBOX // 5 if args.quick else PROMISED_INBOX
    chosen = template_settings()
    rows = ["| autosave setting | crash loss: PUBACKed, never delivered, of %s | publish rate filling "
            "%d messages | bytes written filling | store after | fetch on return |" % (
                ", ".join(str(n) for n in CRASH_COUNTS), fill),
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    memory = []
    for label, settings in SETTINGS:
        fill_result = None  # a full save per change: quadratic, minutes at the promise's size
        if not (settings["autosave_interval"] == "1" and settings["autosave_on_changes"] == "true") or args.quick:
            with tempfile.TemporaryDirectory() as d:
                fill_result = fill_cost(Path(d) / "broker", settings, fill)
            memory.append(fill_result["memory"])
        losses = []
        for count in CRASH_COUNTS:  # other counts, other remainders of the autosave count
            with tempfile.TemporaryDirectory() as d:
                losses.append(crash_loss(Path(d) / "broker", settings, count)["lost"])
        cost = ("%.0f msg/s | %.0f MB | %.1f MB | %.1f s" % (
            fill_result["rate"], fill_result["written"] / 1e6, fill_result["store"] / 1e6, fill_result["fetch"])
            if fill_result else "not run (quadratic: a save per message) | | |")
        rows.append("| %s | %s | %s |" % (label, ", ".join(str(n) for n in losses), cost))
        print(rows[-1], flush=True)
    notes = [
        "Development template as committed (`autosave_on_changes %s`, `autosave_interval %s`, "
        "`max_queued_messages %s`, `max_queued_bytes %s`) with only the autosave options replaced; the fill "
        "runs lift the queue caps to the fill size." % (
            chosen.get("autosave_on_changes", "false"), chosen["autosave_interval"], chosen["max_queued_messages"],
            chosen["max_queued_bytes"]),
        "Crash loss: an offline device's persistent session (saved by a graceful restart), then %s QoS 1 "
        "messages of %d bytes from 4 senders at once, all PUBACKed, SIGKILL at once, restart on the same data "
        "directory: the messages the device never got. Mosquitto PUBACKs before it saves, and a save writes the "
        "whole store, so a crash loses what changed since the last save: up to the autosave count less one, "
        "plus what the running pass of the broker's event loop handled." % (
            " / ".join(str(n) for n in CRASH_COUNTS), TYPICAL_FRAME),
        "Fill: %d messages of %d bytes from 4 senders at once into one offline device's queue. Bytes written: "
        "the broker's /proc wchar (the store saves; PUBACKs and log lines are about 4 bytes a message). Store: "
        "mosquitto.db after a graceful stop. Fetch: from the device's CONNECT until it holds every message "
        "(each PUBACK it sends is a change too). The broker's resident memory grew by %.1f MB (median of the "
        "runs) holding the %d messages. Rates are from a shared 2-core machine: read them as ratios." % (
            fill, TYPICAL_FRAME, sorted(memory)[len(memory) // 2] / 1e6, fill),
    ]
    table = "\n".join(rows)
    print(table)
    print("\n".join(notes))
    if not args.no_write:
        write_doc("broker", table, notes, reproduce="scripts/bench-broker")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
