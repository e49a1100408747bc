"""The board's life on the rig, in order: flash -> enroll -> session with a host peer -> 100
messages -> power cut in the middle of writing -> reboot -> continue -> revoke. Each step needs
the one before it; after a failure the rest are skipped (the board is then in an unknown state)."""
from __future__ import annotations

import base64
import random
import time
from binascii import hexlify, unhexlify
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hil.plugin import OPERATOR_KEY

from e2ee.protocol.keys import KeyStore
from e2ee.protocol.session import SessionManager
from e2ee.protocol.trust import TrustStore
from e2ee_host.board_link import BoardLink, flash, provision
from e2ee_host.client import ApiError, DeviceClient, OperatorClient

DEVICE_ID, FLEET, HOST_ID = "hil-board-1", "hil-rig", "hil-host"
# Runs on the board: the device runtime opened from flash, one envelope in or out per call.
OPEN = "from e2ee.device import Device\nfrom binascii import hexlify as _hx, unhexlify as _ux\ndev = Device.open()\n"


@dataclass
class Lifecycle:
    failed: bool = False
    serial: str = ""
    host: DeviceClient | None = None
    host_sessions: SessionManager | None = None
    board_said: list[bytes] = field(default_factory=list)


STATE = Lifecycle()


@pytest.fixture(autouse=True)
def _in_order(request: pytest.FixtureRequest) -> Any:
    if STATE.failed:
        pytest.skip("an earlier lifecycle step failed")
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed != failed_before:
        STATE.failed = True


def board_exec(port: str, code: str, timeout: float = 120) -> str:
    with BoardLink(port, timeout=15) as link:
        return link.exec(OPEN + code, timeout)


def board_sends(port: str, texts: list[str]) -> list[bytes]:
    """The board encrypts each text for the host; returns the envelopes it printed."""
    out = board_exec(port, "for t in %r:\n    print(_hx(dev.encrypt(%r, t.encode())).decode())\n" % (texts, HOST_ID))
    return [unhexlify(line) for line in out.split()]


def board_receives(port: str, envelopes: list[bytes]) -> list[str]:
    out = board_exec(port, "for e in %r:\n    print(dev.decrypt(%r, _ux(e)).decode())\n" % (
        [hexlify(e).decode() for e in envelopes], HOST_ID))
    return out.splitlines()


def test_flash(rig) -> None:  # type: ignore[no-untyped-def]
    done = flash(rig.port)
    assert done["files"] > 20
    with BoardLink(rig.port) as link:
        assert link.exec("import e2ee.crypto\nprint('sdk ok')").strip() == "sdk ok"


def test_enroll(rig, service, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    with OperatorClient(service.url, OPERATOR_KEY) as op:
        claims = op.create_claims(FLEET, count=2).tokens
        pinned = op.ca_keys()
    done = provision(rig.port, service.url, claims[0], DEVICE_ID, FLEET, one_time=10, force=True)
    STATE.serial = done["serial"]
    assert done["one_time_prekeys"] == 10
    host = DeviceClient(service.url, HOST_ID, FLEET, KeyStore.generate(5))
    enrolled = host.enroll(claims[1], trusted_keys=pinned)
    STATE.host = host
    # certified, as the board is (issue 12, finding 1): the host's TrustStore holds the CA keys,
    # its certificate and the list
    directory = str(tmp_path_factory.mktemp("host"))
    trust = TrustStore(directory, bytes(range(32)))
    trust.set_ca_keys(pinned)
    trust.update_revocation_list(enrolled.revocation_list)
    identity = (host.keystore.ik_pub, host.keystore.is_pub)
    trust.set_certificate(enrolled.certificate, int(time.time()), identity)
    STATE.host_sessions = SessionManager(directory, bytes(range(32)), host.keystore, trust=trust)


def test_session_with_a_host_peer(rig) -> None:  # type: ignore[no-untyped-def]
    host, sessions = STATE.host, STATE.host_sessions
    assert host is not None and sessions is not None
    bundle = host.bundle(DEVICE_ID)
    assert bundle.opk_id is not None
    certificate = base64.b64decode(host.signed("GET", "/identities/%s" % DEVICE_ID)["certificate"])
    sessions.start(DEVICE_ID, bundle, certificate)
    hello = sessions.encrypt(DEVICE_ID, b"hello board")
    assert board_receives(rig.port, [hello]) == ["hello board"]
    [answer] = board_sends(rig.port, ["hello host"])
    assert sessions.decrypt(DEVICE_ID, answer) == b"hello host"


def test_100_messages(rig) -> None:  # type: ignore[no-untyped-def]
    sessions = STATE.host_sessions
    assert sessions is not None
    for batch in range(5):  # 5 x (10 each way) = 100 messages
        to_board = ["h%d-%d" % (batch, i) for i in range(10)]
        got = board_receives(rig.port, [sessions.encrypt(DEVICE_ID, t.encode()) for t in to_board])
        assert got == to_board
        from_board = ["b%d-%d" % (batch, i) for i in range(10)]
        envelopes = board_sends(rig.port, from_board)
        random.shuffle(envelopes)  # the network reorders; the ratchet copes
        assert sorted(sessions.decrypt(DEVICE_ID, e).decode() for e in envelopes) == sorted(from_board)


def test_power_cut_mid_write(rig) -> None:  # type: ignore[no-untyped-def]
    """The board encrypts (and saves its session after each message) in a loop; the power goes
    at a random instant, possibly inside a flash write. Whatever it printed before reaches the
    host; after the reboot the session goes on."""
    if not rig.can_power_cut:
        pytest.skip("this rig cannot cut the board's power")
    with BoardLink(rig.port, timeout=15) as link:
        loop = "i = 0\nwhile True:\n    i += 1\n    print(_hx(dev.encrypt(%r, b'cut %%d' %% i)).decode())\n"
        link._transport.exec_raw_no_follow(OPEN + loop % HOST_ID)
        serial = link._transport.serial
        raw = b""
        deadline = time.monotonic() + random.uniform(0.3, 1.2)
        while time.monotonic() < deadline:  # everything the board prints is "sent"
            raw += serial.read(serial.in_waiting or 1)
        rig.power_cut()
        time.sleep(0.2)
        raw += serial.read(serial.in_waiting)
    lines = raw.decode(errors="replace").replace("\x04", "\n").split()
    # complete lines only: the one being printed when the power went is cut short
    printed = [line for line in lines[:-1] if len(line) > 40 and all(c in "0123456789abcdef" for c in line)]
    STATE.board_said = [unhexlify(p) for p in printed]
    rig.boot()
    sessions = STATE.host_sessions
    assert sessions is not None
    for envelope in STATE.board_said:
        assert sessions.decrypt(DEVICE_ID, envelope).startswith(b"cut ")
    assert STATE.board_said, "the board printed nothing before the power cut"


def test_reboot_and_continue(rig) -> None:  # type: ignore[no-untyped-def]
    sessions = STATE.host_sessions
    assert sessions is not None
    [after] = board_sends(rig.port, ["after the power cut"])
    assert sessions.decrypt(DEVICE_ID, after) == b"after the power cut"
    assert board_receives(rig.port, [sessions.encrypt(DEVICE_ID, b"welcome back")]) == ["welcome back"]


def test_revoke(rig, service) -> None:  # type: ignore[no-untyped-def]
    host = STATE.host
    assert host is not None
    with OperatorClient(service.url, OPERATOR_KEY) as op:
        pinned = op.ca_keys()
        result = op.revoke(DEVICE_ID, "hil: end of life")
        assert result["revoked_serials"] == [STATE.serial]
        crl = op.revocation_list(pinned, last_version=1).crl
    assert crl.is_revoked(unhexlify(STATE.serial))
    with pytest.raises(ApiError) as e:
        host.bundle(DEVICE_ID)
    assert e.value.status == 410
    # the board's own signed requests are refused now
    from e2ee_host.board_link import upload_prekeys
    with BoardLink(rig.port) as link:
        with pytest.raises(ApiError) as e:
            upload_prekeys(link, host, DEVICE_ID, new=1)
    assert e.value.status == 403
