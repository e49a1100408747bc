"""Groups with Sender Keys (e2ee.protocol.sender_key, e2ee.protocol.group; docs/protocol.md §7):
a 10-member group of 2 MicroPython devices (the real unix-port binary, ESP32 heap) and 8 CPython
members exchanges 100 group messages that every member decrypts; a removed member cannot read
the next one; forgeries, replays and gaps are refused with typed errors and change nothing."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from support import DEVICE_TESTS, ROOT

from e2ee.protocol import group as group_module
from e2ee.protocol import sender_key
from e2ee.protocol.group import GroupSessions, NotMember

GROUP = "line-3"


class DeviceMember:
    """A member running under MicroPython, one command per line."""

    def __init__(self, micropython, flash: Path, name: str) -> None:  # type: ignore[no-untyped-def]
        self.name = name
        self.proc = subprocess.Popen(
            [micropython.binary, "-X", "heapsize=120K", str(DEVICE_TESTS / "group_member.py"), str(flash),
             os.urandom(32).hex(), name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=micropython.env(), cwd=ROOT)
        assert self._line() == "ready"

    def _line(self) -> str:
        line = self.proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not line or "Traceback" in line:
            rest = self.proc.stdout.read() if self.proc.poll() is not None else ""  # type: ignore[union-attr]
            pytest.fail("device %s: %s %s" % (self.name, line, rest))
        return line

    def ask(self, *words: str) -> str:
        self.proc.stdin.write(" ".join(words) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self._line()

    def set_members(self, group: str, members: list[str]) -> None:
        assert self.ask("members", group, ",".join(members)) == "ok"

    def create(self, group: str) -> bytes:
        return bytes.fromhex(self.ask("create", group).split()[1])

    def add_member(self, group: str, member: str, dist: bytes) -> None:
        answer = self.ask("add", group, member, dist.hex())
        if answer.startswith("refused "):
            name = answer.split()[1]
            raise getattr(group_module, name, getattr(sender_key, name, sender_key.SenderKeyError))(name)
        assert answer == "ok"

    def remove_member(self, group: str, member: str) -> None:
        assert self.ask("remove", group, member) == "ok"

    def encrypt(self, group: str, text: bytes) -> bytes:
        return bytes.fromhex(self.ask("send", group, text.decode()).split()[1])

    def decrypt(self, group: str, member: str, wire: bytes) -> bytes:
        answer = self.ask("recv", group, member, wire.hex())
        kind, _, rest = answer.partition(" ")
        if kind == "refused":
            raise getattr(sender_key, rest, sender_key.SenderKeyError)(rest)
        return rest.encode()

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(30)


class HostMember:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.groups = GroupSessions(str(root / name), os.urandom(32), name)

    def set_members(self, group: str, members: list[str]) -> None:
        self.groups.set_members(group, members)

    def create(self, group: str) -> bytes:
        return self.groups.create(group)

    def add_member(self, group: str, member: str, dist: bytes) -> None:
        self.groups.add_member(group, member, dist)

    def remove_member(self, group: str, member: str) -> None:
        self.groups.remove_member(group, member)

    def encrypt(self, group: str, text: bytes) -> bytes:
        return self.groups.encrypt(group, text)

    def decrypt(self, group: str, member: str, wire: bytes) -> bytes:
        return self.groups.decrypt(group, member, wire)

    def close(self) -> None:
        pass


def _distribute(members: list, group: str) -> None:  # type: ignore[type-arg]
    """Every member makes its chain and hands it to every other member (in the application the
    distribution travels inside their pairwise Double Ratchet session). Each first learns who
    the members are: only their distributions are accepted."""
    for m in members:
        m.set_members(group, [o.name for o in members])
    for m in members:
        dist = m.create(group)
        for other in members:
            if other is not m:
                other.add_member(group, m.name, dist)


def test_ten_member_group_across_runtimes(micropython, tmp_path) -> None:  # type: ignore[no-untyped-def]
    devices = [DeviceMember(micropython, tmp_path / ("dev%d" % i), "board-%d" % i) for i in range(2)]
    hosts = [HostMember(tmp_path, "host-%d" % i) for i in range(8)]
    members = devices + hosts
    try:
        _distribute(members, GROUP)
        rng = random.Random(7)
        for n in range(100):
            sender = members[n % len(members)] if n % 5 else devices[n % 2]  # devices send a fifth
            text = b"group message %d from %s" % (n, sender.name.encode())
            wire = sender.encrypt(GROUP, text)
            for m in members:
                if m is not sender:
                    assert m.decrypt(GROUP, sender.name, wire) == text
        # a replayed message is refused by everyone; a forged one (one bit) too
        wire = hosts[0].encrypt(GROUP, b"once")
        assert devices[0].decrypt(GROUP, "host-0", wire) == b"once"
        with pytest.raises(sender_key.Duplicate):
            devices[0].decrypt(GROUP, "host-0", wire)
        forged = bytearray(hosts[1].encrypt(GROUP, b"genuine"))
        forged[rng.randrange(4, 40)] ^= 0x01
        for m in (devices[1], hosts[2]):
            with pytest.raises((sender_key.BadSignature, sender_key.Malformed)):
                m.decrypt(GROUP, "host-1", bytes(forged))
        # remove board-1: the others forget its chain and rotate theirs, it gets no new chain
        removed, rest = devices[1], [m for m in members if m is not devices[1]]
        for m in rest:
            m.remove_member(GROUP, removed.name)
        _distribute(rest, GROUP)
        wire = hosts[3].encrypt(GROUP, b"after the removal")
        with pytest.raises(sender_key.UnknownChain):
            removed.decrypt(GROUP, "host-3", wire)
        for m in rest:
            if m is not hosts[3]:
                assert m.decrypt(GROUP, "host-3", wire) == b"after the removal"
    finally:
        for m in members:
            m.close()


def test_refusals_change_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a, b, c = HostMember(tmp_path, "a"), HostMember(tmp_path, "b"), HostMember(tmp_path, "c")
    _distribute([a, b, c], GROUP)
    wires = [a.encrypt(GROUP, b"m%d" % i) for i in range(40)]
    store = b.groups._store
    before = {n: store.get(n) for n in store.names()}
    with pytest.raises(sender_key.TooFarAhead):
        b.decrypt(GROUP, "a", wires[39])  # 39 ahead, limit 32
    bad_signature = bytearray(wires[0])
    bad_signature[-1] ^= 0x80  # the signature's last byte
    with pytest.raises(sender_key.BadSignature):
        b.decrypt(GROUP, "a", bytes(bad_signature))
    with pytest.raises(sender_key.UnknownChain):  # a's message presented as c's: c's chain has another id
        b.decrypt(GROUP, "c", wires[0])
    with pytest.raises(sender_key.Malformed):
        b.decrypt(GROUP, "a", b"\x0a\x03abc")
    with pytest.raises(sender_key.UnknownChain):
        b.decrypt(GROUP, "nobody", wires[0])
    assert {n: store.get(n) for n in store.names()} == before
    # out of order within the window, and each exactly once
    order = list(range(10))
    random.Random(1).shuffle(order)
    for i in order:
        assert b.decrypt(GROUP, "a", wires[i]) == b"m%d" % i
    with pytest.raises(sender_key.Malformed):
        sender_key.SenderChain.from_distribution(a.groups.distribution(GROUP), "other-group")


def test_wire_matches_the_schema(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The device codec's bytes parse with the protobuf runtime (proto/e2ee/v1/group.proto), and
    the checked-in generated code is what protoc makes of the schema now."""
    from support import regenerate_protobuf

    from e2ee_host.proto.e2ee.v1 import group_pb2
    a = HostMember(tmp_path, "a")
    dist = group_pb2.SenderKeyDistribution.FromString(a.create(GROUP))
    chain = a.groups._own(GROUP)
    assert (dist.version, dist.group_id, dist.key_id, dist.iteration) == (1, GROUP, chain.key_id, 0)
    assert dist.signing_key == chain.signing_pub and len(dist.chain_key) == 32
    signed = group_pb2.SignedSenderKeyMessage.FromString(a.encrypt(GROUP, b"hello"))
    inner = group_pb2.SenderKeyMessage.FromString(signed.message)
    assert (inner.key_id, inner.iteration, len(inner.ciphertext), len(signed.signature)) == (chain.key_id, 0, 21, 64)
    (tmp_path / "gen").mkdir()
    fresh = regenerate_protobuf(ROOT / "proto" / "e2ee" / "v1" / "group.proto", tmp_path / "gen")
    for name in ("group_pb2.py", "group_pb2.pyi"):
        assert (ROOT / "host/e2ee_host/proto/e2ee/v1" / name).read_bytes() == (fresh / name).read_bytes()


# --- Finding 10: a sender key is accepted only from a current member of that group ------------

def test_finding10_sender_keys_only_from_current_members(micropython, tmp_path) -> None:  # type: ignore[no-untyped-def]
    device = DeviceMember(micropython, tmp_path / "dev", "board-0")
    host = HostMember(tmp_path, "host-0")
    outsider = HostMember(tmp_path, "outsider")  # a pairwise peer of both, not in the group
    try:
        _distribute([device, host], GROUP)
        other_group = outsider.create("line-4")
        for m in (device, host):
            # a distribution from a non-member, and a member's own name for another group: refused
            with pytest.raises(NotMember):
                m.add_member(GROUP, "outsider", outsider.create(GROUP))
            with pytest.raises(NotMember):
                m.add_member("line-4", "outsider", other_group)
            with pytest.raises(NotMember):  # nobody installs a chain under the member's own name
                m.add_member(GROUP, m.name, outsider.create(GROUP))
        wire = outsider.encrypt(GROUP, b"forged order")
        for m in (device, host):  # nothing was stored: the outsider's messages open nowhere
            with pytest.raises(sender_key.UnknownChain):
                m.decrypt(GROUP, "outsider", wire)
        # the members still talk
        assert host.decrypt(GROUP, "board-0", device.encrypt(GROUP, b"still here")) == b"still here"
        assert device.decrypt(GROUP, "host-0", host.encrypt(GROUP, b"and here")) == b"and here"
    finally:
        device.close()


def test_finding10_removed_member_cannot_reinstall_its_sender_key(micropython, tmp_path) -> None:  # type: ignore[no-untyped-def]
    device = DeviceMember(micropython, tmp_path / "dev", "board-0")
    host, leaver = HostMember(tmp_path, "host-0"), HostMember(tmp_path, "leaver")
    try:
        _distribute([device, host, leaver], GROUP)
        old_dist = leaver.groups.distribution(GROUP)
        for m in (device, host):
            m.remove_member(GROUP, "leaver")
        assert host.groups.members(GROUP) == ["board-0"]
        _distribute([device, host], GROUP)  # set_members without the leaver, and new chains
        for m in (device, host):  # neither its old chain nor a new one comes back
            with pytest.raises(NotMember):
                m.add_member(GROUP, "leaver", old_dist)
            with pytest.raises(NotMember):
                m.add_member(GROUP, "leaver", leaver.create(GROUP))
        wire = leaver.encrypt(GROUP, b"open the valve")
        for m in (device, host):
            with pytest.raises(sender_key.UnknownChain):
                m.decrypt(GROUP, "leaver", wire)
        # set_members alone also drops a chain: a member left out loses it at once
        host.set_members(GROUP, [])
        with pytest.raises(sender_key.UnknownChain):
            host.decrypt(GROUP, "board-0", device.encrypt(GROUP, b"after"))
    finally:
        device.close()


# --- the iteration counter at its last value, and stored chains of the wrong size ---------------

@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_sender_key_last_iteration_refused_as_malformed(  # type: ignore[no-untyped-def]
        runtime, request, tmp_path) -> None:
    """docs/protocol.md §7: a chain's last message is iteration 0xFFFFFFFE; a message or a
    distribution at 0xFFFFFFFF (correctly signed) is Malformed and changes nothing, also through
    GroupSessions on flash (it used to decrypt, and the counter then wrapped on MicroPython or
    crashed the save on CPython); stored chains of any other size, flags or count are Malformed."""
    script, flash = DEVICE_TESTS / "check_sender_key.py", str(tmp_path / "flash")
    if runtime == "micropython":
        out = request.getfixturevalue("micropython").run(script, "last-iteration", flash)
    else:
        proc = subprocess.run([sys.executable, str(script), "last-iteration", flash], capture_output=True,
                              text=True, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH="%s:%s" % (ROOT / "firmware", DEVICE_TESTS)))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout
    assert out.strip() == "ok sender_key last-iteration", out
