"""Queues sized for offline boards (docs/broker.md, "Offline promise and queue sizing"): both
configurations carry the limits derived from the promise, a device offline with exactly the
promised load gets all of it, the broker drops what lies beyond a cap (the senders learn it from
the missing receipt, docs/protocol.md §8), and a broker SIGKILL loses at most about the autosave
count of PUBACKed messages. Scenario helpers: bench/broker_queue.py (scripts/bench-broker runs
the same scenarios at other settings)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from bench.broker_queue import (DEVICE, FLEET, GROUP, LARGEST_FRAME, PROMISED_GROUP, PROMISED_INBOX, TYPICAL_FRAME,
                                Device, config_settings, crash_loss, frames, provision, publish,
                                publish_concurrently, template_settings)

from e2ee.protocol.certificate import MAX_NAME
from e2ee.protocol.delivery import Delivery
from e2ee.protocol.envelope import MAX_ENVELOPE
from e2ee.protocol.group import GroupSessions
from e2ee.protocol.session import SessionManager
from e2ee.transport import topics
from e2ee_host.broker import MosquittoProcess

PRODUCTION = Path(__file__).resolve().parents[2] / "broker-config" / "mosquitto.production.conf"
PROMISE_DAYS = 7
# a typical command: at most this many bytes, sent through the delivery layer (docs/protocol.md
# §8), whose DATA head makes it a 120-byte session plaintext; its frame from a 64-byte sender id is
# 248..250 bytes, 256 once the ratchet counters pn and n need 4-byte varints (2^21 messages)
TYPICAL_COMMAND = 107
# the documented crash bound: the autosave count (changes since the last save)
AUTOSAVE_CHANGES = 16
QUEUE_OPTIONS = ("autosave_on_changes", "autosave_interval", "max_queued_messages", "max_queued_bytes",
                 "persistent_client_expiration")


def _days(value: str) -> float:
    number, unit = int(value[:-1]), value[-1]
    return number * {"h": 1 / 24, "d": 1, "w": 7, "m": 30, "y": 365}[unit]


def test_typical_frames_are_measured_from_the_protocol(tmp_path: Path) -> None:
    # No packet exchange: a TYPICAL_COMMAND-byte command sent through the delivery layer over an
    # answered session (a RatchetMessage), and the same delivery plaintext as a Sender Key group
    # message, framed as they go on the wire from the longest sender id, fit TYPICAL_FRAME, the
    # size the byte cap is derived from.
    gateway, valve = (SessionManager.create(str(tmp_path / n), os.urandom(32), one_time=1) for n in ("g", "v"))
    sender = "g" * MAX_NAME
    gateway.start("valve", valve.bundle())
    valve.decrypt(sender, gateway.encrypt("valve", b"hello"))
    gateway.decrypt("valve", valve.encrypt(sender, b"ok"))  # the session is answered: RatchetMessages now
    outbox = Delivery(gateway, str(tmp_path / "g"), os.urandom(32), sender)
    outbox.send("valve", os.urandom(TYPICAL_COMMAND))
    published: list[bytes] = []
    assert outbox.flush(lambda peer, data: published.append(bytes(data))) == 1
    inbox_frame = topics.frame(sender, published[0])
    plaintext = valve.decrypt(sender, published[0])
    groups = GroupSessions(str(tmp_path / "group"), os.urandom(32), sender)
    groups.create(GROUP)
    group_message = groups.encrypt(GROUP, plaintext)
    assert len(plaintext) == 120
    assert len(inbox_frame) <= TYPICAL_FRAME and len(group_message) <= TYPICAL_FRAME
    assert len(inbox_frame) >= TYPICAL_FRAME - 8  # and the size is not loose
    assert LARGEST_FRAME == 2 + MAX_NAME + MAX_ENVELOPE


def test_both_configs_derive_their_queues_from_the_promise() -> None:
    # No packet exchange: the production file and the development template agree on every queue
    # and autosave option, and their values are the promise's arithmetic.
    development = template_settings()
    written = config_settings(PRODUCTION.read_text())
    assert {k: written.get(k) for k in QUEUE_OPTIONS} == {k: development.get(k) for k in QUEUE_OPTIONS}
    assert PROMISED_INBOX == PROMISE_DAYS * 24 * 60 and PROMISED_GROUP == PROMISE_DAYS * 24 * 60 // 5
    assert int(written["max_queued_messages"]) == PROMISED_INBOX + PROMISED_GROUP
    assert int(written["max_queued_bytes"]) == (PROMISED_INBOX + PROMISED_GROUP) * TYPICAL_FRAME
    assert _days(written["persistent_client_expiration"]) > PROMISE_DAYS
    assert written["autosave_on_changes"] == "true" and int(written["autosave_interval"]) == AUTOSAVE_CHANGES


def test_a_broker_crash_loses_at_most_the_autosave_count(tmp_path: Path) -> None:
    # Packet exchange: valve-7 CONNECTs (clean_session 0), SUBSCRIBEs to its inbox at QoS 1 and
    # DISCONNECTs; a graceful restart saves that session. Four senders PUBLISH 200 QoS 1 frames
    # to the inbox at once and get every PUBACK; the broker is SIGKILLed right after the last one
    # and started on the same data directory; valve-7 CONNECTs again and receives what was saved.
    # A save comes after every 16 changes, so fewer than 16 messages, plus at most one per
    # connection the broker was serving in that pass of its loop, are lost. With the former
    # `autosave_interval 30` all 200 were (no save within 30 s).
    result = crash_loss(tmp_path / "broker", count=200, senders=4)
    assert result["sent"] == 200
    assert result["lost"] <= AUTOSAVE_CHANGES - 1 + 4, result


def test_the_promised_load_arrives_and_one_more_is_dropped(tmp_path: Path) -> None:
    # Packet exchange, on the development config as committed: valve-7 CONNECTs (clean_session
    # 0), SUBSCRIBEs to its inbox and group line-3 at QoS 1, and DISCONNECTs. Four gateways
    # PUBLISH 2520 inbox frames each and a group member 2016 group messages, all at once, each
    # TYPICAL_FRAME bytes: 7 days of one inbox message a minute plus one group message every five
    # minutes. Every one is PUBACKed; the broker restarts gracefully (the queue comes back from
    # disk). One more inbox frame is PUBACKed too, yet dropped: the queue is full. valve-7
    # CONNECTs again and receives exactly the promised messages, each sender's in order.
    senders = ["gw-%d" % i for i in range(4)]
    with MosquittoProcess(tmp_path / "broker") as broker:
        provision(broker, [DEVICE, *senders, "member-1"], group_members=[DEVICE, "member-1"])
        device = Device(broker, group=True).join()
        device.leave()
        per = PROMISED_INBOX // len(senders)
        sent = {name: frames(name, per, TYPICAL_FRAME) for name in senders}
        sent["member-1"] = frames("member-1", PROMISED_GROUP, TYPICAL_FRAME)
        publish_concurrently(broker, [(name, topics.inbox(FLEET, DEVICE), sent[name]) for name in senders]
                             + [("member-1", topics.group(FLEET, GROUP), sent["member-1"])])
        broker.restart()
        beyond = frames("gw-0", 1, TYPICAL_FRAME, first=per)
        publish(broker, "gw-0", topics.inbox(FLEET, DEVICE), beyond)  # PUBACKed: MQTT 3.1.1 says no more
        got = device.join().wait(PROMISED_INBOX + PROMISED_GROUP, timeout=60)
        device.leave()
        log = (broker.data_dir / "mosquitto.log").read_text()
    assert len(got) == PROMISED_INBOX + PROMISED_GROUP
    for name, payloads in sent.items():
        assert [p for _, p in got if p.startswith(topics.frame(name, b""))] == payloads, name
    assert beyond[0] not in {p for _, p in got}
    assert re.search(r"Outgoing messages are being dropped for client %s" % DEVICE, log)


def test_the_byte_cap_drops_largest_frames_beyond_it(tmp_path: Path) -> None:
    # Packet exchange: valve-7 CONNECTs (clean_session 0), SUBSCRIBEs to its inbox and
    # DISCONNECTs; a gateway PUBLISHes largest inbox frames (5186 bytes) until they exceed
    # max_queued_bytes, all PUBACKed. The broker queues a message while the queue holds fewer
    # bytes than the cap, so floor(cap / 5186) + 1 arrive when valve-7 returns, the first ones in
    # order, and the rest are dropped, far below the message cap.
    cap = int(template_settings()["max_queued_bytes"])
    kept = cap // LARGEST_FRAME + 1
    with MosquittoProcess(tmp_path / "broker") as broker:
        provision(broker, [DEVICE, "gw-0"])
        device = Device(broker).join()
        device.leave()
        sent = frames("gw-0", kept + 3, LARGEST_FRAME)
        publish(broker, "gw-0", topics.inbox(FLEET, DEVICE), sent)
        got = [p for _, p in device.join().wait(kept, timeout=30)]
        device.leave()
    assert kept < int(template_settings()["max_queued_messages"])
    assert got == sent[:kept]
