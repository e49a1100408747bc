"""Enrollment claims (api/routes/claims.py) and operator authentication, both engines."""
from __future__ import annotations

import hashlib

import pytest
from service_support import OPERATOR, dump_tables


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
