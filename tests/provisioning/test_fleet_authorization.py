"""Authorization across fleets and replays of signed requests (issue 12, finding 10), both engines:
bundles only for the requester's fleet, owner names per fleet, every signed request single use."""
from __future__ import annotations

import json

from service_support import OPERATOR, TestDevice, b64
from sqlalchemy import text


def _inventory(client, device_id: str) -> int:  # type: ignore[no-untyped-def]
    return int(client.get("/keys/%s/inventory" % device_id, headers=OPERATOR).json()["one_time_prekeys"])


def test_finding10_bundle_fetch_needs_the_same_fleet(client) -> None:  # type: ignore[no-untyped-def]
    pump, peer = TestDevice("pump-1", one_time=5), TestDevice("gw-1")
    outsider = TestDevice("gw-9", fleet="plant-south")
    for d in (pump, peer, outsider):
        d.register(client)
    assert pump.upload(client).status_code == 200
    path = "/keys/pump-1/bundle"
    for _ in range(3):  # another fleet drains nothing and learns nothing (the same 404 as no device)
        r = client.get(path, headers=outsider.headers("GET", path))
        assert r.status_code == 404, r.text
        assert r.json() == client.get("/keys/nobody/bundle", headers=outsider.headers(
            "GET", "/keys/nobody/bundle")).json()
    assert _inventory(client, "pump-1") == 5
    r = client.get(path, headers=peer.headers("GET", path))
    assert r.status_code == 200 and r.json()["one_time_prekey"] is True
    assert client.get(path, headers=OPERATOR).status_code == 200
    assert _inventory(client, "pump-1") == 3


def test_finding10_owner_names_are_per_fleet(client) -> None:  # type: ignore[no-untyped-def]
    phone, valve = TestDevice("acme-phone"), TestDevice("acme-valve")
    intruder = TestDevice("acme-south", fleet="plant-south")
    for d in (phone, valve):
        d.register(client, owner="acme")
    intruder.register(client, owner="acme")  # the same owner name, in another fleet
    path = "/owners/acme/devices"

    def listed(device: TestDevice, query: str = "") -> list[str]:
        r = client.get(path + query, headers=device.headers("GET", path + query))
        assert r.status_code == 200, r.text
        return [d["device_id"] for d in r.json()]

    assert listed(intruder) == ["acme-south"]
    assert listed(intruder, "?fleet=plant-north") == ["acme-south"]  # a device cannot pick the fleet
    assert listed(phone) == ["acme-phone", "acme-valve"]
    ops = client.get(path + "?fleet=plant-north", headers=OPERATOR).json()
    assert [d["device_id"] for d in ops] == ["acme-phone", "acme-valve"]
    assert len(client.get(path, headers=OPERATOR).json()) == 3
    revoke = "/owners/acme/devices/acme-valve/revoke"
    body = b'{"reason": "taken over"}'
    r = client.post(revoke, content=body, headers={"Content-Type": "application/json",
                                                   **intruder.headers("POST", revoke, body)})
    assert r.status_code == 404, r.text
    assert client.get("/devices/acme-valve", headers=OPERATOR).json()["revoked"] is False
    r = client.post(revoke, content=body, headers={"Content-Type": "application/json",
                                                   **phone.headers("POST", revoke, body)})
    assert r.status_code == 200, r.text


class InboxBroker:
    """Stands in for the broker: records the envelopes the relay publishes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, str, bytes]] = []

    def publish_inbox(self, fleet: str, to: str, sender: str, envelope: bytes) -> None:
        self.published.append((fleet, to, sender, envelope))


def test_finding10_signed_requests_are_single_use(client) -> None:  # type: ignore[no-untyped-def]
    pump, peer = TestDevice("pump-1", one_time=5), TestDevice("gw-1")
    for d in (pump, peer):
        d.register(client)
    assert pump.upload(client).status_code == 200
    # a captured bundle fetch, replayed within the 300 s window: refused, no second one-time prekey
    path = "/keys/pump-1/bundle"
    captured = peer.headers("GET", path)
    assert client.get(path, headers=captured).status_code == 200
    for _ in range(3):
        r = client.get(path, headers=captured)
        assert r.status_code == 409 and "replay" in r.text, r.text
    assert _inventory(client, "pump-1") == 4
    # a signed read and a relayed message: the same
    inventory = "/keys/pump-1/inventory"
    captured = pump.headers("GET", inventory)
    assert client.get(inventory, headers=captured).status_code == 200
    assert client.get(inventory, headers=captured).status_code == 409
    broker = InboxBroker()
    client.app.state.broker = broker
    body = json.dumps({"to": "pump-1", "envelope": b64(b"\x01" * 40)}).encode()
    captured = {"Content-Type": "application/json", **peer.headers("POST", "/relay/messages", body)}
    assert client.post("/relay/messages", content=body, headers=captured).status_code == 202
    assert client.post("/relay/messages", content=body, headers=captured).status_code == 409
    assert len(broker.published) == 1
    # a new signature of the same request is a new request
    assert client.get(path, headers=peer.headers("GET", path)).status_code == 200
    # records leave once outside the window (their replays fail on the timestamp then)
    engine = client.app.state.engine
    with engine.begin() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM signed_requests")).scalar_one() == 5
        conn.execute(text("UPDATE signed_requests SET expires_at = 0"))
    assert client.get(inventory, headers=pump.headers("GET", inventory)).status_code == 200
    with engine.begin() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM signed_requests")).scalar_one() == 1
