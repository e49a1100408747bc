"""/metrics (api/routes/metrics.py): Prometheus text, counts only, no identifiers."""
from __future__ import annotations

import base64

from service_support import OPERATOR, TestDevice

from e2ee_provisioning.core.metrics import COUNTERS


def _values(text: str) -> dict[str, int]:
    return {line.split()[0]: int(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}


def test_metrics_count_and_name_nothing(client) -> None:  # type: ignore[no-untyped-def]
    device = TestDevice("meter-0042", one_time=3)
    info = device.register(client)
    assert device.upload(client).status_code == 200
    for _ in range(4):
        assert client.get("/keys/meter-0042/bundle", headers=OPERATOR).status_code == 200
    claim = client.post("/claims", headers=OPERATOR, json={"fleet": "plant-north", "count": 2}).json()
    client.get("/claims")  # refused: no key

    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    values = _values(r.text)
    assert values["e2ee_bundle_fetches_total"] == 4
    assert values["e2ee_bundle_fetches_without_one_time_prekey_total"] == 1
    assert values["e2ee_prekey_uploads_total"] == 1
    assert values["e2ee_enrollments_total"] == 1 and values["e2ee_enrollment_challenges_total"] == 1
    assert values["e2ee_enrollment_claims_created_total"] == 3  # one spent by the enrollment
    assert values["e2ee_auth_failures_total"] == 1
    assert values["e2ee_devices"] == 1
    assert values["e2ee_devices_prekey_inventory_low"] == 1  # 0 left < threshold 10
    assert values["e2ee_one_time_prekeys_stored"] == 0
    assert set(COUNTERS) <= set(values)
    # counts only: no labels, and no identifier, key or token anywhere in the text
    assert "{" not in r.text
    secrets_ = ["meter-0042", device.store.fingerprint().hex(), info["serial"], *claim["tokens"]]
    for key in (device.store.ik_pub, device.store.is_pub, device.store.bundle().spk_pub):
        secrets_ += [base64.b64encode(key).decode(), key.hex()]
    for s in secrets_:
        assert s not in r.text
