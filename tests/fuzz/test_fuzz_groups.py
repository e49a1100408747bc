"""Fuzz target: Sender Keys (docs/protocol.md §7; firmware/e2ee/protocol/sender_key.py, group.py):
distributions that arrive over pairwise sessions and group messages from the group topic. Inputs:
bytes and mutations of real distributions and messages, and mutated SenderKeyMessages that the
member's signing key then signs, so the checks after the signature (key id, iteration, skip
limit, AEAD) see hostile but authentic input. Outcomes: success or a sender_key.SenderKeyError
(group.NotMember included); a refused distribution or message leaves the group store as it was.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fuzzing import fuzz, inputs, mutated, outcome, scratch_copy, snapshot
from hypothesis import given
from hypothesis import strategies as st

from e2ee import crypto
from e2ee.protocol.group import GroupSessions
from e2ee.protocol.sender_key import SIGN_LABEL, SenderChain, SenderKeyError
from e2ee_host.proto.e2ee.v1 import group_pb2 as pb

KEY = bytes(range(32))
GROUP = "line-3"


class Group:
    """pump-1's group store (template: pump-2's chain installed, 2 messages received) and
    pump-2's chain with a known signing seed."""

    def __init__(self, root: Path) -> None:
        self.seed = bytes(range(100, 132))
        public = crypto.ed25519_public_key(self.seed)
        self.chain = SenderChain(0x01020304, 0, bytes(range(64, 96)), public, self.seed)
        self.distributions = [self.chain.distribution(GROUP)]
        self.template = root / "pump-1"
        groups = GroupSessions(str(self.template), KEY, "pump-1")
        groups.set_members(GROUP, ["pump-2", "pump-9"])
        groups.create(GROUP)
        groups.add_member(GROUP, "pump-2", self.distributions[0])
        self.messages = [self.chain.encrypt(GROUP, "pump-2", b"stop %d" % i) for i in range(5)]
        for wire in self.messages[:2]:
            groups.decrypt(GROUP, "pump-2", wire)
        self.distributions.append(self.chain.distribution(GROUP))  # at iteration 5
        self.inner = [pb.SignedSenderKeyMessage.FromString(m).message for m in self.messages]

    def signed(self, inner: bytes) -> bytes:
        signature = crypto.ed25519_sign(self.seed, SIGN_LABEL + inner, self.chain.signing_pub)
        return pb.SignedSenderKeyMessage(message=inner, signature=bytes(signature)).SerializeToString()


@pytest.fixture(scope="module")
def group(tmp_path_factory: Any) -> Group:
    return Group(tmp_path_factory.mktemp("group"))


def _on_copy(template: Path, fn: Any, *args: Any) -> bool:
    with scratch_copy(template) as directory:
        groups = GroupSessions(str(directory), KEY, "pump-1")
        before = snapshot(directory)
        ok, _ = outcome(getattr(groups, fn), SenderKeyError, *args)
        if not ok:
            assert snapshot(directory) == before
        return ok


@fuzz
@given(data=st.data())
def test_fuzz_groups_distribution(group: Group, data: st.DataObject) -> None:
    raw = data.draw(inputs(group.distributions, [group.chain.signing_pub], max_size=200))
    ok, chain = outcome(SenderChain.from_distribution, SenderKeyError, raw, GROUP)
    if ok:
        assert SenderChain.from_distribution(chain.distribution(GROUP), GROUP).to_bytes() == chain.to_bytes()
    member = data.draw(st.sampled_from(["pump-2", "pump-9", "pump-1", "mallory"]))
    _on_copy(group.template, "add_member", GROUP, member, raw)


@fuzz
@given(data=st.data())
def test_fuzz_groups_message(group: Group, data: st.DataObject) -> None:
    if data.draw(st.booleans()):
        raw = data.draw(inputs(group.messages, [group.chain.signing_pub], max_size=200))
    else:
        raw = group.signed(data.draw(mutated(group.inner)))
    member = data.draw(st.sampled_from(["pump-2", "pump-2", "pump-9", "nobody"]))
    _on_copy(group.template, "decrypt", GROUP, member, raw)
