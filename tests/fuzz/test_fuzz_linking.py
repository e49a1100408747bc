"""Fuzz target: device linking and backup payloads (docs/linking.md, docs/backup.md): the QR
payload a primary scans (firmware/e2ee/protocol/linking.py Offer.parse), the channel messages the
rendezvous relays (Offer.channel, Channel.for_primary, open_offer, open_answer), and the backup
blob and archive a restore reads (host/e2ee_host/backup.py read_params, records_of). Inputs:
text, bytes and mutations of real payloads, channel messages and blobs. Outcomes: success or
linking.LinkError, backup.BackupError. A parsed offer names a device id and fleet that can be
put into a request path and a topic (docs/provisioning.md's id alphabet).
"""
from __future__ import annotations

import struct

from fuzzing import fuzz, inputs, mutated, outcome
from hypothesis import given
from hypothesis import strategies as st

from e2ee.protocol import linking
from e2ee.protocol.linking import Channel, LinkError, Offer
from e2ee_host import backup

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
