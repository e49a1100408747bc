"""Key directory (api/routes/keys.py), both engines: uploads signed by the device's identity key
and checked with e2ee.protocol.keys; bundles hand out each one-time prekey once; refused
requests are a clear 4xx and change nothing."""
from __future__ import annotations

import base64
import json

import pytest
from service_support import OPERATOR, TestDevice, b64, dump_tables

from e2ee import crypto
from e2ee.protocol import keys
from e2ee_provisioning.models import Device, Revocation


@pytest.fixture
def device(client) -> TestDevice:  # type: ignore[no-untyped-def]
    d = TestDevice("sensor-7", one_time=12)
    d.register(client)
    return d


def bundle_of(r) -> keys.PrekeyBundle:  # type: ignore[no-untyped-def]
    assert r.status_code == 200, r.text
    return keys.PrekeyBundle.from_bytes(base64.b64decode(r.json()["bundle"]))


def test_upload_fetch_until_signed_prekey_only(client, device) -> None:  # type: ignore[no-untyped-def]
    r = device.upload(client)
    assert r.status_code == 200, r.text
    assert r.json() == {"device_id": "sensor-7", "one_time_prekeys": 12, "signed_prekey_id": device.store.spk_id,
                        "replenish": False}
    published = dict(device.store.one_time_prekey_publics())
    seen = []
    for _ in range(12):
        b = bundle_of(client.get("/keys/sensor-7/bundle", headers=OPERATOR))
        # the bundle is the device's own, byte for byte, and its signed prekey verifies (§1)
        assert b == device.store.bundle(b.opk_id)
        crypto.ed25519_verify(b.is_pub, keys.spk_signature_message(b.ik_pub, b.spk_id, b.spk_pub), b.spk_sig)
        assert b.opk_pub == published[b.opk_id]
        seen.append(b.opk_id)
    assert seen == sorted(published)  # each once, lowest id first
    for _ in range(2):
        r = client.get("/keys/sensor-7/bundle", headers=OPERATOR)
        b = bundle_of(r)
        assert (b.opk_id, b.opk_pub, r.json()["one_time_prekey"]) == (None, None, False)
        assert b == device.store.bundle()
        assert r.headers["cache-control"] == "no-store"
    inv = client.get("/keys/sensor-7/inventory", headers=OPERATOR).json()
    assert (inv["one_time_prekeys"], inv["replenish"]) == (0, True)


def test_replenish_flag_and_top_up(client, device) -> None:  # type: ignore[no-untyped-def]
    first = device.one_time_prekeys()
    r = device.upload(client, opks=first[:5])
    assert r.json()["replenish"] is True  # 5 < threshold 10
    r = device.upload(client, spk=False, opks=first[5:])
    assert (r.json()["one_time_prekeys"], r.json()["replenish"]) == (12, False)
    # the device reads its own inventory with a signed GET
    r = client.get("/keys/sensor-7/inventory", headers=device.headers("GET", "/keys/sensor-7/inventory"))
    assert r.status_code == 200 and r.json()["one_time_prekeys"] == 12
    # a rotated signed prekey replaces the old one in later bundles; stored OPKs stay
    device.store.rotate_signed_prekey()
    r = device.upload(client, opks=[])
    assert r.status_code == 200 and r.json()["signed_prekey_id"] == device.store.spk_id
    b = bundle_of(client.get("/keys/sensor-7/bundle", headers=OPERATOR))
    assert b.spk_id == device.store.spk_id and b.opk_id == 1


def test_device_signed_bundle_fetch_and_inventory_privacy(client, device) -> None:  # type: ignore[no-untyped-def]
    device.upload(client)
    peer = TestDevice("peer-1")
    peer.register(client)
    b = bundle_of(client.get("/keys/sensor-7/bundle", headers=peer.headers("GET", "/keys/sensor-7/bundle")))
    assert b.opk_id == 1
    r = client.get("/keys/sensor-7/inventory", headers=peer.headers("GET", "/keys/sensor-7/inventory"))
    assert r.status_code == 403


def test_bundle_errors(client, device) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/keys/nobody/bundle", headers=OPERATOR).status_code == 404
    r = client.get("/keys/sensor-7/bundle", headers=OPERATOR)
    assert (r.status_code, r.json()["detail"]) == (404, "device has not published a signed prekey")
    device.upload(client)
    engine = client.app.state.engine
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    with Session(engine) as s:
        pk = s.scalar(select(Device.id).where(Device.device_id == "sensor-7"))
        s.add(Revocation(device_pk=pk, reason="test"))
        s.commit()
    before = dump_tables(engine)
    assert client.get("/keys/sensor-7/bundle", headers=OPERATOR).status_code == 410
    # a revoked device's own signed requests are refused too
    assert device.upload(client, spk=False, opks=[]).status_code == 403
    assert dump_tables(engine) == before


def _opk(i: int, pub: bytes = b"\x09" * 32) -> dict[str, object]:
    return {"opk_id": i, "opk_pub": b64(pub)}


# (name, how to build the request from the device, expected status)
def _bad_uploads(device: TestDevice) -> list[tuple[str, object, int]]:
    other = keys.KeyStore.generate()
    spk = device.signed_prekey()
    bad_sig = dict(spk, spk_sig=b64(bytes(64)))
    foreign_sig = dict(spk, spk_sig=b64(other.bundle().spk_sig))
    good = device.one_time_prekeys()
    body = device.upload_body
    return [
        ("request signed by another key", lambda c: device.post(c, "/keys", body(), signer=other), 401),
        ("request signature over another body", lambda c: c.post("/keys", content=body(), headers={
            **device.headers("POST", "/keys", body(opks=good[:1])), "Content-Type": "application/json"}), 401),
        ("request signed for another path", lambda c: c.post("/keys", content=body(), headers={
            **device.headers("POST", "/keys/x", body()), "Content-Type": "application/json"}), 401),
        ("stale timestamp", lambda c: device.post(c, "/keys", body(), timestamp=device.next_timestamp() - 3600), 401),
        ("no signature headers", lambda c: c.post("/keys", content=body(), headers={"Content-Type": "application/json"}), 401),
        ("operator key is not a device", lambda c: c.post("/keys", content=body(), headers={
            **OPERATOR, "Content-Type": "application/json"}), 401),
        ("malformed signature header", lambda c: c.post("/keys", content=body(), headers={
            **device.headers("POST", "/keys", body()), "X-E2EE-Signature": "%%%", "Content-Type": "application/json"}), 401),
        ("unknown device", lambda c: TestDevice("ghost").post(c, "/keys", body()), 401),
        ("bad signed-prekey signature", lambda c: device.post(c, "/keys", json.dumps(
            {"signed_prekey": bad_sig, "one_time_prekeys": good}).encode()), 422),
        ("signed prekey signed by another identity", lambda c: device.post(c, "/keys", json.dumps(
            {"signed_prekey": foreign_sig}).encode()), 422),
        ("oversized batch (101)", lambda c: device.post(c, "/keys", body(opks=[_opk(i) for i in range(1, 102)])), 422),
        ("body over max_upload_bytes", lambda c: device.post(c, "/keys", body() + b" " * 40_000), 413),
        ("31-byte one-time prekey", lambda c: device.post(c, "/keys", body(opks=good[:3] + [_opk(99, b"\x01" * 31)])), 422),
        ("33-byte signed prekey", lambda c: device.post(c, "/keys", json.dumps(
            {"signed_prekey": dict(spk, spk_pub=b64(b"\x02" * 33))}).encode()), 422),
        ("opk_id 0", lambda c: device.post(c, "/keys", body(opks=good[:3] + [_opk(0)])), 422),
        ("last-resort id", lambda c: device.post(c, "/keys", body(opks=[_opk(0xFFFFFFFF)])), 422),
        ("opk_id over uint32", lambda c: device.post(c, "/keys", body(opks=[_opk(2**32)])), 422),
        ("repeated ids", lambda c: device.post(c, "/keys", body(opks=[good[0], good[0]])), 422),
        ("not base64", lambda c: device.post(c, "/keys", body(opks=[{"opk_id": 5, "opk_pub": "@@@"}])), 422),
        ("not JSON", lambda c: device.post(c, "/keys", b"\x21" + bytes(200)), 400),
        ("JSON of the wrong shape", lambda c: device.post(c, "/keys", b'{"one_time_prekeys": 5}'), 422),
        ("empty upload", lambda c: device.post(c, "/keys", body(spk=False, opks=[])), 422),
    ]


def test_refused_uploads_are_4xx_and_change_nothing(client, device) -> None:  # type: ignore[no-untyped-def]
    engine = client.app.state.engine
    # before any signed prekey: one-time prekeys alone are refused
    before = dump_tables(engine)
    r = device.upload(client, spk=False)
    assert (r.status_code, dump_tables(engine)) == (422, before)
    assert device.upload(client, opks=device.one_time_prekeys()[:4]).status_code == 200
    before = dump_tables(engine)
    for name, request, code in _bad_uploads(device):
        r = request(client)  # type: ignore[operator]
        assert r.status_code == code, (name, r.status_code, r.text)
        assert dump_tables(engine) == before, name
    # already published ids conflict; a replayed request is refused
    r = device.upload(client, spk=False, opks=device.one_time_prekeys()[3:6])
    assert r.status_code == 409 and "already published" in r.json()["detail"]
    body = device.upload_body(spk=False, opks=device.one_time_prekeys()[4:6])
    headers = {**device.headers("POST", "/keys", body), "Content-Type": "application/json"}
    assert client.post("/keys", content=body, headers=headers).status_code == 200
    after = dump_tables(engine)
    assert client.post("/keys", content=body, headers=headers).status_code == 409
    assert dump_tables(engine) == after
    # over the per-device limit
    client.app.state.settings.max_one_time_prekeys = 7
    r = device.upload(client, spk=False, opks=device.one_time_prekeys()[6:8])
    assert (r.status_code, dump_tables(engine)) == (422, after)


def test_bundle_fetches_are_rate_limited(client, device) -> None:  # type: ignore[no-untyped-def]
    from e2ee_provisioning.core.ratelimit import TokenBuckets

    device.upload(client)
    client.app.state.bundle_buckets = TokenBuckets(capacity=3, per_second=0.001)
    codes = [client.get("/keys/sensor-7/bundle", headers=OPERATOR).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    # a device has its own bucket
    peer = TestDevice("peer-1")
    peer.register(client)
    assert client.get("/keys/sensor-7/bundle", headers=peer.headers("GET", "/keys/sensor-7/bundle")).status_code == 200
    inv = client.get("/keys/sensor-7/inventory", headers=OPERATOR).json()
    assert inv["one_time_prekeys"] == 12 - 4  # refused fetches took nothing


def test_token_bucket_refills() -> None:
    from e2ee_provisioning.core.ratelimit import TokenBuckets

    now = [0.0]
    b = TokenBuckets(capacity=2, per_second=0.5, clock=lambda: now[0])
    assert [b.allow("a"), b.allow("a"), b.allow("a"), b.allow("b")] == [True, True, False, True]
    now[0] = 1.9
    assert b.allow("a") is False
    now[0] = 2.1
    assert b.allow("a") is True
