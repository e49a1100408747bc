"""Load benchmark of the provisioning service (a benchmark, not a test): enrollments per second
and prekey-bundle fetches per second against the running service (`python -m e2ee_provisioning`,
one uvicorn worker) on SQLite and on PostgreSQL, from concurrent HTTP clients on this machine.

    scripts/bench-provisioning [--enrollments N] [--fetches N] [--clients C] [--no-write]

Each enrollment is the device's two requests (challenge, then enroll with proof of possession);
the client side (key generation and signing) is done before the clock starts. Each fetch hands
out a one-time prekey (devices hold enough), so every fetch is the DELETE ... RETURNING path.
Results go to the <!-- bench:provisioning --> block of docs/performance.md.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.crypto import write_doc
from e2ee.protocol import enrollment
from e2ee.protocol.keys import KeyStore
from e2ee_host.client import DeviceClient, OperatorClient
from e2ee_host.service import ServiceProcess

POSTGRES_ADMIN = os.environ.get("E2EE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
OPERATOR_KEY = secrets.token_urlsafe(24)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _run(clients: int, jobs: list[Callable[[httpx.Client], None]], url: str) -> tuple[float, list[float]]:
    """Runs the jobs on `clients` threads (one keep-alive connection each); wall seconds and
    per-job latencies."""
    local: dict[int, httpx.Client] = {}

    def one(job: Callable[[httpx.Client], None]) -> float:
        client = local.get(threading.get_ident())
        if client is None:  # one client (and connection) per thread, made once
            client = local[threading.get_ident()] = httpx.Client(base_url=url, timeout=60)
        t = time.perf_counter()
        job(client)
        return time.perf_counter() - t

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda c: None, range(clients)))
        start = time.perf_counter()
        latencies = list(pool.map(one, jobs))
        wall = time.perf_counter() - start
    for c in local.values():
        c.close()
    return wall, latencies


def _check(r: httpx.Response, code: int) -> None:
    if r.status_code != code:
        raise SystemExit("benchmark request failed: %d %s" % (r.status_code, r.text[:200]))


def bench_engine(name: str, settings: dict[str, Any], n_enroll: int, n_fetch: int, clients: int,
                 workdir: Path) -> dict[str, float]:
    with ServiceProcess(workdir / ("%s.log" % name), log_level="warning", **settings) as service:
        op = OperatorClient(service.url, OPERATOR_KEY)
        token = op.create_claims("bench", quota=n_enroll + 100, expires_in=3600).tokens[0]
        stores = [KeyStore.generate() for _ in range(n_enroll)]

        def enroll_job(i: int) -> Callable[[httpx.Client], None]:
            def job(client: httpx.Client) -> None:
                r = client.post("/enroll/challenge")
                _check(r, 201)
                challenge = base64.b64decode(r.json()["challenge"])
                fields = enrollment.enrollment_fields(stores[i], challenge, token, "dev-%d" % i, "bench")
                body = {"claim_token": token, "challenge": _b64(challenge), "device_id": "dev-%d" % i,
                        "fleet": "bench", **{k: _b64(v) for k, v in fields.items()}}
                _check(client.post("/enroll", json=body), 201)
            return job

        # signing happens inside the job (it needs the server's challenge): measure it apart
        t = time.perf_counter()
        for s in stores[:50]:
            enrollment.enrollment_fields(s, b"\x00" * 32, token, "dev-x", "bench")
        sign_ms = (time.perf_counter() - t) / 50 * 1000
        wall, lat = _run(clients, [enroll_job(i) for i in range(n_enroll)], service.url)
        enroll_rate = n_enroll / wall
        enroll_p50, enroll_p95 = statistics.median(lat), statistics.quantiles(lat, n=20)[18]

        # devices to fetch from: enough one-time prekeys that every fetch takes one
        per_device = 100
        holders = []
        for i in range((n_fetch + per_device - 1) // per_device):
            dev = DeviceClient(service.url, "holder-%d" % i, "bench", KeyStore.generate(per_device))
            dev.enroll(token)
            dev.upload_prekeys()
            holders.append(dev.device_id)
        headers = {"X-API-Key": OPERATOR_KEY}

        def fetch_job(i: int) -> Callable[[httpx.Client], None]:
            def job(client: httpx.Client) -> None:
                r = client.get("/keys/%s/bundle" % holders[i % len(holders)], headers=headers)
                _check(r, 200)
                if not r.json()["one_time_prekey"]:
                    raise SystemExit("a fetch found no one-time prekey: the benchmark is misconfigured")
            return job

        wall, lat = _run(clients, [fetch_job(i) for i in range(n_fetch)], service.url)
        op.close()
    return {"enroll_rate": enroll_rate, "enroll_p50_ms": enroll_p50 * 1000, "enroll_p95_ms": enroll_p95 * 1000,
            "fetch_rate": n_fetch / wall, "fetch_p50_ms": statistics.median(lat) * 1000,
            "fetch_p95_ms": statistics.quantiles(lat, n=20)[18] * 1000, "client_sign_ms": sign_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--enrollments", type=int, default=300)
    parser.add_argument("--fetches", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    common = {"operator_api_key": OPERATOR_KEY, "enroll_rate_capacity": 1e9, "enroll_rate_per_second": 1e9,
              "bundle_rate_capacity": 1e9, "bundle_rate_per_second": 1e9, "environment": "development"}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["SQLite"] = bench_engine("sqlite", {**common, "data_dir": work / "sqlite"}, args.enrollments,
                                         args.fetches, args.clients, work)
        db = "e2ee_bench_%s" % secrets.token_hex(4)
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute('CREATE DATABASE "%s"' % db)
            try:
                url = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + db
                results["PostgreSQL"] = bench_engine("postgresql", {**common, "data_dir": work / "pg",
                                                                    "database_url": url},
                                                     args.enrollments, args.fetches, args.clients, work)
            finally:
                admin.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % db)
    lines = ["| database | enrollments/s | enroll p50 / p95 ms | bundle fetches/s | fetch p50 / p95 ms |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for engine, r in results.items():
        lines.append("| %s | %.0f | %.1f / %.1f | %.0f | %.1f / %.1f |" % (
            engine, r["enroll_rate"], r["enroll_p50_ms"], r["enroll_p95_ms"], r["fetch_rate"], r["fetch_p50_ms"],
            r["fetch_p95_ms"]))
    notes = [
        "%d enrollments (challenge + enroll with proof of possession, certificate issued and stored) and %d "
        "bundle fetches (each takes a one-time prekey), %d concurrent clients with keep-alive connections, "
        "one uvicorn worker, client and service on the same 2-core machine." % (
            args.enrollments, args.fetches, args.clients),
        "An enrollment includes the client's Ed25519 signing (%.2f ms, CPython `cryptography`) between its two "
        "requests; the service verifies the proof and signs the certificate (two Ed25519 operations)." %
        results["SQLite"]["client_sign_ms"],
        "SQLite serializes writers (BEGIN IMMEDIATE); PostgreSQL runs fetches in parallel with FOR UPDATE "
        "SKIP LOCKED. Scale out by running more workers/replicas against PostgreSQL.",
    ]
    table = "\n".join(lines)
    print(table)
    print("\n".join(notes))
    print(json.dumps(results, indent=1))
    if not args.no_write:
        write_doc("provisioning", table, notes, reproduce="scripts/bench-provisioning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
