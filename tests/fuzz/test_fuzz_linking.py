"""Fuzz target: device linking and backup payloads (docs/linking.md, docs/backup.md): the QR
payload a primary scans (firmware/e2ee/protocol/linking.py Offer.parse), the channel messages the
rendezvous relays (Offer.channel, Channel.for_primary, open_offer, open_answer), and the backup
blob and archive a restore reads (host/e2ee_host/backup.py read_params, records_of), and the
host's two sides of a link over an in-memory service (host/e2ee_host/linking.py approve,
NewDeviceLink). Inputs: text, bytes and mutations of real payloads, channel messages, blobs and
service answers, and authentic channel messages around hostile JSON. Outcomes: success or
linking.LinkError, backup.BackupError (client.ApiError, certificate.CertificateError on the host
side). A parsed offer names a device id and fleet that can be put into a request path and a topic
(docs/provisioning.md's id alphabet).
"""
from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fuzzing import fuzz, inputs, mutated, outcome
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz_certificate import Fleet
from test_fuzz_host import hostile

from e2ee.protocol import linking
from e2ee.protocol.certificate import CertificateError
from e2ee.protocol.keys import KeyStore
from e2ee.protocol.linking import Channel, LinkError, Offer
from e2ee_host import backup, client, fleet_ca
from e2ee_host import linking as host_linking_mod

ID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
OFFER = Offer.new("pump-7", "plant.north", bytes(range(16)), rng=lambda n: bytes(range(7, 7 + n)))
RAW = [linking._b32decode(OFFER.payload()[len(linking.PREFIX):]),
       linking._b32decode(Offer.new("a" * 64, "F", bytes(16)).payload()[len(linking.PREFIX):])]
PRIMARY, PRIMARY_PUB = Channel.for_primary(OFFER, rng=lambda n: bytes(range(40, 40 + n)))
SEALED = [PRIMARY.seal_offer(b'{"owner": "ann", "primary": "gw-1"}'), bytes(PRIMARY_PUB) + bytes(16)]


@fuzz
@given(data=st.data())
def test_fuzz_linking_offer_payload(data: st.DataObject) -> None:
    if data.draw(st.booleans()):
        text = linking.PREFIX + linking._b32encode(data.draw(mutated(RAW)))
    else:
        text = data.draw(st.one_of(st.text(max_size=200), st.just(OFFER.payload()).map(
            lambda p: p[:data.draw(st.integers(0, len(p)))] + data.draw(st.text(max_size=8)))))
    ok, offer = outcome(Offer.parse, LinkError, text)
    if ok:
        for name in (offer.device_id, offer.fleet):
            assert 1 <= len(name) <= linking.MAX_NAME and set(name) <= ID_CHARS, name
        outcome(Channel.for_primary, LinkError, offer)  # the primary's side, from the scanned keys


@fuzz
@given(data=st.data())
def test_fuzz_linking_channel_messages(data: st.DataObject) -> None:
    # What the rendezvous hands each side: the primary's key || sealed offer, the sealed answer.
    raw = data.draw(inputs(SEALED, [bytes(PRIMARY_PUB)], max_size=200))
    new = Offer(OFFER.device_id, OFFER.fleet, OFFER.fingerprint, OFFER.secret, OFFER.ephemeral_pub,
                bytes(range(7, 7 + 32)))
    ok, channel = outcome(new.channel, LinkError, raw[:32])
    if ok:
        outcome(channel.open_offer, LinkError, raw[32:])
    outcome(PRIMARY.open_answer, LinkError, raw)


def _blob(memory: int, iterations: int, lanes: int) -> bytes:
    header = struct.pack(">6sBBIIB16s", backup.MAGIC, backup.VERSION, backup.KDF_ARGON2ID, memory, iterations,
                         lanes, bytes(16))
    return header + bytes(12) + bytes(40)


BLOBS = [_blob(65536, 3, 4), _blob(8, 1, 1)]
ARCHIVES = [backup.archive_of([("keys", "keystore", b"k" * 40), ("config", "device", b"{}"),
                               ("groups", "g0123", b"[]")])]


@fuzz
@given(data=st.data())
def test_fuzz_backup_blob_and_archive(data: st.DataObject) -> None:
    blob = data.draw(inputs(BLOBS, max_size=120))
    outcome(backup.read_params, backup.BackupError, blob, backup.HOST_PARAMS)
    archive = data.draw(inputs(ARCHIVES, max_size=200))
    ok, records = outcome(backup.records_of, backup.BackupError, archive)
    if ok:
        assert all(kind in backup.STORES for kind, _, _ in backup.restorable(records))


def _payload(device_id: bytes, fleet: bytes = b"plant.north", key: bytes = bytes(OFFER.ephemeral_pub)) -> str:
    raw = bytes((linking.VERSION, len(device_id))) + device_id + bytes((len(fleet),)) + fleet
    raw += bytes(32) + key  # fingerprint, secret, ephemeral key
    return linking.PREFIX + linking._b32encode(raw)


def test_fuzzfound_offer_names_outside_the_id_alphabet() -> None:
    # Found by test_fuzz_linking_offer_payload: any bytes were a device id or fleet, so a QR code
    # could make the primary sign GET /identities/../<elsewhere>.
    import pytest
    for bad in (b"../claims", b"pump 7", b"a/b", b"\xc3\xa9"):
        with pytest.raises(linking.BadPayload):
            Offer.parse(_payload(bad))
        with pytest.raises(linking.BadPayload):
            Offer.parse(_payload(b"pump-7", bad))
    assert Offer.parse(_payload(b"Pump_7.a-b")).device_id == "Pump_7.a-b"


def test_fuzzfound_channel_refuses_unusable_ephemeral_keys() -> None:
    # Found by test_fuzz_linking_channel_messages: a short or small-order key from the rendezvous
    # or the QR code raised the crypto layer's InvalidLength / WeakSharedSecret.
    import pytest
    new = Offer(OFFER.device_id, OFFER.fleet, OFFER.fingerprint, OFFER.secret, OFFER.ephemeral_pub, bytes(32))
    for key in (b"", bytes(31), bytes(32)):
        with pytest.raises(linking.ChannelError):
            new.channel(key)
    with pytest.raises(linking.ChannelError):
        Channel.for_primary(Offer.parse(_payload(b"pump-7", key=bytes(32))))


# ---- the host's side of linking (host/e2ee_host/linking.py) over an in-memory service ----------

HOST_ERRORS = (LinkError, client.ApiError, CertificateError)


class HostLinking:
    """A CA, the new device pump-7 (its certificate, its offer) and the answers of a service."""

    def __init__(self, root: Path) -> None:
        self.fleet = Fleet(root)
        self.new = KeyStore.generate()
        now = int(time.time())  # approve() checks the certificate against the clock
        self.certificate = fleet_ca.issue_certificate(
            self.fleet.ca, device_id="pump-7", fleet="plant.north", identity_dh=self.new.ik_pub,
            identity_sign=self.new.is_pub, not_before=now - 86_400, not_after=now + 86_400)
        self.identity = {"device_id": "pump-7", "certificate": base64.b64encode(self.certificate).decode()}
        consent = self.new.sign(linking.consent_message("acme", "gw-1", self.new.fingerprint()))
        self.answer = {"accept": True, "device_id": "pump-7", "consent": base64.b64encode(consent).decode()}
        self.hello = {"owner": "acme", "primary": "gw-1", "fingerprint": "00" * 16}


@pytest.fixture(scope="module")
def host_linking(tmp_path_factory: Any) -> HostLinking:
    return HostLinking(tmp_path_factory.mktemp("linking"))


def _sealed_or_raw(data: st.DataObject, doc: dict[str, Any], seal: Callable[[bytes], bytes]) -> bytes:
    """A slot's contents: the channel's sealed message around a hostile JSON body, or any bytes."""
    if data.draw(st.booleans()):
        return seal(data.draw(hostile(doc))[1])
    return data.draw(st.binary(max_size=120))


@fuzz
@given(data=st.data())
def test_fuzz_linking_host_approve(host_linking: HostLinking, data: st.DataObject) -> None:
    # The primary approves pump-7: the service's identity answer and the new device's answer
    # (sealed in the channel, or not) are hostile.
    h = host_linking
    offer = Offer.new("pump-7", "plant.north", h.new.fingerprint())
    ident_status, ident_body = data.draw(hostile(h.identity)) if data.draw(st.booleans()) else (
        200, json.dumps(h.identity).encode())
    slots: dict[str, bytes] = {}

    def service(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/identities/"):
            return httpx.Response(ident_status, content=ident_body)
        if path.endswith("/offer"):
            slots["offer"] = request.content
            return httpx.Response(200)
        if path.endswith("/answer"):
            channel = offer.channel(slots["offer"][:32])
            return httpx.Response(200, content=_sealed_or_raw(data, h.answer, channel.seal_answer))
        return httpx.Response(200, json={"linked": True})

    primary = client.DeviceClient("http://service.invalid", "gw-1", "plant.north", KeyStore.generate(),
                                  transport=httpx.MockTransport(service))
    outcome(host_linking_mod.approve, HOST_ERRORS, primary, offer.payload(), "acme",
            trusted_keys=h.fleet.ca_keys, confirm=lambda code: True, timeout=0.0)


@fuzz
@given(data=st.data())
def test_fuzz_linking_host_new_device(host_linking: HostLinking, data: st.DataObject) -> None:
    # The new device waits for the primary's message in the rendezvous, then answers.
    h = host_linking
    device = client.DeviceClient("http://service.invalid", "pump-7", "plant.north", h.new,
                                 transport=httpx.MockTransport(lambda request: respond(request)))
    link = host_linking_mod.NewDeviceLink(device)
    channel, public = Channel.for_primary(link.offer)

    def respond(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            body = _sealed_or_raw(data, h.hello, lambda m: bytes(public) + channel.seal_offer(m))
            return httpx.Response(200, content=body)
        return httpx.Response(200)

    ok, _ = outcome(link.wait, HOST_ERRORS, 0.0)
    if ok:
        outcome(link.accept, HOST_ERRORS)


def test_fuzzfound_host_linking_answers_of_another_shape(host_linking: HostLinking) -> None:
    # Found by the two targets above: an identity answer without a certificate, and channel
    # messages that are not JSON objects, raised KeyError, JSONDecodeError or AttributeError.
    h = host_linking
    offer = Offer.new("pump-7", "plant.north", h.new.fingerprint())
    for ident, answer in (({"device_id": "pump-7"}, h.answer), (h.identity, b"[1]"), (h.identity, b"\xff")):
        slots: dict[str, bytes] = {}

        def service(request: httpx.Request, ident: Any = ident, answer: Any = answer) -> httpx.Response:
            if request.url.path.startswith("/identities/"):
                return httpx.Response(200, json=ident)
            if request.url.path.endswith("/offer"):
                slots["offer"] = request.content
                return httpx.Response(200)
            plaintext = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            return httpx.Response(200, content=offer.channel(slots["offer"][:32]).seal_answer(plaintext))

        primary = client.DeviceClient("http://service.invalid", "gw-1", "plant.north", KeyStore.generate(),
                                      transport=httpx.MockTransport(service))
        with pytest.raises((LinkError, client.ApiError)):
            host_linking_mod.approve(primary, offer.payload(), "acme", trusted_keys=h.fleet.ca_keys,
                                     confirm=lambda code: True, timeout=0.0)
