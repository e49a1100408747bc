"""Relay acknowledgements name what was fetched, and relay ids are never reused (issue 13, item 5;
docs/broker.md, "Relay"), on SQLite and PostgreSQL. Envelopes enter as the service's admin client
stores them (RelayBridge.on_inbox, what the broker's inbox delivers); the client side is the HTTP
API, signed by an enrolled device."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from service_support import TestDevice
from sqlalchemy import select

from e2ee.transport import topics
from e2ee_provisioning.core.relay import RelayBridge
from e2ee_provisioning.main import create_app
from e2ee_provisioning.models import Device, RelayClient, RelayMessage

FLEET = "plant-north"


def _relay_client(client: TestClient, device_id: str) -> TestDevice:
    """An enrolled device registered as a relay client (as POST /relay/register does; this
    service drives no broker, so it answers that route 503)."""
    dev = TestDevice(device_id)
    dev.register(client)
    with client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        device_pk = session.scalar(select(Device.id).where(Device.device_id == device_id))
        session.add(RelayClient(device_pk=device_pk))
        session.commit()
    return dev


def _store(client: TestClient, device_id: str, *envelopes: bytes) -> None:
    bridge = RelayBridge(client.app.state.sessionmaker)  # type: ignore[attr-defined]
    for envelope in envelopes:
        bridge.on_inbox(FLEET, device_id, topics.frame("pump-1", envelope))


def _fetch(client: TestClient, dev: TestDevice, after: int = 0) -> list[dict[str, Any]]:
    target = "/relay/messages?after=%d" % after
    r = client.get(target, headers=dev.headers("GET", target))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _ack(client: TestClient, dev: TestDevice, query: str) -> Any:
    target = "/relay/messages" + ("?" + query if query else "")
    return client.delete(target, headers=dev.headers("DELETE", target))


def _envelopes(page: list[dict[str, Any]]) -> list[str]:
    return [m["envelope"] for m in page]  # base64 of b"one" etc.


def test_an_acknowledgement_removes_exactly_the_named_envelopes(client: TestClient) -> None:
    web = _relay_client(client, "web-1")
    other = _relay_client(client, "web-2")
    _store(client, "web-1", b"one", b"two")
    _store(client, "web-2", b"theirs")
    fetched = _fetch(client, web)
    assert _envelopes(fetched) == ["b25l", "dHdv"]
    _store(client, "web-1", b"three")  # arrives after the fetch
    [theirs] = _fetch(client, other)

    # the client handled only "one": "two" and the later "three" stay
    assert _ack(client, web, "id=%d" % fetched[0]["id"]).status_code == 204
    assert _envelopes(_fetch(client, web)) == ["dHdv", "dGhyZWU="]
    assert _ack(client, web, "id=%d" % fetched[0]["id"]).status_code == 204  # a retry: harmless
    # another device's id is not this device's to acknowledge
    assert _ack(client, web, "id=%d" % theirs["id"]).status_code == 204
    assert _envelopes(_fetch(client, other)) == ["dGhlaXJz"]

    # the retired range form says what to do instead and removes nothing
    r = _ack(client, web, "up_to=%d" % (fetched[1]["id"] + 10))
    assert r.status_code == 422 and "by id" in r.json()["detail"], r.text
    r = _ack(client, web, "id=%d&up_to=%d" % (fetched[1]["id"], fetched[1]["id"]))
    assert r.status_code == 422, r.text
    assert _envelopes(_fetch(client, web)) == ["dHdv", "dGhyZWU="]

    # both remaining ones in one request
    rest = _fetch(client, web)
    assert _ack(client, web, "&".join("id=%d" % m["id"] for m in rest)).status_code == 204
    assert _fetch(client, web) == []


def test_malformed_acknowledgements_are_422_and_change_nothing(client: TestClient) -> None:
    web = _relay_client(client, "web-1")
    _store(client, "web-1", b"kept")
    [kept] = _fetch(client, web)
    for query in ("", "id=", "id=-1", "id=%d" % 2**63, "id=%d" % 2**64, "id=x",
                  "&".join("id=%d" % kept["id"] for _ in range(101))):  # at most 100 ids
        r = _ack(client, web, query)
        assert r.status_code == 422, (query[:40], r.text)
    assert _fetch(client, web) == [kept]
    target = "/relay/messages?after=%d" % 2**63
    assert client.get(target, headers=web.headers("GET", target)).status_code == 422
    assert _fetch(client, web, after=2**63 - 1) == []  # relay ids are 64-bit


def test_relay_ids_are_never_reused_after_acknowledgements_and_a_restart(app: FastAPI) -> None:
    # the bug of issue 13: on SQLite an emptied table handed out id 1 again
    with TestClient(app) as client:
        web = _relay_client(client, "web-1")
        _store(client, "web-1", b"a", b"b", b"c")
        first = _fetch(client, web)
        assert _ack(client, web, "&".join("id=%d" % m["id"] for m in first)).status_code == 204
        _store(client, "web-1", b"d")
        [second] = _fetch(client, web)
        assert second["id"] > first[-1]["id"]
        assert _ack(client, web, "id=%d" % second["id"]).status_code == 204
    with TestClient(create_app(app.state.settings)) as client:  # a new app on the same database
        with client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
            assert session.scalars(select(RelayMessage)).all() == []  # all acknowledged
        _store(client, "web-1", b"e")
        [third] = _fetch(client, web)
        assert third["id"] > second["id"]
        assert _fetch(client, web, after=second["id"]) == [third]


def test_a_copy_the_broker_delivers_again_is_stored_once(client: TestClient) -> None:
    # a replica killed after its commit and before its PUBACK gets the message again (alembic 0009)
    web = _relay_client(client, "web-1")
    bridge = RelayBridge(client.app.state.sessionmaker, client.app.state.metrics)  # type: ignore[attr-defined]
    for envelope in (b"one", b"one", b"two"):
        bridge.on_inbox(FLEET, "web-1", topics.frame("pump-1", envelope))
    page = _fetch(client, web)
    assert _envelopes(page) == ["b25l", "dHdv"]
    text = client.get("/metrics").text
    assert 'e2ee_relay_envelopes_dropped_total{reason="duplicate"} 1.0' in text
    # acknowledged, the same bytes again are stored: the digest guards the backlog, not history
    assert _ack(client, web, "id=%d" % page[0]["id"]).status_code == 204
    _store(client, "web-1", b"one")
    assert _envelopes(_fetch(client, web, after=page[1]["id"])) == ["b25l"]
