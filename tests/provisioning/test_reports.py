"""POST /reports (api/routes/reports.py): a device's signed counts land in its fleet's
e2ee_client_events_total; bounded per report and per device; refused reports count nothing."""
from __future__ import annotations

import json

from fastapi.testclient import TestClient
from service_support import TestDevice, metric

from e2ee_provisioning.api.routes.reports import MAX_COUNT, REPORT_CAPACITY


def _report(client: TestClient, device: TestDevice, **counts: object) -> int:
    return device.post(client, "/reports", json.dumps(counts).encode()).status_code


def test_reports_add_up_per_fleet(client: TestClient) -> None:
    north, south = TestDevice("gw-1"), TestDevice("gw-2", fleet="plant-south")
    north.register(client)
    south.register(client)
    assert _report(client, north, delivered=10, received=12, decrypt_failures=1) == 204
    assert _report(client, north, delivered=5, undelivered=2) == 204
    assert _report(client, south, encrypt_failures=3) == 204
    text = client.get("/metrics").text
    assert metric(text, "e2ee_client_reports_total", fleet="plant-north") == 2
    assert metric(text, "e2ee_client_events_total", fleet="plant-north", event="delivered") == 15
    assert metric(text, "e2ee_client_events_total", fleet="plant-north", event="undelivered") == 2
    assert metric(text, "e2ee_client_events_total", fleet="plant-north", event="received") == 12
    assert metric(text, "e2ee_client_events_total", fleet="plant-north", event="decrypt_failures") == 1
    assert metric(text, "e2ee_client_events_total", fleet="plant-south", event="encrypt_failures") == 3
    assert metric(text, "e2ee_client_events_total", fleet="plant-south", event="delivered") == 0
    assert "gw-1" not in text and "gw-2" not in text


def test_reports_are_bounded_signed_and_refusals_count_nothing(client: TestClient) -> None:
    device = TestDevice("gw-3")
    device.register(client)
    for bad in ({"delivered": MAX_COUNT + 1}, {"received": -1}, {"delivered": 1, "peer": "gw-9"},
                {"delivered": "many"}, {"delivered": 1.5}):
        assert _report(client, device, **bad) == 422, bad
    body = json.dumps({"delivered": 1}).encode()
    assert client.post("/reports", content=body, headers={"Content-Type": "application/json"}).status_code == 401
    headers = {"Content-Type": "application/json", **device.headers("POST", "/reports", body)}
    assert client.post("/reports", content=body, headers=headers).status_code == 204
    assert client.post("/reports", content=body, headers=headers).status_code == 409  # a replay
    text = client.get("/metrics").text
    assert metric(text, "e2ee_client_events_total", fleet="plant-north", event="delivered") == 1
    # the per-device budget: a burst of REPORT_CAPACITY (one spent above), then 429
    statuses = [_report(client, device, received=1) for _ in range(int(REPORT_CAPACITY))]
    assert statuses == [204] * (int(REPORT_CAPACITY) - 1) + [429]
    assert metric(client.get("/metrics").text, "e2ee_client_reports_total", fleet="plant-north") == REPORT_CAPACITY
    other = TestDevice("gw-4")  # another device has its own budget
    other.register(client)
    assert _report(client, other, received=1) == 204
