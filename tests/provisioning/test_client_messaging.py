"""`e2ee client send` / `receive` (e2ee_host.cli, e2ee_host.install; docs/host-client.md): the real
`e2ee` console script, run as a subprocess per command, against the project's Mosquitto (dynamic
security, persistence, own port) and the provisioning service on SQLite driving it. Installs
keep the MQTT credentials issued at enrollment; sessions are certified with the CA keys each
install pins; messages wait at the broker while the receiver is offline; duplicates, garbage
and revoked peers are handled; installs without credentials say what to do."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from e2ee.transport import topics
from e2ee_host.broker import MosquittoProcess
from e2ee_host.devstack import wired_service
from e2ee_host.client import OperatorClient
from e2ee_host.install import HostInstall
from e2ee_host.service import ServiceProcess

E2EE = str(Path(sys.executable).parent / "e2ee")
FLEET = "plant-north"
OPERATOR_KEY = "client-messaging-operator-key-5d1e"


class System:
    def __init__(self, broker: MosquittoProcess, service: ServiceProcess) -> None:
        self.broker, self.service = broker, service
        self.op = OperatorClient(service.url, OPERATOR_KEY)

    def e2ee(self, *args: str, stdin: bytes | None = None, json: bool = False) -> subprocess.CompletedProcess[str]:
        """`e2ee --url URL [--json] client ARGS...` as a user runs it; stdout and stderr as UTF-8."""
        proc = subprocess.run([E2EE, "--url", self.service.url, *(["--json"] if json else []), "client", *args],
                              input=stdin, capture_output=True, timeout=120,
                              env=dict(os.environ, PYTHONIOENCODING="utf-8"))
        return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    def init(self, directory: Path, device_id: str) -> Path:
        r = self.e2ee("init", "--dir", str(directory), "--device-id", device_id, "--fleet", FLEET,
                      "--claim", self.op.create_claims(FLEET).tokens[0], "--one-time", "5")
        assert r.returncode == 0, r.stderr
        assert "warning" not in r.stderr.replace("WARNING: no backup", ""), r.stderr  # the mailbox opened
        return directory


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Iterator[System]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("client-messaging")
    with MosquittoProcess(tmp / "broker") as broker:
        with wired_service(broker, tmp / "service.log", tmp / "service", OPERATOR_KEY) as service:
            yield System(broker, service)


class Admin:
    """An admin client on the broker: sees an inbox's traffic, and injects into it what a
    misbehaving relay or an at-least-once redelivery would."""

    def __init__(self, broker: MosquittoProcess, inbox: str) -> None:
        self.seen: list[bytes] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-admin-" + uuid.uuid4().hex[:8])
        self.client.username_pw_set(broker.admin_user, broker.admin_password)
        self.client.on_message = lambda c, u, m: self.seen.append(bytes(m.payload))
        ready = threading.Event()
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(inbox, qos=1)
        assert ready.wait(30)
        self.inbox = inbox

    def wait_for(self, n: int, timeout: float = 30.0) -> bool:
        """True once `n` messages were seen (they were acknowledged to their sender already)."""
        deadline = time.monotonic() + timeout
        while len(self.seen) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.seen) == n

    def inject(self, payload: bytes) -> None:
        self.client.publish(self.inbox, payload, qos=1).wait_for_publish(30)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_offline_delivery_answers_duplicates_backup_and_revocation(system, tmp_path) -> None:  # type: ignore[no-untyped-def]
    alice = system.init(tmp_path / "alice", "alice")
    bob = system.init(tmp_path / "bob", "bob")  # init opened bob's mailbox: the broker keeps it from now on
    admin = Admin(system.broker, topics.inbox(FLEET, "bob"))
    try:
        # bob is offline (no process of his runs); alice sends three messages, one binary from stdin
        r = system.e2ee("send", "--dir", str(alice), "bob", "hello 1")
        assert r.returncode == 0, r.stderr
        assert "new session" in r.stdout
        assert system.e2ee("send", "--dir", str(alice), "bob", "grüße, 2").returncode == 0
        r = system.e2ee("send", "--dir", str(alice), "bob", "-", stdin=b"\xff\x00bin")
        assert r.returncode == 0, r.stderr
        assert "new session" not in r.stdout
        # bob comes online: all three, in order
        r = system.e2ee("receive", "--dir", str(bob), "--count", "3", "--timeout", "60")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["alice: hello 1", "alice: grüße, 2", "alice: [hex] ff0062696e"]
        assert "received 3 message(s)" in r.stderr
        # bob answers; alice reads it
        assert system.e2ee("send", "--dir", str(bob), "alice", "ack from bob").returncode == 0
        r = system.e2ee("receive", "--dir", str(alice), "--count", "1", "--timeout", "60")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["bob: ack from bob"]

        # a redelivered copy of "hello 1" and a garbage envelope reach bob's inbox before "after"
        # (bob's inbox saw alice's three messages and her receipt for bob's answer)
        assert admin.wait_for(4) and not any(b"hello" in p or b"bin" in p for p in admin.seen)
        admin.inject(admin.seen[0])
        admin.inject(topics.frame("alice", b"\x00not an envelope"))
        assert system.e2ee("send", "--dir", str(alice), "bob", "after").returncode == 0
        r = system.e2ee("receive", "--dir", str(bob), "--count", "1", "--timeout", "60")
        assert r.returncode == 4, r.stderr  # the garbage was dropped: status 4 says so
        assert r.stdout.splitlines() == ["alice: after"]  # the copy is not shown again
        assert r.stderr.count("duplicate message from alice skipped") == 1
        assert re.search(r"^e2ee: undecryptable message from alice: \w+: ", r.stderr, re.M), r.stderr
        assert "received 1 message(s), 1 duplicate(s) skipped, 1 undecryptable" in r.stderr

        # --json: one JSON object per message. What the broker delivered beyond --count is kept
        # for the next receive (the broker had it acknowledged), not lost.
        assert system.e2ee("send", "--dir", str(alice), "bob", "line one\nline two").returncode == 0
        assert system.e2ee("send", "--dir", str(alice), "bob", "tail").returncode == 0
        r = system.e2ee("receive", "--dir", str(bob), "--count", "1", "--timeout", "60", json=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ['{"from": "alice", "text": "line one\\nline two"}']
        r = system.e2ee("receive", "--dir", str(bob), "--count", "1", "--timeout", "60")
        assert (r.returncode, r.stdout) == (0, "alice: tail\n"), r.stderr
    finally:
        admin.close()

    # bob's install is lost; its backup restores it elsewhere and the conversation goes on
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("bob's long backup passphrase\n")
    r = system.e2ee("backup", "--dir", str(bob), "--passphrase-file", str(passphrase))
    assert r.returncode == 0, r.stderr
    shutil.rmtree(bob)
    bob2 = tmp_path / "bob-restored"
    r = system.e2ee("restore", "--dir", str(bob2), "--device-id", "bob", "--passphrase-file", str(passphrase))
    assert r.returncode == 0, r.stderr
    assert "sessions and group sender keys start anew" in r.stdout
    # no session came back (docs/backup.md, "Never restored"): restored bob starts a new one
    r = system.e2ee("send", "--dir", str(bob2), "alice", "restored bob here")
    assert r.returncode == 0 and "new session" in r.stdout, r.stderr
    r = system.e2ee("receive", "--dir", str(alice), "--count", "1", "--timeout", "60")
    assert (r.returncode, r.stdout) == (0, "bob: restored bob here\n"), r.stderr
    assert system.e2ee("send", "--dir", str(alice), "bob", "after the restore").returncode == 0
    r = system.e2ee("receive", "--dir", str(bob2), "--count", "1", "--timeout", "60")
    assert (r.returncode, r.stdout) == (0, "alice: after the restore\n"), r.stderr

    # the operator revokes bob: alice refuses to send to him (her session checks the new list)
    system.op.revoke("bob", "stolen")
    r = system.e2ee("send", "--dir", str(alice), "bob", "are you there?")
    assert r.returncode == 2, r.stderr
    assert "PeerRevoked" in r.stderr and "certificate of bob is revoked" in r.stderr
    # and a newcomer without a session with him cannot start one
    carol = system.init(tmp_path / "carol", "carol")
    r = system.e2ee("send", "--dir", str(carol), "bob", "hi bob")
    assert r.returncode == 1 and "410" in r.stderr and "revoked" in r.stderr, r.stderr


def test_install_without_broker_credentials_says_what_to_do(system, tmp_path) -> None:  # type: ignore[no-untyped-def]
    dave = system.init(tmp_path / "dave", "dave")
    erin = system.init(tmp_path / "erin", "erin")
    # an install as `e2ee client init` made it before installs kept their MQTT credentials and
    # their trust store
    inst = HostInstall.open(dave)
    del inst.settings["mqtt"]
    inst.save()
    shutil.rmtree(dave / "trust")
    for args in (("send", "--dir", str(dave), "erin", "hi"), ("receive", "--dir", str(dave), "--timeout", "1")):
        r = system.e2ee(*args)
        assert r.returncode == 3, r.stderr
        assert "has no MQTT credentials" in r.stderr
        assert "e2ee client renew --dir %s --claim TOKEN" % dave in r.stderr
    assert "broker:      none" in system.e2ee("show", "--dir", str(dave)).stdout
    # what the message says: renew with a new claim
    r = system.e2ee("renew", "--dir", str(dave), "--claim", system.op.create_claims(FLEET).tokens[0])
    assert r.returncode == 0, r.stderr
    assert "renewed dave" in r.stdout
    r = system.e2ee("send", "--dir", str(dave), "erin", "hi erin")
    assert r.returncode == 0, r.stderr
    r = system.e2ee("receive", "--dir", str(erin), "--count", "1", "--timeout", "60")
    assert (r.returncode, r.stdout) == (0, "dave: hi erin\n"), r.stderr
    # an install without a trust store fetches its own certificate back and answers in the session
    shutil.rmtree(erin / "trust")
    assert system.e2ee("send", "--dir", str(erin), "dave", "hi dave").returncode == 0
    r = system.e2ee("receive", "--dir", str(dave), "--count", "1", "--timeout", "60")
    assert (r.returncode, r.stdout) == (0, "erin: hi dave\n"), r.stderr


def test_finding6_poison_message_is_dropped_and_does_not_block_the_inbox(system, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two poison messages of the audit (finding 6): a RatchetMessage whose dh is the peer's
    signed prekey while this side, the initiator, has no receiving chain yet, and a valid
    RatchetMessage in a frame with an empty sender name. Each is acknowledged, counted and
    dropped (exit status 4, one line with its error type); the messages after it are handled,
    in this run and the next, and the session it was aimed at is unchanged."""
    from e2ee.protocol import envelope
    ann = system.init(tmp_path / "p-ann", "p-ann")
    bob = system.init(tmp_path / "p-bob", "p-bob")
    admin = Admin(system.broker, topics.inbox(FLEET, "p-ann"))
    try:
        assert system.e2ee("send", "--dir", str(ann), "p-bob", "hello").returncode == 0  # ann: initiator
        # ann has no receiving chain yet: a RatchetMessage "from bob" on bob's signed prekey
        spk = HostInstall.open(bob).client.keystore.bundle().spk_pub
        poison = topics.frame("p-bob", envelope.encode(envelope.RatchetMessage(spk, 0, 0, b"\x00" * 32)))
        admin.inject(poison)
        r = system.e2ee("receive", "--dir", str(bob), "--count", "1", "--timeout", "60")
        assert (r.returncode, r.stdout) == (0, "p-ann: hello\n"), r.stderr
        assert system.e2ee("send", "--dir", str(bob), "p-ann", "reply").returncode == 0
        r = system.e2ee("receive", "--dir", str(ann), "--count", "1", "--timeout", "60")
        assert (r.returncode, r.stdout) == (4, "p-bob: reply\n"), r.stderr  # the session is intact
        assert re.search(r"^e2ee: undecryptable message from p-bob: \w+: ", r.stderr, re.M), r.stderr
        assert "Traceback" not in r.stderr and "1 message(s) could not be decrypted and were dropped" in r.stderr

        # bob's reply (a valid RatchetMessage) again, in a frame with an empty sender name
        assert admin.wait_for(3)  # the poison, bob's receipt for "hello", his reply
        reply = admin.seen[-1]
        admin.inject(topics.frame("", bytes(topics.unframe(reply)[1])))
        assert system.e2ee("send", "--dir", str(bob), "p-ann", "second").returncode == 0
        r = system.e2ee("receive", "--dir", str(ann), "--count", "1", "--timeout", "60")
        assert (r.returncode, r.stdout) == (4, "p-bob: second\n"), r.stderr
        assert re.search(r"^e2ee: undecryptable message from : \w+: ", r.stderr, re.M), r.stderr
        assert "Traceback" not in r.stderr and "1 message(s) could not be decrypted" in r.stderr
        # the next run does not meet it again (it was dropped, not spooled)
        assert system.e2ee("send", "--dir", str(bob), "p-ann", "third").returncode == 0
        r = system.e2ee("receive", "--dir", str(ann), "--count", "1", "--timeout", "60")
        assert (r.returncode, r.stdout) == (0, "p-bob: third\n"), r.stderr
        assert "undecryptable" not in r.stderr
    finally:
        admin.close()
