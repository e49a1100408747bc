"""Fuzz target: what the host SDK parses from the service and the broker (host/e2ee_host):
the service's answers to a device or operator client (client.py; the service is not trusted
with keys, docs/threat-model.md, and may answer anything), the board's answers over the raw REPL
(board_link.py BoardLink.call), and the `e2ee client receive` handler of inbox and group messages
(cli.py _Receiver over a real install: session decrypt, sender key distributions, group
messages). Inputs: mutated real answers (fields dropped, retyped, base64 broken), random JSON and
bytes, any HTTP status; hostile envelopes under any sender name, and authentic messages whose
plaintext is a mutated sender key distribution. Outcomes: client.ApiError (BadAnswer for a
malformed answer), certificate.CertificateError, keys.KeyFormatError, enrollment.EnrollmentError
(a challenge of the wrong size), board_link.BoardError;
the receiver drops what it cannot use by its typed error, never as an "untyped error".
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fuzzing import fuzz, inputs, mutated, outcome, scratch_copy
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz_certificate import Fleet
from test_fuzz_session import KEY, NOW, Pair

from e2ee.protocol.certificate import CertificateError
from e2ee.protocol.delivery import encode_data
from e2ee.protocol.enrollment import EnrollmentError
from e2ee.protocol.group import GroupSessions
from e2ee.protocol.keys import KeyFormatError, KeyStore
from e2ee.protocol.session import SessionManager
from e2ee.protocol.trust import TrustStore
from e2ee_host import board_link, cli, client, install
from e2ee_host.install import DISTRIBUTION_PREFIX, HostInstall

CLIENT_ERRORS = (client.ApiError, CertificateError, KeyFormatError, EnrollmentError)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                    max_leaves=12)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def answers(tmp_path_factory: Any) -> dict[str, Any]:
    """Real answers of the service's routes a client parses."""
    fleet = Fleet(tmp_path_factory.mktemp("fleet"))
    peer = KeyStore.generate(1)
    return {
        "/ca": {"keys": [{"key_id": "00", "public_key": _b64(k)} for k in fleet.ca_keys]},
        "/revocations": {"revocation_list": _b64(fleet.crl1), "ca_keys": [_b64(k) for k in fleet.ca_keys]},
        "/keys/pump-7/bundle": {"bundle": _b64(peer.bundle().to_bytes())},
        "/enroll/challenge": {"challenge": _b64(bytes(32))},
        "/enroll": {"certificate": _b64(fleet.own), "ca_keys": [_b64(k) for k in fleet.ca_keys],
                    "revocation_list": _b64(fleet.crl1), "mqtt": None, "serial": "00"},
        "/backups/gw-1/params": {"salt": _b64(bytes(16)), "memory_kib": 65536, "iterations": 3, "lanes": 4},
        "ca_keys": fleet.ca_keys,
    }


@st.composite
def hostile(draw: st.DrawFn, doc: Any) -> tuple[int, bytes]:
    """(status, body): the real answer with one field changed, random JSON, or bytes."""
    kind = draw(st.integers(0, 3))
    if kind == 0 and isinstance(doc, dict) and doc:
        doc = dict(doc)
        key = draw(st.sampled_from(sorted(doc)))
        change = draw(st.integers(0, 3))
        if change == 0:
            del doc[key]
        elif change == 1:
            doc[key] = draw(JSON)
        elif change == 2 and isinstance(doc[key], str):
            cut = draw(st.integers(0, len(doc[key])))
            doc[key] = doc[key][:cut] + draw(st.sampled_from(["", "!", "=", "A"]))
        else:
            doc[key] = [doc[key]]
        body = json.dumps(doc).encode()
    elif kind == 1:
        body = json.dumps(draw(JSON)).encode()
    elif kind == 2:
        body = draw(mutated([json.dumps(doc).encode()]))
    else:
        body = draw(st.binary(max_size=40))
    status = draw(st.sampled_from([200, 200, 200, 201, 204, 400, 404, 409, 500]))
    return status, body


CALLS = {
    "/ca": lambda c, a: c.ca_keys(),
    "/revocations": lambda c, a: c.revocation_list(a["ca_keys"], 0),
    "/keys/pump-7/bundle": lambda c, a: c.bundle("pump-7"),
    "/enroll": lambda c, a: c.enroll("claim-token"),
    "/enroll/challenge": lambda c, a: c.enroll("claim-token"),
    "/backups/gw-1/params": lambda c, a: c.backup_params("gw-1"),
}


@fuzz
@given(data=st.data())
def test_fuzz_host_service_answers(answers: dict[str, Any], data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(sorted(CALLS)))
    status, body = data.draw(hostile(answers[path]))

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path in (path, "/backups/gw-1/fetch"):
            return httpx.Response(status, content=body)
        return httpx.Response(200, json=answers[request.url.path])

    device = client.DeviceClient("http://service.invalid", "gw-1", "plant.north", KeyStore.generate(),
                                 transport=httpx.MockTransport(handler))
    outcome(CALLS[path], CLIENT_ERRORS, device, answers)
    ok, blob = outcome(device.fetch_backup, CLIENT_ERRORS, "gw-1", bytes(32))
    assert not ok or blob == body


@fuzz
@given(st.one_of(st.text(max_size=80), st.binary(max_size=60).map(lambda b: b.decode("latin-1"))))
def test_fuzz_host_board_answers(output: str) -> None:
    # What a board prints back over the raw REPL (BoardLink.call parses its last line as JSON).
    link = board_link.BoardLink("/dev/null")
    link.exec = lambda code, timeout=None: output  # type: ignore[method-assign]
    outcome(link.call, board_link.BoardError, "1")


class Receiver:
    """gw-1's install (an established session with pump-7, in a scratch copy) and pump-7's side to
    make authentic messages with."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair

    @contextlib.contextmanager
    def run(self) -> Any:
        with scratch_copy(self.pair.gw_after) as gw, scratch_copy(self.pair.pump_after) as pump:
            keystore = SessionManager.open(str(gw), KEY).keystore
            inst = HostInstall(gw, KEY, {"url": "http://service.invalid", "device_id": "gw-1",
                                         "fleet": "plant.north"}, keystore)
            inst.set_group_members("line-3", ["pump-7"])
            sender = SessionManager.open(str(pump), KEY, trust=TrustStore(str(pump), KEY))
            yield inst, sender, pump


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: Any) -> Iterator[Receiver]:
    # The install's service client gets an in-memory transport that answers 503 (the receiver
    # calls no service; a client with the default transport costs 50 ms of TLS set-up each).
    offline = httpx.MockTransport(lambda request: httpx.Response(503))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(install, "DeviceClient", functools.partial(client.DeviceClient, transport=offline))
        yield Receiver(Pair(tmp_path_factory.mktemp("pair")))


def _handled(inst: HostInstall, fn: str, *args: Any) -> str:
    handler = cli._Receiver(inst, argparse.Namespace(json=False))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        getattr(handler, fn)(*args)
    assert "untyped error" not in err.getvalue(), err.getvalue()
    return err.getvalue()


SENDERS = st.one_of(st.sampled_from(["pump-7", "pump-7", "", "gw-1", "Pump-7", "pump-8", "p" + "0" * 30]),
                    st.text(max_size=40))


@fuzz
@given(data=st.data())
def test_fuzz_host_receiver_envelopes(receiver: Receiver, data: st.DataObject) -> None:
    pair = receiver.pair
    with receiver.run() as (inst, pump, _):
        if data.draw(st.booleans()):
            wire = data.draw(inputs(pair.answers + pair.prekeys, pair.keys, max_size=700))
            _handled(inst, "handle", data.draw(SENDERS), wire)
        else:  # an authentic message whose plaintext claims to be a sender key distribution
            group = data.draw(st.sampled_from([b"line-3", b"other", b"", b"\xff\xfe", b"l" * 70]))
            dist = data.draw(inputs([_distribution()], max_size=120))
            plaintext = DISTRIBUTION_PREFIX + bytes((len(group) & 0xFF,)) + group + dist
            cut = data.draw(st.sampled_from([len(plaintext)]) | st.integers(0, len(plaintext)))
            plaintext = plaintext[:cut]
            _handled(inst, "handle", "pump-7", bytes(pump.encrypt("gw-1", _data(plaintext), NOW)))
        _handled(inst, "handle_group", "line-3", data.draw(st.binary(max_size=200)))


@fuzz
@given(data=st.data())
def test_fuzz_host_receiver_group_messages(receiver: Receiver, data: st.DataObject) -> None:
    # pump-7's sender key arrives over the pairwise session, then its group messages, mutated.
    with receiver.run() as (inst, pump, pump_dir):
        # a fixed chain: hypothesis needs the same seeds for the same choices
        groups = GroupSessions(str(pump_dir), KEY, "pump-7", rng=lambda n: bytes(range(3, 3 + n)))
        groups.set_members("line-3", ["gw-1"])
        plaintext = DISTRIBUTION_PREFIX + b"\x06line-3" + groups.create("line-3")
        shown = _handled(inst, "handle", "pump-7", bytes(pump.encrypt("gw-1", _data(plaintext), NOW)))
        assert "sender key of pump-7 for group line-3 installed" in shown, shown
        wires = [groups.encrypt("line-3", b"group %d" % i) for i in range(3)]
        _handled(inst, "handle_group", "line-3", data.draw(inputs(wires, max_size=300)))


_SEQ = itertools.count(1)


def _data(payload: bytes) -> bytes:
    """A pairwise plaintext as senders write it: a §8 DATA record (a new message id each time)."""
    return encode_data(b"fuzz-str", next(_SEQ), payload)


def _distribution() -> bytes:
    from e2ee.protocol.sender_key import SenderChain
    return SenderChain.generate(lambda n: bytes(range(n))).distribution("line-3")


def test_fuzzfound_malformed_service_answers_are_bad_answers() -> None:
    # Found by test_fuzz_host_service_answers: a service answer of another shape raised KeyError,
    # TypeError, binascii.Error or JSONDecodeError out of the client, and an error answer whose
    # JSON is not an object raised AttributeError.
    cases = [(200, b'{"bundle": 5}'), (200, b"{}"), (200, b'{"bundle": "!!"}'), (200, b"not json"),
             (200, b"[]")]
    for status, body in cases:
        answer = httpx.MockTransport(lambda r: httpx.Response(status, content=body))
        device = client.DeviceClient("http://service.invalid", "gw-1", "plant.north", KeyStore.generate(),
                                     transport=answer)
        with pytest.raises(client.BadAnswer):
            device.bundle("pump-7")
    for body in (b"[1]", b"null", b"\xff"):
        refusal = httpx.MockTransport(lambda r: httpx.Response(400, content=body))
        device = client.DeviceClient("http://service.invalid", "gw-1", "plant.north", KeyStore.generate(),
                                     transport=refusal)
        with pytest.raises(client.ApiError) as refused:
            device.fetch_backup("gw-1", bytes(32))
        assert refused.value.status == 400
