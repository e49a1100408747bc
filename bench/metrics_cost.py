"""What the service's metrics cost (docs/performance.md, "Metrics"): one histogram observation
and one labelled counter increment (core/metrics.py), and one /metrics scrape, whose database
gauges (core/gauges.py) count per fleet over a SQLite database of 10000 devices in 20 fleets with
a signed prekey and 5 one-time prekeys each. Prints the figures; writes nothing.

    .venv/bin/python -m bench.metrics_cost
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

from fastapi.testclient import TestClient
from sqlalchemy import select

from e2ee_provisioning.core.config import Settings
from e2ee_provisioning.core.metrics import Metrics
from e2ee_provisioning.main import create_app
from e2ee_provisioning.models import Device, OneTimePrekey, SignedPrekey

DEVICES, FLEETS, ONE_TIME = 10_000, 20, 5
CALLS = 200_000


def _per_call_us(call: object) -> float:
    started = time.perf_counter()
    for _ in range(CALLS):
        call()  # type: ignore[operator]
    return (time.perf_counter() - started) / CALLS * 1e6


def main() -> None:
    metrics = Metrics()
    observe = _per_call_us(lambda: metrics.observe("e2ee_http_request_duration_seconds", 0.003,
                                                   route="/keys/{device_id}/bundle", method="GET", status="2xx"))
    inc = _per_call_us(lambda: metrics.inc("e2ee_bundle_fetches_total", fleet="plant-north"))
    print("histogram observation %.1f us, labelled counter increment %.1f us" % (observe, inc))
    app = create_app(Settings(_env_file=None, environment="development",  # type: ignore[call-arg]
                              data_dir=tempfile.mkdtemp(), operator_api_key=os.urandom(16).hex()))
    with TestClient(app) as client:
        with app.state.sessionmaker() as session:
            session.add_all([Device(device_id="d%d" % i, fleet="fleet-%d" % (i % FLEETS), ik_pub=os.urandom(32),
                                    is_pub=os.urandom(32), fingerprint="0" * 32) for i in range(DEVICES)])
            session.flush()
            for pk in session.scalars(select(Device.id)).all():
                session.add(SignedPrekey(device_pk=pk, spk_id=1, spk_pub=os.urandom(32), spk_sig=os.urandom(64)))
                session.add_all([OneTimePrekey(device_pk=pk, opk_id=j, opk_pub=os.urandom(32))
                                 for j in range(ONE_TIME)])
            session.commit()
        times = []
        for _ in range(10):
            started = time.perf_counter()
            r = client.get("/metrics")
            times.append(time.perf_counter() - started)
        print("scrape of %d devices in %d fleets (SQLite): median %.0f ms, %d bytes" % (
            DEVICES, FLEETS, statistics.median(times) * 1000, len(r.content)))


if __name__ == "__main__":
    main()
