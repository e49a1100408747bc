"""Enrollment claims (api/routes/claims.py) and operator authentication, both engines."""
from __future__ import annotations

import hashlib

import pytest
from service_support import OPERATOR, TestDevice, create_claim, dump_tables, metric

from e2ee_provisioning.api.routes.claims import on_claim_revoked
from e2ee_provisioning.core.broker import BrokerError
from e2ee_provisioning.models import ClaimPublic, EnrollmentClaim


def test_create_single_use_and_batch_claims(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/claims", headers=OPERATOR, json={"fleet": "plant-north", "label": "line 3", "count": 3})
    assert r.status_code == 201, r.text
    single = r.json()
    assert len(single["tokens"]) == len(set(single["tokens"])) == 3
    # "e2c_" + 32 random bytes: a scanner finds leaked ones, a command line never takes one for an option
    assert all(t.startswith("e2c_") and len(t) == 4 + 43 for t in single["tokens"])
    assert [c["quota"] for c in single["claims"]] == [1, 1, 1]
    r = client.post("/claims", headers=OPERATOR, json={"fleet": "plant-south", "quota": 500, "expires_in": 3600})
    assert r.status_code == 201, r.text
    batch = r.json()["claims"][0]
    assert (batch["quota"], batch["used"], batch["fleet"]) == (500, 0, "plant-south")

    listed = client.get("/claims", headers=OPERATOR).json()
    assert [c["id"] for c in listed] == [c["id"] for c in single["claims"]] + [batch["id"]]
    assert [c["fleet"] for c in client.get("/claims?fleet=plant-south", headers=OPERATOR).json()] == ["plant-south"]
    assert all("token" not in c for c in listed)
    # tokens at rest are SHA-256 hashes only
    rows = dump_tables(client.app.state.engine)["enrollment_claims"]
    text = repr(rows)
    for token in single["tokens"]:
        assert token not in text
        assert hashlib.sha256(token.encode()).hexdigest() in text


@pytest.mark.parametrize("body", [
    {"fleet": "plant-north", "quota": 0},
    {"fleet": "plant-north", "expires_in": 10},
    {"fleet": "plant-north", "expires_in": 10**9},
    {"fleet": "plant-north", "count": 101},
    {"fleet": "bad fleet name"},
    {},
])
def test_invalid_claim_requests_are_422_and_change_nothing(client, body) -> None:  # type: ignore[no-untyped-def]
    before = dump_tables(client.app.state.engine)
    r = client.post("/claims", headers=OPERATOR, json=body)
    assert r.status_code == 422
    assert dump_tables(client.app.state.engine) == before


OPERATOR_ENDPOINTS = [("POST", "/claims", {"fleet": "plant-north"}), ("GET", "/claims", None),
                      ("POST", "/claims/1/revoke", {"reason": "r"}),
                      ("POST", "/devices/x/revoke", {"reason": "r"}), ("DELETE", "/devices/x/registration-lock", None),
                      ("GET", "/devices", None), ("GET", "/devices/x", None), ("GET", "/keys/x/bundle", None),
                      ("GET", "/keys/x/inventory", None)]


@pytest.mark.parametrize("method,path,body", OPERATOR_ENDPOINTS)
def test_operator_auth_missing_is_401_wrong_is_403(client, method, path, body) -> None:  # type: ignore[no-untyped-def]
    before = dump_tables(client.app.state.engine)
    r = client.request(method, path, json=body)
    assert r.status_code == 401
    assert r.headers["www-authenticate"]
    for wrong in ("changethis", OPERATOR["X-API-Key"] + "x", OPERATOR["X-API-Key"][:-1], " "):
        r = client.request(method, path, json=body, headers={"X-API-Key": wrong})
        assert r.status_code == 403, (wrong, r.text)
    assert dump_tables(client.app.state.engine) == before


def test_revoked_claim_is_listed_and_never_spent_again(client) -> None:  # type: ignore[no-untyped-def]
    token = create_claim(client, quota=5)
    TestDevice("pump-1").enroll(client, token)
    claim = client.get("/claims", headers=OPERATOR).json()[0]
    assert claim["revoked_at"] is None and claim["used"] == 1
    r = client.post("/claims/%d/revoke" % claim["id"], headers=OPERATOR, json={"reason": "token leaked"})
    assert r.status_code == 200, r.text
    revoked = r.json()
    assert revoked["revoked_at"] and revoked["revoke_reason"] == "token leaked" and revoked["used"] == 1
    assert client.get("/claims", headers=OPERATOR).json() == [revoked]
    assert metric(client.get("/metrics").text, "e2ee_enrollment_claims_revoked_total", fleet="plant-north") == 1
    # the four enrollments left on the claim are gone: a typed 403, nothing written
    body = TestDevice("pump-2").enrollment_body(client, token)
    before = dump_tables(client.app.state.engine)
    r = client.post("/enroll", json=body)
    assert r.status_code == 403 and r.json()["detail"] == "enrollment claim is revoked"
    assert dump_tables(client.app.state.engine) == before
    # the device enrolled before keeps its certificate
    assert client.get("/devices/pump-1", headers=OPERATOR).json()["revoked"] is False
    # again: idempotent, the first time and reason stay, counted once
    again = client.post("/claims/%d/revoke" % claim["id"], headers=OPERATOR, json={"reason": "other"})
    assert again.status_code == 200 and again.json() == revoked
    assert metric(client.get("/metrics").text, "e2ee_enrollment_claims_revoked_total", fleet="plant-north") == 1


@pytest.mark.parametrize("path,code", [("/claims/999/revoke", 404), ("/claims/0/revoke", 422),
                                       ("/claims/%d/revoke" % 2**31, 422),
                                       ("/claims/%d/revoke" % (2**31 - 1), 404), ("/claims/x/revoke", 422)])
def test_revoking_an_unknown_claim_changes_nothing(client, path, code) -> None:  # type: ignore[no-untyped-def]
    create_claim(client)
    before = dump_tables(client.app.state.engine)
    r = client.post(path, headers=OPERATOR, json={})
    assert r.status_code == code, r.text
    assert dump_tables(client.app.state.engine) == before
    r = client.post("/claims/1/revoke", headers=OPERATOR, json={"reason": "x" * 129})
    assert r.status_code == 422 and dump_tables(client.app.state.engine) == before


def test_claim_revoked_hooks_run_after_the_revocation(client) -> None:  # type: ignore[no-untyped-def]
    """A hook (the service channel's claim credential) sees the committed revocation; a hook that
    fails is a 502 and a second revocation runs it again."""
    create_claim(client)
    seen: list[tuple[int, bool]] = []
    fail = [True]

    def hook(claim: ClaimPublic) -> None:
        with client.app.state.sessionmaker() as session:
            seen.append((claim.id, session.get(EnrollmentClaim, claim.id).revoked_at is not None))
        if fail[0]:
            raise BrokerError("broker down")

    on_claim_revoked(client.app, hook)
    r = client.post("/claims/1/revoke", headers=OPERATOR, json={})
    assert r.status_code == 502 and "revoke the claim again" in r.json()["detail"]
    fail[0] = False
    assert client.post("/claims/1/revoke", headers=OPERATOR, json={}).status_code == 200
    assert seen == [(1, True), (1, True)]
