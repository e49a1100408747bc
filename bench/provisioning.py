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
import http.client
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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


class _Client:
    """One keep-alive HTTP/1.1 connection (the standard library's: httpx costs more client CPU per
    request than the service spends at these rates, and both share the 2 cores)."""

    def __init__(self, url: str) -> None:
        host, port = url.split("//", 1)[1].split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        h = {"Content-Type": "application/json"} if data is not None else {}
        self.conn.request(method, path, body=data, headers={**h, **(headers or {})})
        r = self.conn.getresponse()
        raw = r.read()
        return r.status, (json.loads(raw) if raw else None)

    def close(self) -> None:
        self.conn.close()


def _run(clients: int, jobs: list[Callable[[_Client], None]], url: str) -> tuple[float, list[float]]:
    """Runs the jobs on `clients` threads (one keep-alive connection each); wall seconds and
    per-job latencies."""
    local: dict[int, _Client] = {}

    def one(job: Callable[[_Client], None]) -> float:
        client = local.get(threading.get_ident())
        if client is None:  # one client (and connection) per thread, made once
            client = local[threading.get_ident()] = _Client(url)
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


class _Profile:
    """py-spy recording the service process during one phase (--profile DIR): DIR/<name>.txt,
    collapsed stacks of the threads holding the GIL, i.e. where the Python CPU goes (flamegraph
    input). py-spy comes from PyPI (`.venv/bin/pip install py-spy`)."""

    def __init__(self, directory: Path | None, pid: int, name: str) -> None:
        self.argv = None if directory is None else [
            str(Path(sys.executable).parent / "py-spy"), "record", "--gil", "--format", "raw", "--rate", "250",
            "--subprocesses", "--nonblocking", "-o", str(directory / ("%s.txt" % name)), "-p", str(pid)]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> None:
        if self.argv is not None:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # attached before the clock starts

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            self.proc.wait(30)


def _check(answer: tuple[int, Any], code: int) -> Any:
    status, body = answer
    if status != code:
        raise SystemExit("benchmark request failed: %d %s" % (status, str(body)[:200]))
    return body


def _p(latencies: list[float], q: int) -> float:
    """The q-th percentile, ms."""
    return statistics.quantiles(latencies, n=100)[q - 1] * 1000


def bench_engine(name: str, settings: dict[str, Any], n_enroll: int, n_fetch: int, clients: int,
                 workdir: Path, workers: int = 1, profile: Path | None = None) -> dict[str, float]:
    with ServiceProcess(workdir / ("%s.log" % name), log_level="warning", workers=workers, **settings) as service:
        pid = service._proc.pid if service._proc else 0
        op = OperatorClient(service.url, OPERATOR_KEY)
        token = op.create_claims("bench", quota=n_enroll + 100, expires_in=3600).tokens[0]
        stores = [KeyStore.generate() for _ in range(n_enroll)]

        def enroll_job(i: int) -> Callable[[_Client], None]:
            def job(client: _Client) -> None:
                challenge = base64.b64decode(_check(client.request("POST", "/enroll/challenge"), 201)["challenge"])
                fields = enrollment.enrollment_fields(stores[i], challenge, token, "dev-%d" % i, "bench")
                body = {"claim_token": token, "challenge": _b64(challenge), "device_id": "dev-%d" % i,
                        "fleet": "bench", **{k: _b64(v) for k, v in fields.items()}}
                _check(client.request("POST", "/enroll", body), 201)
            return job

        # signing happens inside the job (it needs the server's challenge): measure it apart
        t = time.perf_counter()
        for s in stores[:50]:
            enrollment.enrollment_fields(s, b"\x00" * 32, token, "dev-x", "bench")
        sign_ms = (time.perf_counter() - t) / 50 * 1000
        with _Profile(profile, pid, name + "-enroll"):
            wall, enroll_lat = _run(clients, [enroll_job(i) for i in range(n_enroll)], service.url)
        enroll_rate = n_enroll / wall

        # devices to fetch from: enough one-time prekeys that every fetch takes one
        per_device = 100
        holders = []
        for i in range((n_fetch + per_device - 1) // per_device):
            dev = DeviceClient(service.url, "holder-%d" % i, "bench", KeyStore.generate(per_device))
            dev.enroll(token)
            dev.upload_prekeys()
            holders.append(dev.device_id)
        headers = {"X-API-Key": OPERATOR_KEY}

        def fetch_job(i: int) -> Callable[[_Client], None]:
            def job(client: _Client) -> None:
                answer = _check(client.request("GET", "/keys/%s/bundle" % holders[i % len(holders)],
                                               headers=headers), 200)
                if not answer["one_time_prekey"]:
                    raise SystemExit("a fetch found no one-time prekey: the benchmark is misconfigured")
            return job

        with _Profile(profile, pid, name + "-fetch"):
            wall, lat = _run(clients, [fetch_job(i) for i in range(n_fetch)], service.url)
        op.close()
    return {"enroll_rate": enroll_rate, "enroll_p50_ms": _p(enroll_lat, 50), "enroll_p99_ms": _p(enroll_lat, 99),
            "fetch_rate": n_fetch / wall, "fetch_p50_ms": _p(lat, 50), "fetch_p99_ms": _p(lat, 99),
            "client_sign_ms": sign_ms}


# Issue 16's targets on this 2-core machine: (enrollments/s, bundle fetches/s).
TARGETS = {"SQLite": (300, 1000), "PostgreSQL": (500, 1000)}


def _met(value: float, target: float) -> str:
    return "%.0f (target %d%s)" % (value, target, "" if value >= target else ", **missed**")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--enrollments", type=int, default=1000)
    parser.add_argument("--fetches", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="uvicorn worker counts to measure (each a row)")
    parser.add_argument("--engines", nargs="+", default=["sqlite", "sqlite-normal", "postgresql"],
                        choices=["sqlite", "sqlite-normal", "postgresql"],
                        help="sqlite-normal: E2EE_PROV_SQLITE_SYNCHRONOUS=normal (no fsync per commit)")
    parser.add_argument("--profile", type=Path, help="py-spy the service into this directory (collapsed stacks)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    common = {"operator_api_key": OPERATOR_KEY, "enroll_rate_capacity": 1e9, "enroll_rate_per_second": 1e9,
              "bundle_rate_capacity": 1e9, "bundle_rate_per_second": 1e9, "environment": "development"}
    results: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for workers in args.workers:
            for engine, label, synchronous in (("sqlite", "SQLite", "full"),
                                               ("sqlite-normal", "SQLite, synchronous=normal", "normal")):
                if engine in args.engines:
                    name = "%s-w%d" % (engine, workers)
                    results[label, workers] = bench_engine(
                        name, {**common, "data_dir": work / name, "sqlite_synchronous": synchronous},
                        args.enrollments, args.fetches, args.clients, work, workers, args.profile)
            if "postgresql" not in args.engines:
                continue
            db = "e2ee_bench_%s" % secrets.token_hex(4)
            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
                admin.execute('CREATE DATABASE "%s"' % db)
                try:
                    url = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + db
                    name = "postgresql-w%d" % workers
                    results["PostgreSQL", workers] = bench_engine(
                        name, {**common, "data_dir": work / name, "database_url": url}, args.enrollments,
                        args.fetches, args.clients, work, workers, args.profile)
                finally:
                    admin.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % db)
    lines = ["| database | workers | enrollments/s | enroll p50 / p99 ms | bundle fetches/s | fetch p50 / p99 ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for (engine, workers), r in results.items():
        enroll_target, fetch_target = TARGETS[engine.split(",")[0]]
        lines.append("| %s | %d | %s | %.1f / %.1f | %s | %.1f / %.1f |" % (
            engine, workers, _met(r["enroll_rate"], enroll_target), r["enroll_p50_ms"], r["enroll_p99_ms"],
            _met(r["fetch_rate"], fetch_target), r["fetch_p50_ms"], r["fetch_p99_ms"]))
    sign_ms = next(iter(results.values()))["client_sign_ms"]
    notes = [
        "%d enrollments (challenge + enroll with proof of possession, certificate issued and stored) and %d "
        "bundle fetches (each takes a one-time prekey), %d concurrent clients with keep-alive connections "
        "(standard-library HTTP, threads of one process), client and service on the same 2-core machine." % (
            args.enrollments, args.fetches, args.clients),
        "An enrollment includes the client's Ed25519 signing (%.2f ms, CPython `cryptography`) between its two "
        "requests; the service verifies the proof and signs the certificate (two Ed25519 operations)." % sign_ms,
        "workers: `python -m e2ee_provisioning --workers N` (uvicorn worker processes on one socket; see "
        "\"Several workers\" below for what that means for rate limits, metrics and the broker admin).",
        "SQLite serializes writers (BEGIN IMMEDIATE) and by default fsyncs its WAL at every commit (about "
        "1.3 ms here); `synchronous=normal` (E2EE_PROV_SQLITE_SYNCHRONOUS) drops that fsync at the cost of the "
        "last commits on an OS crash or power loss (docs/performance.md). PostgreSQL runs fetches in parallel "
        "with FOR UPDATE SKIP LOCKED.",
        "The machine was shared with other work while this ran (load average about %.1f at the end): the "
        "figures move by 2x between runs; compare rows of one run." % os.getloadavg()[0],
    ]
    table = "\n".join(lines)
    print(table)
    print("\n".join(notes))
    print(json.dumps({"%s/%d" % k: v for k, v in results.items()}, indent=1))
    if not args.no_write:
        write_doc("provisioning", table, notes, reproduce="scripts/bench-provisioning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
