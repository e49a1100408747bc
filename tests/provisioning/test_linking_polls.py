"""Linking waits as long as it says (issue 15, item 4; docs/linking.md §2, "Polling"): both sides
poll the rendezvous 1 s, then 1.5 times longer, up to 5 s apart, inside the enrollment rate limit
they share from one address, and a 429 waits its Retry-After. Against the service as a process on
SQLite with its default limits: `e2ee client link-qr --timeout 60` links with an approver who
comes 20 s late and no request is refused on the way (polling 5 times a second, the old code ran
into 429 after ~7 s and died); a link no approver answers ends at its timeout, not before. With a
tiny rate budget and shrunken waits, every 429 is followed by a pause of at least its Retry-After
and the link still completes. A write waits for a service that is still starting."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_support import metric

from e2ee.protocol.keys import KeyStore
from e2ee_host.client import ApiError, DeviceClient, OperatorClient, ServiceClient
from e2ee_host.linking import NewDeviceLink, Pace, approve, fetch_slot, put_slot
from e2ee_host.service import ServiceProcess

E2EE = str(Path(sys.executable).parent / "e2ee")
OPERATOR_KEY = "linking-polls-operator-key-3b7a"
FLEET, OWNER = "plant-north", "acme"
APPROVER_LATE = 20.0  # s


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[ServiceProcess]:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("linking-polls")
    with ServiceProcess(d / "service.log", data_dir=d / "data", operator_api_key=OPERATOR_KEY) as s:
        yield s


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([E2EE, "--url", url, "--json", "client", *args], capture_output=True, text=True,
                          timeout=120)


def _init(url: str, directory: Path, device_id: str, owner: str = "") -> Path:
    with OperatorClient(url, OPERATOR_KEY) as op:
        claim = op.create_claims(FLEET, owner=owner).tokens[0]
    r = _cli(url, "init", "--dir", str(directory), "--device-id", device_id, "--fleet", FLEET, "--claim", claim,
             "--one-time", "2", "--no-broker")  # linking needs no broker
    assert r.returncode == 0, r.stderr
    return directory


def _rate_limited(url: str) -> int:
    return int(metric(httpx.get(url + "/metrics").text, "e2ee_enrollments_rate_limited_total"))


def _link_qr(url: str, directory: Path, timeout: float) -> tuple[subprocess.Popen[str], str]:
    """`link-qr` started; returns the process and the payload it shows."""
    proc = subprocess.Popen([E2EE, "--url", url, "--json", "client", "link-qr", "--dir", str(directory), "--yes",
                             "--timeout", str(timeout)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while True:
        line = proc.stderr.readline()  # type: ignore[union-attr]
        assert line, "link-qr ended early"
        if line.startswith("link payload: "):
            return proc, line.split(": ", 1)[1].strip()


def test_a_60s_link_succeeds_with_an_approver_20s_late(service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    phone = _init(service.url, tmp_path / "phone", "acme-phone", owner=OWNER)
    tablet = _init(service.url, tmp_path / "tablet", "acme-tablet")
    refused_before = _rate_limited(service.url)
    started = time.monotonic()
    new, payload = _link_qr(service.url, tablet, 60)
    time.sleep(max(0.0, started + APPROVER_LATE - time.monotonic()))
    assert new.poll() is None, new.communicate()[1]  # still waiting after 20 s
    r = _cli(service.url, "link-approve", "--dir", str(phone), "--qr", payload, "--owner", OWNER, "--yes",
             "--timeout", "60")
    assert r.returncode == 0, r.stderr
    out, err = new.communicate(timeout=60)
    elapsed = time.monotonic() - started
    assert new.returncode == 0, err
    assert json.loads(out) == {"linked_to": OWNER, "check_code": json.loads(r.stdout)["check_code"]}
    assert APPROVER_LATE < elapsed < 60
    # both sides polled from 127.0.0.1, one enrollment budget: never refused
    assert _rate_limited(service.url) == refused_before


def test_a_link_nobody_answers_ends_at_its_timeout(service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tablet = _init(service.url, tmp_path / "tablet", "acme-tablet-2")
    started = time.monotonic()
    new, _ = _link_qr(service.url, tablet, 6)
    _, err = new.communicate(timeout=60)
    elapsed = time.monotonic() - started
    assert new.returncode == 3 and "no answer from the other device within 6 s" in err, err
    assert 6 <= elapsed < 6 + 3  # the last poll is at the deadline, plus the command's start


def _enrolled(url: str, op: OperatorClient, name: str, owner: str = "") -> DeviceClient:
    client = DeviceClient(url, name, FLEET, KeyStore.generate(2))
    client.enroll(op.create_claims(FLEET, owner=owner).tokens[0])
    client.upload_prekeys()
    return client


class Requests:
    """Every answer one client's http connection got: (side, sent at, status)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, float, int]] = []
        self.lock = threading.Lock()

    def watch(self, client: DeviceClient, side: str) -> None:
        def record(response: httpx.Response) -> None:
            with self.lock:
                self.log.append((side, response.request.extensions["sent_at"], response.status_code))

        def stamp(request: httpx.Request) -> None:
            request.extensions["sent_at"] = time.monotonic()

        client.http.event_hooks = {"request": [stamp], "response": [record]}


def test_polls_wait_out_retry_after_and_the_link_completes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a budget of 6 enrollment requests, 2 more a second: Retry-After 1; the two enrollments take 4
    with ServiceProcess(tmp_path / "service.log", data_dir=tmp_path / "data", operator_api_key=OPERATOR_KEY,
                        enroll_rate_capacity=6, enroll_rate_per_second=2) as service:
        with OperatorClient(service.url, OPERATOR_KEY) as op:
            primary = _enrolled(service.url, op, "acme-phone", owner=OWNER)
            new = _enrolled(service.url, op, "acme-tablet")
            trusted = op.ca_keys()
        fast = Pace(first=0.05, growth=1.5, longest=0.3)  # shrunken waits: into the limit at once
        requests = Requests()
        requests.watch(new, "new")
        requests.watch(primary, "primary")
        link = NewDeviceLink(new, pace=fast)
        outcome: dict[str, Any] = {}

        def new_device() -> None:
            try:
                outcome["code"] = link.wait(60)
                link.accept(60)
            except Exception as e:  # noqa: BLE001 (reported by the assertion below)
                outcome["error"] = e

        thread = threading.Thread(target=new_device)
        thread.start()
        time.sleep(3)
        done = approve(primary, link.offer.payload(), OWNER, trusted_keys=trusted, confirm=lambda code: True,
                       timeout=60, pace=fast)
        thread.join(60)
        assert "error" not in outcome, outcome
        assert done["check_code"] == outcome["code"] and done["device_id"] == "acme-tablet"
    refusals = 0
    for side in ("new", "primary"):
        mine = [(at, status) for s, at, status in requests.log if s == side]
        for (at, status), (next_at, _) in zip(mine, mine[1:]):
            if status == 429:
                refusals += 1
                assert next_at - at >= 1.0 - 0.05, (side, mine)
    assert refusals >= 3, requests.log


def test_a_write_waits_for_a_service_that_is_starting(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # nothing listens yet: the write is refused at connect (it never reached a service), retried,
    # and lands once the service is up; a poll of an unreachable service ends at its timeout
    service = ServiceProcess(tmp_path / "service.log", data_dir=tmp_path / "data", operator_api_key=OPERATOR_KEY)
    fast, rendezvous, message = Pace(first=0.1, growth=1.5, longest=0.5), "ab" * 16, b"sealed offer " * 4
    with ServiceClient(service.url) as down:
        started = time.monotonic()
        with pytest.raises(ApiError) as refused:
            fetch_slot(down, rendezvous, "offer", 1.5, pace=fast)
        assert refused.value.status == 0 and 1.5 <= time.monotonic() - started < 3
    outcome: dict[str, Any] = {}

    def write() -> None:
        with ServiceClient(service.url) as client:
            try:
                put_slot(client, rendezvous, "offer", message, 60, pace=fast)
                outcome["written"] = time.monotonic()
            except Exception as e:  # noqa: BLE001 (reported by the assertion below)
                outcome["error"] = e

    thread = threading.Thread(target=write)
    thread.start()
    time.sleep(1)
    starting = time.monotonic()
    with service:
        thread.join(30)
        assert "error" not in outcome and outcome["written"] > starting, outcome
        with ServiceClient(service.url) as reader:
            assert fetch_slot(reader, rendezvous, "offer", 5, pace=fast) == message
