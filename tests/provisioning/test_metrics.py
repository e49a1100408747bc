"""/metrics (api/routes/metrics.py, core/metrics.py, core/gauges.py, core/requestmetrics.py):
the Prometheus exposition of prometheus_client, per-fleet labels from the database, request
durations by route template, bounded label values, and no identifier, key or token anywhere."""
from __future__ import annotations

import base64
import re

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from service_support import OPERATOR, TestDevice, metric, samples
from sqlalchemy import select

from e2ee.transport import topics
from e2ee_provisioning.core.metrics import COUNTERS, HISTOGRAMS, LABEL_VALUES, MAX_FLEET_LABELS, OTHER_FLEET, Metrics
from e2ee_provisioning.core.relay import MAX_BACKLOG, RelayBridge
from e2ee_provisioning.models import Device, RelayClient


def test_metrics_count_per_fleet_and_name_nothing(client: TestClient) -> None:
    north, south = TestDevice("meter-0042", one_time=3), TestDevice("meter-0043", one_time=12, fleet="plant-south")
    info = north.register(client)
    south.register(client)
    assert north.upload(client).status_code == 200 and south.upload(client).status_code == 200
    for _ in range(4):
        assert client.get("/keys/meter-0042/bundle", headers=OPERATOR).status_code == 200
    assert client.get("/keys/meter-0043/bundle", headers=OPERATOR).status_code == 200
    claim = client.post("/claims", headers=OPERATOR, json={"fleet": "plant-north", "count": 2}).json()
    client.get("/claims")  # refused: no key

    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    assert metric(text, "e2ee_bundle_fetches_total", fleet="plant-north") == 4
    assert metric(text, "e2ee_bundle_fetches_total", fleet="plant-south") == 1
    assert metric(text, "e2ee_bundle_fetches_without_one_time_prekey_total", fleet="plant-north") == 1
    assert metric(text, "e2ee_prekey_uploads_total", fleet="plant-north") == 1
    assert metric(text, "e2ee_enrollments_total", fleet="plant-north") == 1
    assert metric(text, "e2ee_enrollment_challenges_total") == 2
    assert metric(text, "e2ee_enrollment_claims_created_total", fleet="plant-north") == 3  # one spent by enrolling
    assert metric(text, "e2ee_auth_failures_total") == 1
    # gauges from the database, one series per fleet
    assert metric(text, "e2ee_devices", fleet="plant-north") == 1 and metric(text, "e2ee_devices", fleet="plant-south") == 1
    assert metric(text, "e2ee_devices_prekey_inventory_low", fleet="plant-north") == 1  # 0 left < threshold 10
    assert metric(text, "e2ee_devices_prekey_inventory_low", fleet="plant-south") == 0  # 11 left
    assert metric(text, "e2ee_one_time_prekeys_stored", fleet="plant-south") == 11
    assert ("e2ee_devices_revoked", frozenset({("fleet", "plant-south")})) in samples(text)  # 0, not absent
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {name.removesuffix("_total") for name in COUNTERS} | set(HISTOGRAMS) <= families
    # counts only: every label is a fleet, a route template or a value of a fixed vocabulary, and
    # no identifier, key or token appears anywhere in the text
    for (name, labels), _ in samples(text).items():
        for label, value in labels:
            if label == "fleet":
                assert value in ("plant-north", "plant-south")
            elif label == "route":
                assert value.startswith("/") and "meter" not in value
            elif label not in ("le",):
                assert value in LABEL_VALUES[label], (name, label, value)
    secrets_ = ["meter-0042", "meter-0043", north.store.fingerprint().hex(), info["serial"], *claim["tokens"]]
    for key in (north.store.ik_pub, north.store.is_pub, north.store.bundle().spk_pub):
        secrets_ += [base64.b64encode(key).decode(), key.hex()]
    for s in secrets_:
        assert s not in text


def test_request_durations_are_labelled_by_route_template(client: TestClient) -> None:
    device = TestDevice("meter-7", one_time=1)
    device.register(client)
    device.upload(client)
    assert client.get("/keys/meter-7/bundle", headers=OPERATOR).status_code == 200
    assert client.get("/keys/nobody/bundle", headers=OPERATOR).status_code == 404
    assert client.get("/no/such/path/meter-7").status_code == 404
    big = b"x" * (client.app.state.settings.max_upload_bytes + 1)  # type: ignore[attr-defined]
    assert client.post("/keys", content=big).status_code == 413  # refused before routing, still timed
    text = client.get("/metrics").text
    count = "e2ee_http_request_duration_seconds_count"
    assert metric(text, count, route="/keys/{device_id}/bundle", method="GET", status="2xx") == 1
    assert metric(text, count, route="/keys/{device_id}/bundle", method="GET", status="4xx") == 1
    assert metric(text, count, route="unmatched", method="GET", status="4xx") == 1
    assert metric(text, count, route="/keys", method="POST", status="4xx") == 1
    assert metric(text, count, route="/keys", method="POST", status="2xx") == 1
    assert metric(text, "e2ee_http_request_duration_seconds_bucket", route="/keys/{device_id}/bundle", method="GET",
                  status="2xx", le="+Inf") == 1
    assert "meter-7" not in text and "/no/such" not in text


def test_fleet_labels_and_label_values_are_bounded() -> None:
    metrics = Metrics()
    for i in range(MAX_FLEET_LABELS + 50):
        metrics.inc("e2ee_enrollments_total", fleet="fleet-%d" % i)
    fleets = {labels["fleet"] for family in metrics.registry.collect() if family.name == "e2ee_enrollments"
              for labels in (s.labels for s in family.samples)}
    assert len(fleets) == MAX_FLEET_LABELS + 1 and OTHER_FLEET in fleets
    assert metrics.registry.get_sample_value("e2ee_enrollments_total", {"fleet": OTHER_FLEET}) == 50
    with pytest.raises(KeyError):
        metrics.inc("e2ee_no_such_total")
    with pytest.raises(ValueError):  # a value outside the vocabulary makes no series
        metrics.inc("e2ee_backup_fetches_total", fleet="f", result="meter-0042")
    with pytest.raises(ValueError):  # nor a missing or extra label
        metrics.inc("e2ee_enrollments_total")
    with pytest.raises(ValueError):
        metrics.inc("e2ee_auth_failures_total", fleet="f")
    metrics.observe_broker("somethingNew", 0.01, True)  # an unknown command is "other"
    assert metrics.registry.get_sample_value("e2ee_broker_command_duration_seconds_count",
                                             {"command": "other", "outcome": "ok"}) == 1


def test_relay_backlog_and_drops(client: TestClient) -> None:
    # envelopes enter as the broker admin hands them over (RelayBridge.on_inbox); the backlog and
    # its oldest envelope's age are gauges per fleet, drops and acknowledgements counters
    web = TestDevice("web-1")
    web.register(client)
    state = client.app.state  # type: ignore[attr-defined]
    with state.sessionmaker() as session:
        session.add(RelayClient(device_pk=session.scalar(select(Device.id).where(Device.device_id == "web-1"))))
        session.commit()
    bridge = RelayBridge(state.sessionmaker, state.metrics)
    for envelope in (b"one", b"two", b"three"):
        bridge.on_inbox("plant-north", "web-1", topics.frame("pump-1", envelope))
    bridge.on_inbox("plant-north", "web-1", b"\xff not a frame")
    text = client.get("/metrics").text
    assert metric(text, "e2ee_relay_envelopes_stored_total", fleet="plant-north") == 3
    assert metric(text, "e2ee_relay_envelopes_dropped_total", reason="not_an_envelope") == 1
    assert metric(text, "e2ee_relay_backlog_envelopes", fleet="plant-north") == 3
    assert 0 <= metric(text, "e2ee_relay_backlog_oldest_seconds", fleet="plant-north") < 60
    page = client.get("/relay/messages", headers=web.headers("GET", "/relay/messages")).json()
    target = "/relay/messages?" + "&".join("id=%d" % m["id"] for m in page[:2])
    assert client.delete(target, headers=web.headers("DELETE", target)).status_code == 204
    text = client.get("/metrics").text
    assert metric(text, "e2ee_relay_envelopes_acknowledged_total", fleet="plant-north") == 2
    assert metric(text, "e2ee_relay_backlog_envelopes", fleet="plant-north") == 1
    assert MAX_BACKLOG > 3  # backlog_full drops: tests/broker/test_relay_bridge.py fills one


def test_no_label_value_comes_from_a_request(client: TestClient) -> None:
    # an enrollment for a fleet nobody created is refused and leaves no fleet label behind
    device = TestDevice("meter-9", fleet="fleet-from-a-request")
    body = device.enrollment_body(client, "not-a-claim-token")
    assert client.post("/enroll", json=body).status_code == 403
    text = client.get("/metrics").text
    assert "fleet-from-a-request" not in text and "not-a-claim-token" not in text
    assert metric(text, "e2ee_enrollments_rejected_total") == 1
    assert not re.search(r'route="[^"]*meter', text)
