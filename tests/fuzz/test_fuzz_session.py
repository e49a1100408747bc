"""Fuzz target: PreKeyMessages (X3DH, docs/protocol.md §2) and RatchetMessages (§3) through the
session cipher (firmware/e2ee/protocol/session.py, ratchet.py, x3dh.py; §6), certified, in every
state a peer can be in: a responder before the first message, an initiator that has sent but not
heard back (no receiving chain yet), and both sides of an established session. Inputs: byte-level
mutations of real messages, and structured ones: header fields (dh, pn, n), identity and base
keys, prekey ids and sender certificates swapped for known keys (the peer's signed prekey, own
keys, small-order and non-canonical points), edge counters and other certificates, with the real
ciphertext; and sender names that are no device id. Outcomes: a plaintext, or one of
session.MESSAGE_ERRORS; a refused message leaves every stored byte (sessions, keys, trust) as it
was.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fuzzing import INTERESTING_KEYS, fuzz, mutated, outcome, scratch_copy, snapshot
from hypothesis import given
from hypothesis import strategies as st

from e2ee.protocol import envelope, ratchet, session
from e2ee.protocol.session import SessionManager
from e2ee.protocol.trust import TrustStore
from e2ee_host import fleet_ca

KEY = bytes(range(32))
NOW = 1_800_000_000
DAY = 86_400
# The typed errors of a message decrypt() cannot use (finding 6: session.MESSAGE_ERRORS).
ERRORS = session.MESSAGE_ERRORS
COUNTERS = (0, 1, 2, 3, ratchet.MAX_SKIP, ratchet.MAX_SKIP + 1, ratchet.MAX_SKIP + 2, 0x7FFFFFFF, 0xFFFFFFFF)


class Pair:
    """gw-1 (initiator) and pump-7 (responder), certified by one Fleet CA, and the directories of
    each state: pump-7 before the first message, gw-1 before the answer, both after it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        ca = fleet_ca.FileCAKeystore(root / "ca.json")
        gw, pump = self._device(ca, "gw-1"), self._device(ca, "pump-7")
        self.certificates = [gw[2], pump[2], self._device(ca, "gw-2")[2]]
        gw_m, pump_m = gw[0], pump[0]
        self.spk = pump_m.bundle().spk_pub
        gw_m.start("pump-7", pump_m.bundle(pump_m.keystore.one_time_prekey_ids()[0]), pump[2], NOW)
        self.prekeys = [bytes(gw_m.encrypt("pump-7", b"hello %d" % i, NOW)) for i in range(2)]
        self.gw_pending = self._keep(gw[1], "gw-pending")
        self.pump_fresh = self._keep(pump[1], "pump-fresh")
        assert pump_m.decrypt("gw-1", self.prekeys[0], NOW) == b"hello 0"
        self.answers = [bytes(pump_m.encrypt("gw-1", b"answer %d" % i, NOW)) for i in range(3)]
        self.pump_after = self._keep(pump[1], "pump-after")
        assert gw_m.decrypt("pump-7", self.answers[1], NOW) == b"answer 1"
        self.ratchets = [bytes(gw_m.encrypt("pump-7", b"more %d" % i, NOW)) for i in range(2)]
        self.gw_after = self._keep(gw[1], "gw-after")
        own = [m.keystore for m in (gw_m, pump_m)]
        self.keys = [self.spk] + [k.ik_pub for k in own] + [k.is_pub for k in own] + [
            envelope.decode(m).dh for m in self.answers + self.ratchets] + [
            envelope.decode(self.prekeys[0]).base_key]

    def _device(self, ca: fleet_ca.FileCAKeystore, name: str) -> tuple[SessionManager, Path, bytes]:
        directory = self.root / name
        trust = TrustStore(str(directory), KEY)
        trust.set_ca_keys(ca.public_keys())
        manager = SessionManager.create(str(directory), KEY, one_time=2, trust=trust)
        ks = manager.keystore
        cert = fleet_ca.issue_certificate(ca, device_id=name, fleet="plant.north", identity_dh=ks.ik_pub,
                                          identity_sign=ks.is_pub, not_before=NOW - DAY, not_after=NOW + DAY)
        trust.set_certificate(cert, NOW, (ks.ik_pub, ks.is_pub))
        return manager, directory, cert

    def _keep(self, directory: Path, name: str) -> Path:
        shutil.copytree(directory, self.root / name)
        return self.root / name


@pytest.fixture(scope="module")
def pair(tmp_path_factory: Any) -> Pair:
    return Pair(tmp_path_factory.mktemp("pair"))


@contextmanager
def device(template: Path) -> Iterator[tuple[SessionManager, Path]]:
    with scratch_copy(template) as directory:
        yield SessionManager.open(str(directory), KEY, trust=TrustStore(str(directory), KEY)), directory


def _receive(template: Path, peer: str, data: bytes, now: int | None = NOW) -> bool:
    """decrypt() on a copy of `template`: typed errors only, and nothing stored changes on one."""
    with device(template) as (manager, directory):
        before = snapshot(directory)
        ok, _ = outcome(manager.decrypt, ERRORS, peer, data, now)
        if not ok:
            assert snapshot(directory) == before
        return ok


def _wire(record: envelope.RatchetMessage | envelope.PreKeyMessage) -> bytes:
    """The record's envelope without the encoder's checks: INTERESTING_KEYS holds non-canonical
    keys, which envelope.encode refuses (finding 7) and the receiver must refuse when decoding."""
    body = record._body_size()
    out = bytearray(envelope._envelope_size(body))
    record._put_envelope(out, 0, body)
    return bytes(out)


def ratchet_variants(messages: list[bytes], keys: list[bytes]) -> st.SearchStrategy[bytes]:
    """A real RatchetMessage with its header fields (dh, pn, n) and ciphertext length changed."""
    return ratchet_records(messages, keys).map(_wire)


@st.composite
def ratchet_records(draw: st.DrawFn, messages: list[bytes], keys: list[bytes]) -> envelope.RatchetMessage:
    """The record of ratchet_variants (its dh may be non-canonical)."""
    msg = envelope.decode(draw(st.sampled_from(messages)))
    msg = msg.message if isinstance(msg, envelope.PreKeyMessage) else msg
    dh = draw(st.sampled_from([msg.dh] + keys + list(INTERESTING_KEYS)))
    pn = draw(st.sampled_from((msg.pn,) + COUNTERS))
    n = draw(st.sampled_from((msg.n, msg.n + 1) + COUNTERS))
    ciphertext = bytes(msg.ciphertext)
    if draw(st.booleans()):
        ciphertext = ciphertext[:draw(st.integers(envelope.TAG_SIZE, len(ciphertext)))]
    return envelope.RatchetMessage(dh, pn, n & 0xFFFFFFFF, ciphertext)


@st.composite
def prekey_variants(draw: st.DrawFn, pair: Pair) -> bytes:
    """A real PreKeyMessage with its keys, prekey ids, certificate or inner header swapped."""
    msg = envelope.decode(draw(st.sampled_from(pair.prekeys)))
    keys = st.sampled_from([None] + pair.keys + list(INTERESTING_KEYS))
    ik, is_, base = (draw(keys) for _ in range(3))
    ids = st.sampled_from((None, 0, 1, 2, 3, 0xFFFFFFFF))
    spk_id, opk_id = draw(ids), draw(ids)
    cert = draw(st.sampled_from([None, b""] + pair.certificates))
    inner = draw(ratchet_records(pair.prekeys, pair.keys)) if draw(st.booleans()) else None
    return _wire(envelope.PreKeyMessage(
        ik or msg.identity_dh, is_ or msg.identity_sign, base or msg.base_key,
        msg.signed_prekey_id if spk_id is None else spk_id,
        msg.one_time_prekey_id if opk_id is None else opk_id,
        inner or msg.message, bytes(msg.sender_certificate) if cert is None else cert))


@fuzz
@given(data=st.data())
def test_fuzz_session_prekey_to_responder(pair: Pair, data: st.DataObject) -> None:
    # pump-7 before the first message: X3DH as responder on hostile PreKeyMessages.
    raw = data.draw(st.one_of(mutated(pair.prekeys, pair.keys), prekey_variants(pair)))
    _receive(pair.pump_fresh, "gw-1", raw)


@fuzz
@given(data=st.data())
def test_fuzz_session_ratchet_to_initiator(pair: Pair, data: st.DataObject) -> None:
    # gw-1 has sent PreKeyMessages and has no receiving chain yet (finding 6's TypeError).
    raw = data.draw(st.one_of(mutated(pair.answers, pair.keys), ratchet_variants(pair.answers, pair.keys)))
    _receive(pair.gw_pending, "pump-7", raw)


@fuzz
@given(data=st.data())
def test_fuzz_session_established(pair: Pair, data: st.DataObject) -> None:
    # Both sides of an established session, with replays of earlier messages among the seeds.
    if data.draw(st.booleans()):
        seeds, template, peer = pair.ratchets + pair.prekeys, pair.pump_after, "gw-1"
    else:
        seeds, template, peer = pair.answers, pair.gw_after, "pump-7"
    raw = data.draw(st.one_of(mutated(seeds, pair.keys), ratchet_variants(seeds, pair.keys)))
    now = data.draw(st.sampled_from((NOW, NOW, None, NOW + 2 * DAY)))
    _receive(template, peer, raw, now)


@fuzz
@given(data=st.data())
def test_fuzz_session_sender_names(pair: Pair, data: st.DataObject) -> None:
    # The frame's sender name picks the session: any text a frame can carry, with a valid message.
    peer = data.draw(st.one_of(st.text(max_size=70), st.sampled_from(
        ["", "peer-index", "gw-1", "GW-1", "gw-1\x00", "p" + "0" * 30, "a" * 64, "a" * 65, "../keys"])))
    raw = data.draw(st.sampled_from(pair.ratchets + pair.prekeys))
    _receive(pair.pump_after, peer, raw)
