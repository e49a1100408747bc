"""Enrollment with attestation (api/routes/enrollment.py), both engines: claims spent once,
proof of possession over a fresh challenge, hardware binding evidence, certificates that the
device package verifies, and every refusal a clear 4xx that changes nothing."""
from __future__ import annotations

import base64
import binascii
import json
import time
from pathlib import Path
from typing import Any

import pytest
from service_support import OPERATOR, TestDevice, b64, create_claim, dump_tables
from sqlalchemy import text
from support import DEVICE_TESTS

from e2ee.protocol import certificate, enrollment, keys
from e2ee.protocol.keys import KeyStore
from e2ee_host.fleet_ca import FileCAKeystore, issue_certificate

FACTORY_KEY = bytes(range(32))


@pytest.fixture
def settings(settings):  # type: ignore[no-untyped-def]
    settings.factory_keys = type(settings.factory_keys)(FACTORY_KEY.hex())
    return settings


def _verify(result: dict[str, Any], now: int | None = None) -> certificate.Certificate:
    trusted = [base64.b64decode(k) for k in result["ca_keys"]]
    crl = certificate.verify_revocation_list(base64.b64decode(result["revocation_list"]), trusted, 0)
    return certificate.verify_certificate(base64.b64decode(result["certificate"]), trusted,
                                          int(time.time()) if now is None else now, crl)


def test_enrollment_issues_a_certificate_the_device_verifies(client) -> None:  # type: ignore[no-untyped-def]
    device = TestDevice("pump-1")
    token = create_claim(client, owner="acme", roles=["pumps", "north"])
    r = device.enroll(client, token)
    assert r.status_code == 201, r.text
    result = r.json()
    cert = _verify(result)
    assert (cert.device_id, cert.fleet, cert.roles) == ("pump-1", "plant-north", ("pumps", "north"))
    assert (cert.identity_dh, cert.identity_sign) == (device.store.ik_pub, device.store.is_pub)
    assert cert.serial.hex() == result["serial"] and cert.not_after == result["not_after"]
    assert result["mqtt"] is None  # this service drives no broker
    ca = client.get("/ca").json()["keys"]
    assert [k["public_key"] for k in ca] == result["ca_keys"] and ca[0]["active"]
    info = client.get("/devices/pump-1", headers=OPERATOR).json()
    assert info["owner"] == "acme" and info["roles"] == ["pumps", "north"]
    assert info["certificate_serial"] == result["serial"] and info["fingerprint"] == device.store.fingerprint().hex()
    status = client.get("/certificates/" + result["serial"], headers=OPERATOR).json()
    assert status["status"] == "good" and status["device_id"] == "pump-1"
    claims = client.get("/claims", headers=OPERATOR).json()
    assert claims[0]["used"] == 1 and claims[0]["owner"] == "acme"


def test_device_list_per_owner_and_batch_claim_quota(client) -> None:  # type: ignore[no-untyped-def]
    token = create_claim(client, owner="acme", quota=2)
    for name in ("pump-1", "pump-2"):
        assert TestDevice(name).enroll(client, token).status_code == 201
    assert TestDevice("pump-3").register(client, owner="globex")["device_id"] == "pump-3"
    before = dump_tables(client.app.state.engine)
    late = TestDevice("pump-4")
    body = late.enrollment_body(client, token)
    before = dump_tables(client.app.state.engine)
    r = client.post("/enroll", json=body)
    assert r.status_code == 403 and "used up" in r.text
    assert dump_tables(client.app.state.engine) == before
    ids = [d["device_id"] for d in client.get("/devices?owner=acme", headers=OPERATOR).json()]
    assert ids == ["pump-1", "pump-2"]
    assert [d["device_id"] for d in client.get("/devices?owner=globex", headers=OPERATOR).json()] == ["pump-3"]


def _expire_claims(client) -> None:  # type: ignore[no-untyped-def]
    with client.app.state.engine.begin() as conn:
        conn.execute(text("UPDATE enrollment_claims SET expires_at = :t"), {"t": "2001-01-01 00:00:00+00:00"})


def _case_reused(client, device, token):  # type: ignore[no-untyped-def]
    TestDevice("first").enroll(client, token)
    return device.enrollment_body(client, token), 403, "used up"


def _case_expired(client, device, token):  # type: ignore[no-untyped-def]
    _expire_claims(client)
    return device.enrollment_body(client, token), 403, "expired"


def _case_revoked_claim(client, device, token):  # type: ignore[no-untyped-def]
    claim_id = client.get("/claims", headers=OPERATOR).json()[-1]["id"]
    assert client.post("/claims/%d/revoke" % claim_id, headers=OPERATOR, json={"reason": "leaked"}).status_code == 200
    return device.enrollment_body(client, token), 403, "enrollment claim is revoked"


def _case_unknown_claim(client, device, token):  # type: ignore[no-untyped-def]
    return device.enrollment_body(client, "x" * 43), 403, "unknown enrollment claim"


def _case_other_fleet(client, device, token):  # type: ignore[no-untyped-def]
    other = TestDevice("pump-9", fleet="plant-south")
    other.store = device.store
    return other.enrollment_body(client, token), 403, "another fleet"


def _case_wrong_signer(client, device, token):  # type: ignore[no-untyped-def]
    body = device.enrollment_body(client, token)
    body["is_pub"] = b64(KeyStore.generate().is_pub)  # proof made by another key than the one enrolled
    return body, 401, "proof of possession"


def _case_proof_for_other_challenge(client, device, token):  # type: ignore[no-untyped-def]
    body = device.enrollment_body(client, token)
    body["challenge"] = client.post("/enroll/challenge").json()["challenge"]
    return body, 401, "proof of possession"


def _case_proof_for_other_device_id(client, device, token):  # type: ignore[no-untyped-def]
    return device.enrollment_body(client, token, device_id="pump-2"), 401, "proof of possession"


def _case_unknown_challenge(client, device, token):  # type: ignore[no-untyped-def]
    body = device.enrollment_body(client, token)
    body["challenge"] = b64(b"\x07" * 32)
    return body, 401, "challenge"


def _case_expired_challenge(client, device, token):  # type: ignore[no-untyped-def]
    body = device.enrollment_body(client, token)
    with client.app.state.engine.begin() as conn:
        conn.execute(text("UPDATE enrollment_challenges SET expires_at = :t"), {"t": "2001-01-01 00:00:00+00:00"})
    return body, 401, "challenge"


def _case_identity_taken(client, device, token):  # type: ignore[no-untyped-def]
    twin = TestDevice("pump-2")
    twin.store = device.store
    twin.register(client)
    return device.enrollment_body(client, token), 409, "another device"


def _case_revoked_identity(client, device, token):  # type: ignore[no-untyped-def]
    twin = TestDevice("pump-1")
    twin.store = device.store
    twin.register(client)
    assert client.post("/devices/pump-1/revoke", headers=OPERATOR, json={"reason": "stolen"}).status_code == 200
    return device.enrollment_body(client, token), 403, "revoked"


def _case_revoked_keys_new_id(client, device, token):  # type: ignore[no-untyped-def]
    twin = TestDevice("pump-7")
    twin.store = device.store
    twin.register(client)
    assert client.post("/devices/pump-7/revoke", headers=OPERATOR, json={}).status_code == 200
    return device.enrollment_body(client, token), 403, "revoked"


NEGATIVE = {
    "reused_claim": _case_reused, "expired_claim": _case_expired, "revoked_claim": _case_revoked_claim,
    "unknown_claim": _case_unknown_claim,
    "claim_of_other_fleet": _case_other_fleet, "wrong_pop_signer": _case_wrong_signer,
    "pop_over_other_challenge": _case_proof_for_other_challenge,
    "pop_for_other_device_id": _case_proof_for_other_device_id, "unknown_challenge": _case_unknown_challenge,
    "expired_challenge": _case_expired_challenge, "identity_key_taken": _case_identity_taken,
    "revoked_identity": _case_revoked_identity, "revoked_keys_under_new_id": _case_revoked_keys_new_id,
}


@pytest.mark.parametrize("case", NEGATIVE)
def test_refused_enrollments_are_clear_and_change_nothing(client, case) -> None:  # type: ignore[no-untyped-def]
    device = TestDevice("pump-1")
    token = create_claim(client)
    body, code, words = NEGATIVE[case](client, device, token)
    before = dump_tables(client.app.state.engine)
    r = client.post("/enroll", json=body)
    assert r.status_code == code, r.text
    assert words in r.json()["detail"]
    assert dump_tables(client.app.state.engine) == before


MALFORMED = [
    ("ik_pub", "AAAA"), ("is_pub", "not base64!"), ("proof", b64(b"\x01" * 63)), ("device_id", "has space"),
    ("device_id", "x" * 65), ("fleet", "a/b"), ("claim_token", "x" * 129), ("challenge", b64(b"\x01" * 31)),
    ("board_uid", b64(b"\x01" * 33)), ("registration_lock_pin", "1"), ("claim_token", None),
]


@pytest.mark.parametrize("field,value", MALFORMED, ids=["%s-%d" % (f, i) for i, (f, _) in enumerate(MALFORMED)])
def test_malformed_enrollments_are_422_and_change_nothing(client, field, value) -> None:  # type: ignore[no-untyped-def]
    body = TestDevice("pump-1").enrollment_body(client, create_claim(client))
    if value is None:
        del body[field]
    else:
        body[field] = value
    before = dump_tables(client.app.state.engine)
    r = client.post("/enroll", json=body)
    assert r.status_code == 422, r.text
    assert field in r.text
    assert dump_tables(client.app.state.engine) == before


def test_oversized_and_non_json_enrollments(client) -> None:  # type: ignore[no-untyped-def]
    body = TestDevice("pump-1").enrollment_body(client, create_claim(client))
    before = dump_tables(client.app.state.engine)
    big = dict(body, padding="x" * 40_000)
    assert client.post("/enroll", json=big).status_code == 413
    assert client.post("/enroll", content=b"{not json", headers={"Content-Type": "application/json"}).status_code \
        in (400, 422)
    assert dump_tables(client.app.state.engine) == before


def test_hardware_binding_evidence(client) -> None:  # type: ignore[no-untyped-def]
    uid = bytes.fromhex("a1b2c3d4e5f6")
    key = enrollment.board_key(FACTORY_KEY, uid)
    token = create_claim(client, require_hardware=True, quota=5)
    device = TestDevice("pump-1")
    cases = [({}, 403, "requires hardware"),
             ({"board_uid": uid, "board_key": enrollment.board_key(bytes(32), uid)}, 403, "does not verify"),
             ({"board_uid": bytes.fromhex("a1b2c3d4e5f7"), "board_key": key}, 403, "does not verify")]
    for kw, code, words in cases:
        body = device.enrollment_body(client, token, **kw)
        before = dump_tables(client.app.state.engine)
        r = client.post("/enroll", json=body)
        assert (r.status_code, words in r.text) == (code, True), r.text
        assert dump_tables(client.app.state.engine) == before
    body = device.enrollment_body(client, token, board_uid=uid, board_key=key)
    body_half = dict(body)
    del body_half["evidence"]
    assert client.post("/enroll", json=body_half).status_code == 422
    assert client.post("/enroll", json=body).status_code == 201
    assert base64.b64decode(client.get("/devices/pump-1", headers=OPERATOR).json()["board_uid"]) == uid
    # the same board cannot carry a second identity (a cloned board)
    clone = TestDevice("pump-2")
    r = clone.enroll(client, token, board_uid=uid, board_key=key)
    assert r.status_code == 409 and "board" in r.text


def test_hardware_evidence_without_factory_key_is_503(client) -> None:  # type: ignore[no-untyped-def]
    client.app.state.settings.factory_keys = type(client.app.state.settings.factory_keys)("")
    uid = b"\x01\x02\x03\x04\x05\x06"
    r = TestDevice("pump-1").enroll(client, create_claim(client), board_uid=uid,
                                    board_key=enrollment.board_key(FACTORY_KEY, uid))
    assert r.status_code == 503 and "factory key" in r.text


def test_forged_certificates_fail_on_the_device_side(client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = TestDevice("pump-1").register(client)
    trusted = [base64.b64decode(k) for k in result["ca_keys"]]
    genuine = base64.b64decode(result["certificate"])
    forged = bytearray(genuine)
    forged[-1] ^= 1  # the signature's last byte
    with pytest.raises(certificate.BadSignature):
        certificate.verify_certificate(bytes(forged), trusted, int(time.time()))
    rogue = issue_certificate(FileCAKeystore(tmp_path / "rogue.json"), device_id="pump-1", fleet="plant-north",
                              identity_dh=b"\x01" * 32, identity_sign=b"\x02" * 32, not_before=0, not_after=2**40)
    with pytest.raises(certificate.UnknownIssuer):
        certificate.verify_certificate(rogue, trusted, int(time.time()))


def test_renewal_with_the_same_keys_keeps_the_old_certificate(client) -> None:  # type: ignore[no-untyped-def]
    device = TestDevice("pump-1")
    first = device.register(client)
    second = device.register(client)
    assert first["serial"] != second["serial"]
    for serial in (first["serial"], second["serial"]):
        assert client.get("/certificates/" + serial, headers=OPERATOR).json()["status"] == "good"


def test_enrollment_rate_limit(client) -> None:  # type: ignore[no-untyped-def]
    buckets = client.app.state.enroll_buckets
    buckets.capacity, buckets.per_second = 3, 0.001
    buckets._buckets.clear()
    codes = [client.post("/enroll/challenge").status_code for _ in range(5)]
    assert codes == [201, 201, 201, 429, 429]
    r = client.post("/enroll", json={})
    assert r.status_code == 429 and r.headers["retry-after"]


class RecordingBroker:
    """Stands in for the broker admin (the Mosquitto dynamic-security one is tested with a real
    broker in tests/broker): records what the service asked of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def provision_device(self, fleet: str, device_id: str, password: str) -> None:
        self.calls.append(("provision", fleet, device_id, password))

    def revoke_device(self, device_id: str) -> None:
        self.calls.append(("revoke", device_id))

    def publish_revocation_list(self, fleet: str, data: bytes) -> None:
        self.calls.append(("crl", fleet, len(data)))

    def remove_claim(self, fleet: str, claim_id: int) -> None:
        self.calls.append(("remove-claim", fleet, str(claim_id)))


def test_enrollment_and_revocation_drive_the_broker(client) -> None:  # type: ignore[no-untyped-def]
    broker = RecordingBroker()
    client.app.state.broker = broker
    client.app.state.settings.mqtt_host = "broker.example"
    result = TestDevice("pump-1").register(client)
    mqtt = result["mqtt"]
    assert (mqtt["host"], mqtt["username"], mqtt["client_id"]) == ("broker.example", "pump-1", "pump-1")
    assert len(mqtt["password"]) >= 32
    # the single-use claim is spent: its broker credential (zero-touch enrollment) goes too
    assert broker.calls[0] == ("provision", "plant-north", "pump-1", mqtt["password"])
    assert broker.calls[1][:2] == ("remove-claim", "plant-north") and len(broker.calls) == 2
    assert client.post("/devices/pump-1/revoke", headers=OPERATOR, json={}).status_code == 200
    assert broker.calls[-2] == ("revoke", "pump-1") and broker.calls[-1][:2] == ("crl", "plant-north")
    assert mqtt["password"] not in json.dumps(client.get("/devices/pump-1", headers=OPERATOR).json())
    # a claim of two uses keeps its credential after the first, loses it with the second
    token = create_claim(client, quota=2)
    assert TestDevice("pump-2").enroll(client, token).status_code == 201
    assert broker.calls[-1][:3] == ("provision", "plant-north", "pump-2")
    assert TestDevice("pump-3").enroll(client, token).status_code == 201
    assert broker.calls[-1][:2] == ("remove-claim", "plant-north")


# --- the device package under MicroPython ---------------------------------------------------

def _device(micropython, *args: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return json.loads(micropython.run(DEVICE_TESTS / "enroll_device.py", *args).strip().splitlines()[-1])


def test_full_enrollment_of_a_micropython_device(client, micropython, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Keys generated on the device (MicroPython, kept on its flash), claim + challenge + proof +
    hardware evidence, certificate and revocation list verified on the device, prekeys uploaded
    with signed requests, a bundle fetched, replenishment, then revocation seen by the device."""
    flash, skey = str(tmp_path / "flash"), "42" * 32
    uid = bytes.fromhex("0011223344556677")
    board_key = enrollment.board_key(FACTORY_KEY, uid)
    public = _device(micropython, "keys", flash, skey, "3")
    token = create_claim(client, require_hardware=True, roles=["sensors"])
    challenge = base64.b64decode(client.post("/enroll/challenge").json()["challenge"])
    fields = _device(micropython, "prove", flash, skey, challenge.hex(), token, "meter-7", "plant-north",
                     uid.hex(), board_key.hex())
    assert fields["ik_pub"] == public["ik_pub"] and set(fields) == {"ik_pub", "is_pub", "proof", "board_uid",
                                                                      "evidence"}
    r = client.post("/enroll", json={"claim_token": token, "challenge": b64(challenge), "device_id": "meter-7",
                                     "fleet": "plant-north", **fields})
    assert r.status_code == 201, r.text
    result = r.json()
    cert_file, crl_file = tmp_path / "cert.bin", tmp_path / "crl.bin"
    cert_file.write_bytes(base64.b64decode(result["certificate"]))
    crl_file.write_bytes(base64.b64decode(result["revocation_list"]))
    ca_keys = b"".join(base64.b64decode(k) for k in result["ca_keys"]).hex()
    now = str(int(time.time()))
    seen = _device(micropython, "verify", str(cert_file), str(crl_file), ca_keys, now, "0")
    assert seen == {"device_id": "meter-7", "serial": result["serial"], "roles": ["sensors"], "crl_version": 1,
                    "revoked": 0}

    def upload(spk: str, new: str) -> dict[str, Any]:
        ts = str(int(time.time()) + len(upload_log))  # strictly newer on each call
        signed = _device(micropython, "upload", flash, skey, "/keys", ts, "meter-7", spk, new)
        upload_log.append(ts)
        r = client.post("/keys", content=signed["body"].encode(), headers={
            "Content-Type": "application/json", "X-E2EE-Device": "meter-7", "X-E2EE-Timestamp": ts,
            "X-E2EE-Signature": signed["signature"]})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    upload_log: list[str] = []
    inventory = upload("1", "0")
    assert inventory["one_time_prekeys"] == 3 and inventory["replenish"] is True
    peer = TestDevice("gateway-1")
    peer.register(client)
    got = client.get("/keys/meter-7/bundle", headers=peer.headers("GET", "/keys/meter-7/bundle")).json()
    assert got["one_time_prekey"] is True
    inventory = upload("0", "12")  # replenish: 12 new one-time prekeys
    assert inventory["one_time_prekeys"] == 14 and inventory["replenish"] is False

    revoked = client.post("/devices/meter-7/revoke", headers=OPERATOR, json={"reason": "decommissioned"}).json()
    assert revoked["revoked_serials"] == [result["serial"]] and revoked["revocation_list_version"] == 2
    crl_file.write_bytes(base64.b64decode(client.get("/revocations").json()["revocation_list"]))
    assert _device(micropython, "verify", str(cert_file), str(crl_file), ca_keys, now, "1") == {"error": "Revoked"}
    # rollback protection: the device holding list 2 refuses it as "new"
    assert _device(micropython, "verify", str(cert_file), str(crl_file), ca_keys, now, "2") == {
        "error": "RolledBack"}
    assert binascii.unhexlify(result["serial"])


# --- issue 12, finding 4: re-registration of an enrolled device id ----------------------------

def _lock_failures(client, device_id: str) -> int:  # type: ignore[no-untyped-def]
    with client.app.state.engine.connect() as conn:
        return int(conn.execute(text("SELECT lock_failures FROM devices WHERE device_id = :d"),
                                {"d": device_id}).scalar_one())


def test_finding4_re_registration_needs_the_owner_or_an_operator(client):  # type: ignore[no-untyped-def]
    engine = client.app.state.engine
    owned = TestDevice("pump-1")
    first = owned.register(client, owner="acme")
    stranger = TestDevice("pump-1")
    stranger.store = KeyStore.generate()
    for token in (create_claim(client, owner="globex"), create_claim(client)):
        body = stranger.enrollment_body(client, token)
        before = dump_tables(engine)
        r = client.post("/enroll", json=body)
        assert r.status_code == 403 and "owner" in r.text, r.text
        assert dump_tables(engine) == before
    # a locked device: a stranger's wrong PINs are refused before they count (the lock is not burned)
    pin = b'{"pin": "4711-2342"}'
    headers = {"Content-Type": "application/json", **owned.headers("PUT", "/me/registration-lock", pin)}
    assert client.put("/me/registration-lock", content=pin, headers=headers).status_code == 204
    globex = create_claim(client, owner="globex", quota=20)
    for _ in range(client.app.state.settings.registration_lock_attempts + 1):
        r = stranger.enroll(client, globex, registration_lock_pin="0000")
        assert r.status_code == 403, r.text
    assert _lock_failures(client, "pump-1") == 0
    bad_key = stranger.enrollment_body(client, create_claim(client))
    assert client.post("/enroll", json=bad_key, headers={"X-API-Key": "not-the-key"}).status_code == 403
    # the owner's claim with the PIN re-registers; the old certificate is superseded
    reflashed = TestDevice("pump-1")
    reflashed.store = KeyStore.generate()
    r = reflashed.enroll(client, create_claim(client, owner="acme"), registration_lock_pin="4711-2342")
    assert r.status_code == 201, r.text
    assert client.get("/certificates/" + first["serial"], headers=OPERATOR).json()["status"] == "revoked"
    # an owner-less device: only an operator re-registers it
    orphan = TestDevice("meter-2")
    orphan.register(client)
    orphan.store = KeyStore.generate()
    assert orphan.enroll(client, create_claim(client)).status_code == 403
    body = orphan.enrollment_body(client, create_claim(client, owner="acme"))
    assert client.post("/enroll", json=body).status_code == 403
    r = client.post("/enroll", json=body, headers=OPERATOR)
    assert r.status_code == 201, r.text
    assert client.get("/devices/meter-2", headers=OPERATOR).json()["owner"] == "acme"


def test_finding4_re_registration_needs_the_recorded_board(client) -> None:  # type: ignore[no-untyped-def]
    engine = client.app.state.engine
    uid, other_uid = bytes.fromhex("c0ffee000001"), bytes.fromhex("c0ffee000002")
    device = TestDevice("valve-3")
    token = create_claim(client, owner="acme", quota=10)
    r = device.enroll(client, token, board_uid=uid, board_key=enrollment.board_key(FACTORY_KEY, uid))
    assert r.status_code == 201, r.text
    device.store = KeyStore.generate()  # new keys for valve-3, from the owner's claim
    other_board = {"board_uid": other_uid, "board_key": enrollment.board_key(FACTORY_KEY, other_uid)}
    cases = [({}, {}), (other_board, {}), ({}, OPERATOR)]  # no board, another genuine board, an operator
    for kw, headers in cases:
        body = device.enrollment_body(client, token, **kw)
        before = dump_tables(engine)
        r = client.post("/enroll", json=body, headers=headers)
        assert r.status_code == 403 and "board" in r.text, r.text
        assert dump_tables(engine) == before
    # the recorded board's evidence over the new identity re-registers
    r = device.enroll(client, token, board_uid=uid, board_key=enrollment.board_key(FACTORY_KEY, uid))
    assert r.status_code == 201, r.text
    assert base64.b64decode(r.json()["certificate"]) and client.get(
        "/devices/valve-3", headers=OPERATOR).json()["ik_pub"] == b64(device.store.ik_pub)


# --- issue 12, finding 7: public keys in their one canonical encoding -------------------------

_P = 2**255 - 19


def _flip_bit_255(key: bytes) -> bytes:
    return key[:31] + bytes((key[31] ^ 0x80,))


def test_finding7_service_refuses_non_canonical_identity_key(client) -> None:  # type: ignore[no-untyped-def]
    """X25519 ignores bit 255 and reduces u mod p: an identity or prekey sent in another encoding
    is the same key under a second byte string (and passes byte-wise duplicate checks). Enrollment
    and key upload take the canonical encoding only: 422, nothing stored, claim not spent."""
    engine = client.app.state.engine
    device = TestDevice("pump-1", one_time=2)
    token = create_claim(client)

    def enroll_as(ik_pub: bytes, is_pub: bytes):  # type: ignore[no-untyped-def]
        body = device.enrollment_body(client, token)
        challenge = base64.b64decode(body["challenge"])
        message = enrollment.proof_message(challenge, enrollment.claim_hash(token), "pump-1", "plant-north",
                                           ik_pub, is_pub, b"")
        body.update(ik_pub=b64(ik_pub), is_pub=b64(is_pub), proof=b64(device.store.sign(message)))
        before = dump_tables(engine)
        r = client.post("/enroll", json=body)
        after = dump_tables(engine)
        assert after == before | {"enrollment_challenges": after["enrollment_challenges"]}
        return r

    ik, ed = device.store.ik_pub, device.store.is_pub
    for ik_pub, is_pub in ((_flip_bit_255(ik), ed), ((_P + 2).to_bytes(32, "little"), ed),
                           (ik, (_P + 1).to_bytes(32, "little")), (ik, b"\x01" + bytes(30) + b"\x80")):
        r = enroll_as(ik_pub, is_pub)
        assert r.status_code == 422 and "canonical" in r.text, r.text
    assert client.get("/claims", headers=OPERATOR).json()[0]["used"] == 0
    assert device.enroll(client, token).status_code == 201
    # prekeys: a signed prekey (validly signed over its aliased encoding) and a one-time prekey
    bundle = device.store.bundle()
    aliased = _flip_bit_255(bundle.spk_pub)
    spk = {"spk_id": bundle.spk_id, "spk_pub": b64(aliased),
           "spk_sig": b64(device.store.sign(keys.spk_signature_message(ik, bundle.spk_id, aliased)))}
    opks = device.one_time_prekeys()
    opks[1]["opk_pub"] = b64(_flip_bit_255(base64.b64decode(opks[1]["opk_pub"])))
    for body in ({"signed_prekey": spk, "one_time_prekeys": []},
                 {"signed_prekey": device.signed_prekey(), "one_time_prekeys": opks}):
        before = dump_tables(engine)
        r = device.post(client, "/keys", json.dumps(body).encode())
        assert r.status_code == 422 and "canonical" in r.text, r.text
        assert dump_tables(engine) == before
    assert device.upload(client).status_code == 200
