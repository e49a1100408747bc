"""Monitoring artefacts against the real tools (docs/provisioning.md, "Monitoring"):
deploy/prometheus/e2ee-alerts.yml passes `promtool check rules` and its own `promtool test rules`
cases, and a real Prometheus (Debian's `prometheus` package, as promtool) scrapes a running
service with a broker and evaluates every query of the Grafana dashboard
(deploy/grafana/e2ee-provisioning.json) and every alert rule without an error, each reading only
series that the service exposes."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2ee.protocol.keys import KeyStore
from e2ee_host.broker import MosquittoProcess
from e2ee_host.client import DeviceClient, OperatorClient
from e2ee_host.service import ServiceProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "e2ee-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "e2ee-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "e2ee-provisioning.json"
JOB = "e2ee-provisioning"  # the scrape job the rules expect
FLEET = "plant-north"
OPERATOR_KEY = "monitoring-tests-operator-key-6e1b"
# What Grafana puts in place of its variables before it sends a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$fleet": ".*"}


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
    if found is None:
        pytest.fail("%s not found: install Debian's prometheus package (apt-get install prometheus; .ci/run "
                    "does)" % name)
    return found


def test_alert_rules_pass_promtool() -> None:
    promtool = _tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                            capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def _rules() -> list[dict[str, str]]:
    import yaml
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _panel_queries() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def _metric_names(expr: str) -> set[str]:
    """Series names an expression reads (identifiers that are not functions, keywords or labels)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    words = {"sum", "by", "rate", "increase", "deriv", "histogram_quantile", "max", "min", "and", "or", "le",
             "route", "fleet", "command", "instance", "status", "kind", "queue", "reason", "event", "result", "m",
             "h", "s"}
    return {n for n in names if n not in words}


@dataclass
class Monitored:
    service: str
    prometheus: str
    exposed: set[str]  # sample names the service's /metrics has, and families without samples yet


def _query(prometheus: str, expr: str) -> dict[str, object]:
    r = httpx.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=10)
    doc: dict[str, object] = r.json()
    assert r.status_code == 200 and doc["status"] == "success", (expr, doc)
    return doc["data"]  # type: ignore[return-value]


def _traffic(url: str) -> None:
    """A little of everything: claims, an enrollment with prekeys, bundle fetches, a refused
    request, a revocation (broker commands and a retained list)."""
    with OperatorClient(url, OPERATOR_KEY) as op:
        pump = DeviceClient(url, "pump-1", FLEET, KeyStore.generate(2))
        pump.enroll(op.create_claims(FLEET).tokens[0])
        pump.upload_prekeys()
        gateway = DeviceClient(url, "gw-1", FLEET, KeyStore.generate(3))
        gateway.enroll(op.create_claims(FLEET).tokens[0])
        for _ in range(3):
            gateway.bundle("pump-1")
        httpx.get(url + "/claims")  # no key: an auth failure
        op.revoke("pump-1", "decommissioned")


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    tmp = tmp_path_factory.mktemp("monitoring")
    prometheus = _tool("prometheus")
    with MosquittoProcess(tmp / "broker") as broker, ServiceProcess(
            tmp / "service.log", data_dir=tmp / "service", operator_api_key=OPERATOR_KEY,
            broker_admin_host=broker.host, broker_admin_port=broker.port, broker_admin_user=broker.admin_user,
            broker_admin_password=broker.admin_password, mqtt_host=broker.host, mqtt_port=broker.port) as service:
        _traffic(service.url)
        port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [service.url.split("//")[1]]}]}],
        }))
        log = open(tmp / "prometheus.log", "wb")
        proc = subprocess.Popen([prometheus, "--config.file=%s" % config, "--storage.tsdb.path=%s" % (tmp / "tsdb"),
                                 "--web.listen-address=127.0.0.1:%d" % port, "--web.enable-lifecycle"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = "http://127.0.0.1:%d" % port
        try:
            deadline = time.monotonic() + 60
            while True:  # ready, and three scrapes in: rate() has samples to work on
                assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-2000:]
                try:
                    data = _query(url, 'count_over_time(up{job="%s"}[1m])' % JOB)
                    result = data["result"]
                    if result and float(result[0]["value"][1]) >= 3:  # type: ignore[index]
                        break
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                assert time.monotonic() < deadline, "Prometheus did not scrape the service; log: %s" % (
                    (tmp / "prometheus.log").read_text()[-2000:])
                time.sleep(0.3)
            text = httpx.get(service.url + "/metrics").text
            exposed = set()
            for family in text_string_to_metric_families(text):
                exposed.add(family.name)
                exposed.update({family.name + "_total", family.name + "_bucket", family.name + "_count",
                                family.name + "_sum"} if family.type in ("counter", "histogram") else set())
                exposed.update(s.name for s in family.samples)
            yield Monitored(service.url, url, exposed | {"up"})
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def test_every_dashboard_query_runs_on_a_real_prometheus(monitored: Monitored) -> None:
    queries = _panel_queries()
    assert len(queries) >= 30
    assert _query(monitored.prometheus, 'up{job="%s"}' % JOB)["result"][0]["value"][1] == "1"  # type: ignore[index]
    for title, expr in queries:
        unknown = _metric_names(expr) - monitored.exposed
        assert not unknown, "panel %r reads series the service does not expose: %s" % (title, unknown)
        data = _query(monitored.prometheus, expr)
        assert data["resultType"] in ("vector", "matrix", "scalar"), (title, data)
    # the traffic shows up per fleet: the panels are not all empty
    devices = _query(monitored.prometheus, 'sum by (fleet) (e2ee_devices{fleet=~".*"})')["result"]
    assert devices == [{"metric": {"fleet": FLEET}, "value": devices[0]["value"]}]  # type: ignore[index]
    assert devices[0]["value"][1] == "2"  # type: ignore[index]
    p99 = _query(monitored.prometheus, 'histogram_quantile(0.99, sum by (le, route) '
                 '(rate(e2ee_http_request_duration_seconds_bucket{route!="/metrics"}[1m])))')["result"]
    assert p99, "no request latency series"
    assert _query(monitored.prometheus, "min(e2ee_broker_admin_up)")["result"][0]["value"][1] == "1"  # type: ignore[index]


def test_every_alert_rule_evaluates_on_a_real_prometheus(monitored: Monitored) -> None:
    rules = _rules()
    for rule in rules:  # each expression reads series the service exposes
        expr = rule["expr"]
        for selector in re.findall(r'__name__=~"([^"]+)"', expr):
            assert any(re.fullmatch(selector, name) for name in monitored.exposed), (rule["alert"], selector)
        unknown = _metric_names(re.sub(r'\{__name__=~"[^"]+"\}', "", expr)) - monitored.exposed
        assert not unknown, "rule %s reads series the service does not expose: %s" % (rule["alert"], unknown)
    deadline = time.monotonic() + 30
    while True:
        groups = httpx.get(monitored.prometheus + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        if len(loaded) == len(rules) and all(r.get("lastEvaluation", "").startswith("2") and
                                             not r["lastEvaluation"].startswith("0001") for r in loaded):
            break
        assert time.monotonic() < deadline, "rules not evaluated: %s" % loaded
        time.sleep(0.3)
    for r in loaded:
        assert r["health"] == "ok", (r["name"], r.get("lastError"))
    # a healthy service with a connected broker raises none of the outage alerts
    alerts = httpx.get(monitored.prometheus + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    names = {a["labels"]["alertname"] for a in alerts}
    assert not names & {"E2EEServiceDown", "E2EEBrokerAdminDown", "E2EEHighErrorRate", "E2EERelayDropping"}, alerts
