"""Linking a new MicroPython device to its owner by QR payload and the primary's approval
(e2ee.protocol.linking, e2ee_host.linking, api/routes/links.py), both engines: the linked device
then receives messages sent to the owner; revoked from the owner's side it gets nothing sent
after. Plus the refusals: a QR whose fingerprint is not the certified identity, a check code that
differs (someone else answered), approvals by non-owners or with a bad signature."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from enrollment_support import enroll_micropython_device
from service_support import OPERATOR_KEY, metric
from support import DEVICE_TESTS, ROOT

from e2ee import crypto
from e2ee.protocol import linking
from e2ee.protocol.keys import KeyStore
from e2ee.protocol.session import SessionManager
from e2ee_host.client import ApiError, DeviceClient, OperatorClient
from e2ee_host.linking import LinkRefused, approve, qr_png, qr_text

FLEET, OWNER = "plant-north", "acme"


class Interactive:
    """A device script under MicroPython answering one line per command."""

    def __init__(self, micropython, script: Path, *args: str, heap: str = "120K") -> None:  # type: ignore[no-untyped-def]
        self.proc = subprocess.Popen([micropython.binary, "-X", "heapsize=" + heap, str(script), *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=micropython.env(), cwd=ROOT)
        self.expect("ready")

    def expect(self, prefix: str) -> str:
        while True:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line or "Traceback" in line:
                pytest.fail("device failed: %s%s" % (line, self.proc.stdout.read()))  # type: ignore[union-attr]
            if line.startswith(prefix):
                return line.strip()

    def ask(self, line: str, prefix: str) -> str:
        self.proc.stdin.write(line + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.expect(prefix)

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(30)


def _host(url: str, op: OperatorClient, name: str, owner: str = "") -> DeviceClient:
    client = DeviceClient(url, name, FLEET, KeyStore.generate(4))
    client.enroll(op.create_claims(FLEET, owner=owner).tokens[0])
    client.upload_prekeys()
    return client


def test_link_a_micropython_device_by_qr(live_server, micropython, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = live_server.url
    op = OperatorClient(url, OPERATOR_KEY)
    pinned = op.ca_keys()
    primary = _host(url, op, "acme-phone", owner=OWNER)
    flash, skey = str(tmp_path / "board"), os.urandom(32).hex()
    enroll_micropython_device(micropython, url, op.create_claims(FLEET).tokens[0], flash, skey, "acme-valve-7", FLEET)

    board = Interactive(micropython, DEVICE_TESTS / "link_new_device.py", flash, skey)
    _, payload, rendezvous = board.ask("offer acme-valve-7 %s" % FLEET, "payload").split()
    assert payload.startswith(linking.PREFIX) and qr_text(payload).count("\n") > 10
    qr_png(payload, str(tmp_path / "link.png"))
    assert (tmp_path / "link.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    seen: dict[str, str] = {}

    def confirm(code: str) -> bool:
        """The user compares the code on both screens: the board reads the primary's message
        from the rendezvous (relayed here), shows its code and answers."""
        offer_msg = httpx.get("%s/rendezvous/%s/offer" % (url, rendezvous)).content
        _, board_code, hello_hex, sealed = board.ask("answer " + offer_msg.hex(), "code").split()
        seen.update(code=board_code, hello=bytes.fromhex(hello_hex).decode())
        assert httpx.put("%s/rendezvous/%s/answer" % (url, rendezvous), content=bytes.fromhex(sealed)).status_code == 204
        return code == board_code

    result = approve(primary, payload, OWNER, trusted_keys=pinned, confirm=confirm)
    board.close()
    assert result["device_id"] == "acme-valve-7" and result["check_code"] == seen["code"]
    assert json.loads(seen["hello"])["primary"] == "acme-phone"
    devices = {d["device_id"]: d for d in primary.signed("GET", "/owners/%s/devices" % OWNER)}
    assert set(devices) == {"acme-phone", "acme-valve-7"} and devices["acme-valve-7"]["primary"] == "acme-phone"
    crypto.ed25519_verify(primary.keystore.is_pub, linking.approval_message(
        OWNER, "acme-valve-7", bytes.fromhex(devices["acme-valve-7"]["fingerprint"])),
        base64.b64decode(devices["acme-valve-7"]["approval"]))

    # a sender in the fleet writes "to acme": one envelope per device of the owner
    sender = _host(url, op, "line-controller")
    sessions = SessionManager(str(tmp_path / "sender"), os.urandom(32), sender.keystore)
    envelopes = {}
    for d in sender.signed("GET", "/owners/%s/devices" % OWNER):
        sessions.start(d["device_id"], sender.bundle(d["device_id"]))
        envelopes[d["device_id"]] = sessions.encrypt(d["device_id"], b"close valve 7")
    assert set(envelopes) == {"acme-phone", "acme-valve-7"}
    valve = Interactive(micropython, ROOT / "firmware/examples/session_demo.py", flash, skey, heap="256K")
    assert valve.ask("recv line-controller %s" % envelopes["acme-valve-7"].hex(), "ok") == "ok"

    # the owner revokes the valve from its phone: it is out of the owner's list, gets nothing new
    r = primary.signed("POST", "/owners/%s/devices/acme-valve-7/revoke" % OWNER, b'{"reason": "lost"}')
    assert r["revoked_serials"] and r["revocation_list_version"] == 2
    after = [d["device_id"] for d in sender.signed("GET", "/owners/%s/devices" % OWNER)]
    assert after == ["acme-phone"]
    later = sessions.encrypt("acme-phone", b"open valve 7")
    assert valve.ask("recv line-controller %s" % later.hex(), "refused").startswith("refused")
    with pytest.raises(ApiError) as e:
        sender.bundle("acme-valve-7")
    assert e.value.status == 410
    valve.close()
    text = httpx.get(url + "/metrics").text  # the link and the owner's revocation, counted per fleet
    assert metric(text, "e2ee_links_total", fleet=FLEET) == 1
    assert metric(text, "e2ee_revocations_total", fleet=FLEET) == 1
    assert metric(text, "e2ee_devices_revoked", fleet=FLEET) == 1


def test_link_refusals(live_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = live_server.url
    op = OperatorClient(url, OPERATOR_KEY)
    pinned = op.ca_keys()
    primary = _host(url, op, "acme-phone", owner=OWNER)
    new = _host(url, op, "acme-sensor")
    stranger = _host(url, op, "globex-gw", owner="globex")

    # the QR names acme-sensor but carries another identity's fingerprint: refused before anything is sent
    fake = linking.Offer.new("acme-sensor", FLEET, KeyStore.generate().fingerprint())
    with pytest.raises(LinkRefused, match="fingerprint"):
        approve(primary, fake.payload(), OWNER, trusted_keys=pinned, confirm=lambda code: True)
    assert httpx.get("%s/rendezvous/%s/offer" % (url, fake.rendezvous())).status_code == 404

    # someone else answered the QR: the codes differ, the user says no, no link
    offer = linking.Offer.new("acme-sensor", FLEET, new.keystore.fingerprint())
    with pytest.raises(LinkRefused, match="check codes differ"):
        approve(primary, offer.payload(), OWNER, trusted_keys=pinned, confirm=lambda code: code == "000000x")
    assert [d["device_id"] for d in op.list_devices(owner=OWNER)] == ["acme-phone"]

    fp = new.keystore.fingerprint()
    good = linking.approval_message(OWNER, "acme-sensor", fp)
    consent = new.keystore.sign(linking.consent_message(OWNER, "acme-phone", fp))

    def post(client: DeviceClient, owner: str, signature: bytes, fingerprint: bytes = fp) -> int:
        body = {"owner": owner, "device_id": "acme-sensor", "fingerprint": base64.b64encode(fingerprint).decode(),
                "approval": base64.b64encode(signature).decode(),
                "consent": base64.b64encode(consent).decode()}
        try:
            client.signed("POST", "/links", json.dumps(body).encode())
        except ApiError as e:
            return e.status
        return 201

    assert post(stranger, OWNER, stranger.keystore.sign(good)) == 403  # not a device of acme
    assert post(primary, OWNER, new.keystore.sign(good)) == 422  # approval not by the primary
    assert post(primary, OWNER, primary.keystore.sign(good), bytes(16)) == 422  # wrong fingerprint
    assert post(primary, OWNER, primary.keystore.sign(good)) == 201
    assert post(primary, OWNER, primary.keystore.sign(good)) == 409  # already linked
    # the rendezvous takes each slot once
    assert httpx.put("%s/rendezvous/%s/offer" % (url, "ab" * 16), content=b"x" * 40).status_code == 204
    assert httpx.put("%s/rendezvous/%s/offer" % (url, "ab" * 16), content=b"y" * 40).status_code == 409
    assert httpx.put("%s/rendezvous/%s/offer" % (url, "zz" * 16), content=b"y" * 40).status_code == 422
    # a relayed offer altered on the way does not open on the new device
    channel, ephemeral = linking.Channel.for_primary(offer)
    sealed = bytearray(channel.seal_offer(b"{}"))
    sealed[0] ^= 1
    with pytest.raises(linking.ChannelError):
        offer.channel(ephemeral).open_offer(bytes(sealed))


def test_finding5_a_link_needs_the_new_devices_consent(live_server):  # type: ignore[no-untyped-def]
    """A device of owner acme tries to adopt an owner-less device that never agreed (then it
    could revoke it for good): without the new device's signature over (owner, primary, its
    fingerprint), or with one for another owner or primary, nothing is recorded."""
    url = live_server.url
    op = OperatorClient(url, OPERATOR_KEY)
    adopter = _host(url, op, "acme-phone", owner=OWNER)
    _host(url, op, "acme-laptop", owner=OWNER)  # another primary of acme
    victim = _host(url, op, "line-sensor")
    fp = victim.keystore.fingerprint()
    approval = base64.b64encode(adopter.keystore.sign(linking.approval_message(OWNER, "line-sensor", fp)))

    def post(consent: bytes | None) -> int:
        body = {"owner": OWNER, "device_id": "line-sensor", "fingerprint": base64.b64encode(fp).decode(),
                "approval": approval.decode()}
        if consent is not None:
            body["consent"] = base64.b64encode(consent).decode()
        try:
            adopter.signed("POST", "/links", json.dumps(body).encode())
        except ApiError as e:
            return e.status
        return 201

    refused = {
        "none": None,
        "by the adopter": adopter.keystore.sign(linking.consent_message(OWNER, "acme-phone", fp)),
        "for another primary": victim.keystore.sign(linking.consent_message(OWNER, "acme-laptop", fp)),
        "for another owner": victim.keystore.sign(linking.consent_message("globex", "acme-phone", fp)),
        "an approval": victim.keystore.sign(linking.approval_message(OWNER, "line-sensor", fp)),
    }
    for case, consent in refused.items():
        assert post(consent) in (403, 422), case
        assert [d["device_id"] for d in op.list_devices(owner=OWNER)] == ["acme-phone", "acme-laptop"], case
        with pytest.raises(ApiError) as e:  # not adopted: the adopter cannot revoke it
            adopter.signed("POST", "/owners/%s/devices/line-sensor/revoke" % OWNER, b"{}")
        assert e.value.status == 404, case
    assert post(victim.keystore.sign(linking.consent_message(OWNER, "acme-phone", fp))) == 201
    assert op.device("line-sensor")["owner"] == OWNER

