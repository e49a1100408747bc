"""Fuzz target: the envelope codec (firmware/e2ee/protocol/envelope.py, docs/protocol.md §4) and
its host twin on the protobuf runtime (e2ee_host.envelope). Seeds: every wire of the published
vectors docs/vectors/envelope.txt, valid and invalid. Outcomes: a record, or a DecodeError
subclass; a record decoded from anything re-encodes within the limits, and host and device agree.
"""
from __future__ import annotations

import vectorfile
from fuzzing import fuzz, inputs, outcome
from hypothesis import given
from support import ROOT

from e2ee.protocol import envelope
from e2ee_host import envelope as host_envelope

SEEDS = [rec["wire"] for rec in vectorfile.records(str(ROOT / "docs" / "vectors" / "envelope.txt"))]
KEYS = [SEEDS[0][10:42]]  # the vectors' dh pattern, as a token for key windows
RECORDS = (envelope.RatchetMessage, envelope.PreKeyMessage, envelope.Control)


@fuzz
@given(inputs(SEEDS, KEYS, max_size=envelope.MAX_ENVELOPE + 16))
def test_fuzz_envelope_decode(data: bytes) -> None:
    ok, record = outcome(envelope.decode, envelope.DecodeError, data)
    host_ok, host_record = outcome(host_envelope.decode, envelope.DecodeError, data)
    assert ok == host_ok, (record, host_record)  # one set of rules on both sides (§4)
    if not ok:
        assert type(record) is type(host_record)
        return
    # Anything the codec accepts is a record it can write again, canonically, and read back.
    wire = envelope.encode(record)
    assert len(wire) <= envelope.MAX_ENVELOPE
    assert envelope.decode(wire) == record
    # protobuf read the same fields (it keeps unknown ones for re-encoding; the device skips them)
    assert host_envelope._as_device_record(host_record) == record


@fuzz
@given(inputs(SEEDS, KEYS, max_size=envelope.MAX_ENVELOPE + 16))
def test_fuzz_envelope_decode_as_each_type(data: bytes) -> None:
    for cls in RECORDS:
        ok, record = outcome(cls.decode, envelope.DecodeError, data)
        if ok:
            assert isinstance(record, cls)


@fuzz
@given(inputs(SEEDS, KEYS))
def test_fuzz_envelope_bodies(data: bytes) -> None:
    # The bodies alone (the PreKeyMessage's inner RatchetMessage is one).
    for cls in RECORDS:
        ok, record = outcome(cls.decode_body, envelope.DecodeError, data)
        if ok:
            assert cls.decode_body(record.encode_body()) == record
