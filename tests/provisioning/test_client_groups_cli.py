"""`e2ee client send --owner`, `group-join`, `group-send` and group messages in `receive`
(e2ee_host.cli, e2ee_host.install; docs/host-client.md): the real `e2ee` console script as a
subprocess per command, against the project's Mosquitto (dynamic security) and the service on
SQLite driving it, as in test_client_messaging.py. A message to an owner reaches both of its
linked installs and skips the one the owner revoked; three installs the operator put in a group
exchange Sender Key messages, and a member the operator removed does not get the next one."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from test_client_messaging import E2EE, FLEET, OPERATOR_KEY, System, system  # noqa: F401 (the fixture)

GROUP = "line-3"


def _link(system: System, primary: Path, new: Path, owner: str) -> None:
    """`new` shows its QR (link-qr), `primary` approves it (link-approve); both confirm the code."""
    proc = subprocess.Popen([E2EE, "--url", system.service.url, "client", "link-qr", "--dir", str(new), "--yes"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    payload = ""
    while not payload:
        line = proc.stderr.readline()  # type: ignore[union-attr]
        assert line, "link-qr ended early"
        if line.startswith("link payload: "):
            payload = line.split(": ", 1)[1].strip()
    r = system.e2ee("link-approve", "--dir", str(primary), "--qr", payload, "--owner", owner, "--yes")
    assert r.returncode == 0, r.stderr
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def _operator(system: System, *args: str) -> None:
    r = subprocess.run([E2EE, "--url", system.service.url, "--api-key", OPERATOR_KEY, *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def _targets(stdout: str) -> list[str]:
    """The devices of `sent message N to DEVICE (M bytes...)` lines."""
    return [line.split(" ")[4] for line in stdout.splitlines() if line.startswith("sent message ")]


def _receive(system: System, install: Path, count: int) -> list[str]:
    r = system.e2ee("receive", "--dir", str(install), "--count", str(count), "--timeout", "60")
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_message_to_an_owner_reaches_each_linked_device(system, tmp_path) -> None:  # type: ignore[no-untyped-def]
    phone = tmp_path / "phone"
    r = system.e2ee("init", "--dir", str(phone), "--device-id", "acme-phone", "--fleet", FLEET,
                    "--claim", system.op.create_claims(FLEET, owner="acme").tokens[0], "--one-time", "5")
    assert r.returncode == 0, r.stderr
    tablet = system.init(tmp_path / "tablet", "acme-tablet")
    _link(system, phone, tablet, "acme")
    gateway = system.init(tmp_path / "gateway", "gw-9")

    r = system.e2ee("send", "--dir", str(gateway), "--owner", "acme", "door opened")
    assert r.returncode == 0, r.stderr
    assert sorted(_targets(r.stdout)) == ["acme-phone", "acme-tablet"]
    assert r.stdout.count(" bytes, new session)") == 2
    assert "sent to 2 of 2 device(s) of owner acme" in r.stderr
    assert _receive(system, phone, 1) == ["gw-9: door opened"]
    assert _receive(system, tablet, 1) == ["gw-9: door opened"]

    # one of the owner's devices sends to the owner: to the other one only
    r = system.e2ee("send", "--dir", str(tablet), "--owner", "acme", "on my way", json=True)
    assert r.returncode == 0, r.stderr
    assert [s["to"] for s in json.loads(r.stdout)["sent"]] == ["acme-phone"]
    assert _receive(system, phone, 1) == ["acme-tablet: on my way"]

    # the owner revokes the tablet from the phone: the next message skips it, with a note
    assert system.e2ee("revoke-linked", "--dir", str(phone), "--owner", "acme", "acme-tablet").returncode == 0
    r = system.e2ee("send", "--dir", str(gateway), "--owner", "acme", "door closed")
    assert r.returncode == 0, r.stderr
    assert _targets(r.stdout) == ["acme-phone"]
    assert "skipped acme-tablet: no longer a device of owner acme" in r.stderr
    assert "sent to 1 of 1 device(s) of owner acme, 1 skipped (revoked)" in r.stderr
    assert _receive(system, phone, 1) == ["gw-9: door closed"]

    # usage: PEER and --owner together, or an owner nobody has
    assert system.e2ee("send", "--dir", str(gateway), "--owner", "acme", "acme-phone", "x").returncode == 2
    r = system.e2ee("send", "--dir", str(gateway), "--owner", "nobody", "x")
    assert r.returncode == 1 and "owner nobody has no unrevoked device" in r.stderr, r.stderr


def test_group_messages_between_three_installs(system, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a, b, c = (system.init(tmp_path / name, name) for name in ("g-ann", "g-bob", "g-cy"))
    r = system.e2ee("group-send", "--dir", str(a), GROUP, "hello group")
    assert r.returncode == 2 and "needs --members" in r.stderr, r.stderr
    r = system.e2ee("group-send", "--dir", str(a), GROUP, "too early", "--members", "g-bob,g-cy")
    assert r.returncode == 3 and "refused the topic of group line-3" in r.stderr, r.stderr
    _operator(system, "groups", "add", "--fleet", FLEET, "--group", GROUP, "g-ann", "g-bob", "g-cy")
    for member, others in ((b, "g-ann,g-cy"), (c, "g-ann,g-bob")):  # their persistent sessions take the topic:
        # messages wait while they are offline; --members: only their sender keys are accepted
        r = system.e2ee("group-join", "--dir", str(member), GROUP, "--members", others)
        assert r.returncode == 0 and "joined group line-3" in r.stdout, r.stderr

    # ann's first message: her new sender key goes to bob and cy pairwise, then one group publish
    r = system.e2ee("group-send", "--dir", str(a), GROUP, "hello group", "--members", "g-bob,g-cy")
    assert r.returncode == 0, r.stderr
    assert "sent to group line-3" in r.stdout and "sender key sent to g-bob, g-cy" in r.stdout
    for member in (b, c):
        r = system.e2ee("receive", "--dir", str(member), "--count", "1", "--timeout", "60")
        assert (r.returncode, r.stdout) == (0, "line-3/g-ann: hello group\n"), r.stderr
        assert "sender key of g-ann for group line-3 installed" in r.stderr
    # the second message needs no distribution; the members are remembered
    r = system.e2ee("group-send", "--dir", str(a), GROUP, "second")
    assert r.returncode == 0 and "sender key" not in r.stdout, r.stderr

    # bob answers the group; ann and cy read it (ann does not see her own messages again)
    r = system.e2ee("group-send", "--dir", str(b), GROUP, "from bob", "--members", "g-ann,g-cy")
    assert r.returncode == 0, r.stderr
    assert _receive(system, a, 1) == ["line-3/g-bob: from bob"]
    r = system.e2ee("receive", "--dir", str(c), "--count", "2", "--timeout", "60", json=True)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines()] == [
        {"group": GROUP, "from": "g-ann", "text": "second"}, {"group": GROUP, "from": "g-bob", "text": "from bob"}]
    assert _receive(system, b, 1) == ["line-3/g-ann: second"]

    # the operator removes cy; ann's next message comes with a new sender key for bob only
    _operator(system, "groups", "remove", "--fleet", FLEET, "--group", GROUP, "g-cy")
    r = system.e2ee("group-send", "--dir", str(a), GROUP, "after cy left", "--members", "g-bob")
    assert r.returncode == 0, r.stderr
    assert "sender key sent to g-bob" in r.stdout
    assert _receive(system, b, 1) == ["line-3/g-ann: after cy left"]
    r = system.e2ee("receive", "--dir", str(c), "--timeout", "3")
    # what cy's persistent session still had queued opens with no chain it holds: dropped, status 4
    undecryptable = "undecryptable group message in line-3: UnknownChain" in r.stderr
    assert r.returncode == (4 if undecryptable else 0), r.stderr
    assert r.stdout == "" and "after cy left" not in r.stderr
    assert "refused the topic of group line-3 to g-cy" in r.stderr
