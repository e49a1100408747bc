"""Operator device registration (api/routes/devices.py), both engines."""
from __future__ import annotations

import base64

from service_support import OPERATOR, TestDevice, dump_tables


def test_register_get_and_list_devices(client) -> None:  # type: ignore[no-untyped-def]
    a, b = TestDevice("pump-1"), TestDevice("pump-2", fleet="plant-south")
    info = a.register(client)
    b.register(client)
    assert info["fingerprint"] == a.store.fingerprint().hex()
    assert base64.b64decode(info["ik_pub"]) == a.store.ik_pub and info["revoked"] is False
    assert client.get("/devices/pump-1", headers=OPERATOR).json() == info
    assert [d["device_id"] for d in client.get("/devices", headers=OPERATOR).json()] == ["pump-1", "pump-2"]
    assert [d["device_id"] for d in client.get("/devices?fleet=plant-south", headers=OPERATOR).json()] == ["pump-2"]
    assert client.get("/devices/pump-9", headers=OPERATOR).status_code == 404


def test_duplicate_or_malformed_registrations_change_nothing(client) -> None:  # type: ignore[no-untyped-def]
    a = TestDevice("pump-1")
    a.register(client)
    before = dump_tables(client.app.state.engine)
    other = TestDevice("pump-2")
    good = {"device_id": "pump-2", "fleet": "f1", "ik_pub": base64.b64encode(other.store.ik_pub).decode(),
            "is_pub": base64.b64encode(other.store.is_pub).decode()}
    cases = [
        ({**good, "device_id": "pump-1"}, 409),  # id taken
        ({**good, "is_pub": base64.b64encode(a.store.is_pub).decode()}, 409),  # identity taken
        ({**good, "ik_pub": base64.b64encode(b"\x01" * 31).decode()}, 422),  # 31-byte key
        ({**good, "is_pub": "not base64!"}, 422),
        ({**good, "device_id": "x" * 65}, 422),
        ({**good, "device_id": "has space"}, 422),
    ]
    for body, code in cases:
        r = client.post("/devices", headers=OPERATOR, json=body)
        assert r.status_code == code, (body, r.text)
    assert dump_tables(client.app.state.engine) == before
