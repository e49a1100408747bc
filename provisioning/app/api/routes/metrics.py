"""GET /metrics: the Prometheus exposition of the service's registry (core/metrics.py): counters
since start, request and broker-command histograms, and gauges read from the database and the
broker admin at scrape time. Counts only; no label carries an identifier."""
from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import generate_latest

from e2ee_provisioning.api.deps import MetricsDep

router = APIRouter(tags=["metrics"])

# The classic text format, which every Prometheus version reads (the names are all legacy-valid,
# so prometheus_client's text is the same in either version).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE)
