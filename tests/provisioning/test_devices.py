"""Devices for operators (api/routes/devices.py, revocations.py), both engines: list and show,
revocation and its signed list, certificate status, and the registration lock."""
from __future__ import annotations

import base64
import time

import pytest
from service_support import OPERATOR, TestDevice, create_claim, dump_tables, metric

from e2ee.protocol import certificate
from e2ee.protocol.keys import KeyStore


def test_get_and_list_devices(client) -> None:  # type: ignore[no-untyped-def]
    a, b = TestDevice("pump-1"), TestDevice("pump-2", fleet="plant-south")
    a.register(client)
    b.register(client)
    info = client.get("/devices/pump-1", headers=OPERATOR).json()
    assert info["fingerprint"] == a.store.fingerprint().hex()
    assert base64.b64decode(info["ik_pub"]) == a.store.ik_pub and info["revoked"] is False
    assert info["registration_lock"] is False and info["board_uid"] is None
    assert [d["device_id"] for d in client.get("/devices", headers=OPERATOR).json()] == ["pump-1", "pump-2"]
    assert [d["device_id"] for d in client.get("/devices?fleet=plant-south", headers=OPERATOR).json()] == ["pump-2"]
    assert client.get("/devices/pump-9", headers=OPERATOR).status_code == 404


def test_revocation_publishes_a_signed_list_and_stops_the_device(client) -> None:  # type: ignore[no-untyped-def]
    device, peer = TestDevice("pump-1", one_time=2), TestDevice("gateway-1")
    result = device.register(client)
    peer.register(client)
    assert device.upload(client).status_code == 200
    first = client.get("/revocations").json()
    assert first["version"] == 1 and first["revoked"] == 0

    r = client.post("/devices/pump-1/revoke", headers=OPERATOR, json={"reason": "stolen"})
    assert r.status_code == 200, r.text
    assert r.json() == {"device_id": "pump-1", "revoked_serials": [result["serial"]], "revocation_list_version": 2}
    listed = client.get("/revocations").json()
    trusted = [base64.b64decode(k) for k in listed["ca_keys"]]
    crl = certificate.verify_revocation_list(base64.b64decode(listed["revocation_list"]), trusted, 1)
    assert crl.version == 2 and crl.is_revoked(bytes.fromhex(result["serial"])) and listed["revoked"] == 1
    with pytest.raises(certificate.Revoked):
        certificate.verify_certificate(base64.b64decode(result["certificate"]), trusted, int(time.time()), crl)
    status = client.get("/certificates/" + result["serial"], headers=peer.headers(
        "GET", "/certificates/" + result["serial"])).json()
    assert status["status"] == "revoked" and status["revoke_reason"] == "stolen"
    # no more bundles, no more signed requests, no second revocation, no re-enrollment
    assert client.get("/keys/pump-1/bundle", headers=OPERATOR).status_code == 410
    assert device.upload(client).status_code == 403
    assert client.get("/devices/pump-1", headers=OPERATOR).json()["revoked"] is True
    before = dump_tables(client.app.state.engine)
    assert client.post("/devices/pump-1/revoke", headers=OPERATOR, json={}).status_code == 409
    assert client.post("/devices/pump-9/revoke", headers=OPERATOR, json={}).status_code == 404
    assert client.post("/devices/pump-1/revoke", headers=OPERATOR, json={"reason": "x" * 129}).status_code == 422
    assert dump_tables(client.app.state.engine) == before
    assert device.enroll(client, create_claim(client)).status_code == 403


def test_certificate_status_queries(client) -> None:  # type: ignore[no-untyped-def]
    result = TestDevice("pump-1").register(client)
    assert client.get("/certificates/" + result["serial"]).status_code == 401
    assert client.get("/certificates/" + "00" * 16, headers=OPERATOR).status_code == 404
    for bad in ("zz" * 16, "00" * 15, "0"):
        assert client.get("/certificates/" + bad, headers=OPERATOR).status_code == 422


def test_registration_lock(client) -> None:  # type: ignore[no-untyped-def]
    settings = client.app.state.settings
    device = TestDevice("pump-1")
    first = device.register(client, owner="acme")
    body = b'{"pin": "4711-2342"}'
    r = client.put("/me/registration-lock", content=body, headers={
        "Content-Type": "application/json", **device.headers("PUT", "/me/registration-lock", body)})
    assert r.status_code == 204, r.text
    info = client.get("/devices/pump-1", headers=OPERATOR).json()
    assert info["registration_lock"] is True and "4711" not in str(info)

    # the same device id with new keys (a reflashed or stolen-and-reset board), with the owner's claim
    thief = TestDevice("pump-1")
    thief.store = KeyStore.generate()
    token = create_claim(client, quota=20, owner="acme")
    before = dump_tables(client.app.state.engine)
    r = thief.enroll(client, token)
    assert r.status_code == 423 and "needs its PIN" in r.text
    assert dump_tables(client.app.state.engine) == before | {
        "enrollment_challenges": dump_tables(client.app.state.engine)["enrollment_challenges"]}
    r = thief.enroll(client, token, registration_lock_pin="0000")
    assert r.status_code == 423 and "wrong PIN (%d attempts left)" % (settings.registration_lock_attempts - 1) in r.text
    # the right PIN re-registers: the old certificate is superseded and listed
    r = thief.enroll(client, token, registration_lock_pin="4711-2342")
    assert r.status_code == 201, r.text
    assert client.get("/certificates/" + first["serial"], headers=OPERATOR).json()["status"] == "revoked"
    crl = client.get("/revocations").json()
    assert crl["version"] == 2 and crl["revoked"] == 1
    # attempt-limited: after the limit even the right PIN is refused, until an operator clears it
    other = TestDevice("pump-1")
    other.store = KeyStore.generate()
    for _ in range(settings.registration_lock_attempts):
        assert other.enroll(client, token, registration_lock_pin="9999").status_code == 423
    r = other.enroll(client, token, registration_lock_pin="4711-2342")
    assert r.status_code == 423 and "operator must clear" in r.text
    text = client.get("/metrics").text  # counted per fleet: the wrong PINs and the one lock-out
    assert metric(text, "e2ee_registration_lockouts_total", fleet="plant-north") == 1
    assert metric(text, "e2ee_registration_lock_failures_total", fleet="plant-north") >= settings.registration_lock_attempts
    assert client.delete("/devices/pump-1/registration-lock", headers=OPERATOR).status_code == 204
    assert other.enroll(client, token).status_code == 201
    assert client.get("/devices/pump-1", headers=OPERATOR).json()["registration_lock"] is False


def test_registration_lock_needs_the_device_itself(client) -> None:  # type: ignore[no-untyped-def]
    device, other = TestDevice("pump-1"), TestDevice("pump-2")
    device.register(client)
    other.register(client)
    body = b'{"pin": "12345"}'
    path = "/me/registration-lock"
    assert client.put(path, content=body, headers={"Content-Type": "application/json"}).status_code == 401
    forged = device.headers("PUT", path, body, signer=other.store)
    assert client.put(path, content=body, headers={"Content-Type": "application/json", **forged}).status_code == 401
    ok = device.headers("PUT", path, body)
    assert client.put(path, content=body, headers={"Content-Type": "application/json", **ok}).status_code == 204
    # a replayed request is refused
    assert client.put(path, content=body, headers={"Content-Type": "application/json", **ok}).status_code == 409
    short = b'{"pin": "12"}'
    r = client.put(path, content=short, headers={"Content-Type": "application/json",
                                                 **device.headers("PUT", path, short)})
    assert r.status_code == 422
    assert client.delete(path, headers=device.headers("DELETE", path)).status_code == 204
    assert client.get("/devices/pump-1", headers=OPERATOR).json()["registration_lock"] is False
