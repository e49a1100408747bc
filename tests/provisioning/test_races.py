"""Server errors and races of audit finding 11, on SQLite and PostgreSQL: integers past 64 bits and
NUL characters are 422 (not a driver error, 500); enrollments racing for one device id are 201 or
409; parallel registration-lock PINs and backup-fetch tokens never get more tries than their
limits. The races run against the service under uvicorn (a real thread pool and one database
connection per request), the racers released together by a barrier.
"""
from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from service_support import OPERATOR, OPERATOR_KEY, TestDevice, create_claim, dump_tables
from sqlalchemy import select

from e2ee.protocol.certificate import decode_certificate_unverified
from e2ee_host import backup
from e2ee_provisioning.core.config import Settings
from e2ee_provisioning.models import Backup, Certificate, Device

RACERS = 24
ATTEMPTS = 3  # the limits in these tests' settings (registration lock, backup fetch)
FAST = backup.KdfParams(8 * 1024, 1, 1)  # tests only


@pytest.fixture
def settings(database_url: str, tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(_env_file=None, environment="development", data_dir=tmp_path,  # type: ignore[call-arg]
                    database_url=database_url, operator_api_key=OPERATOR_KEY,
                    bundle_rate_capacity=1000, bundle_rate_per_second=100,
                    enroll_rate_capacity=1000, enroll_rate_per_second=100,
                    registration_lock_attempts=ATTEMPTS, backup_fetch_attempts=ATTEMPTS)


def race(url: str, requests: list[Callable[[httpx.Client], httpx.Response]]) -> list[httpx.Response]:
    """Runs each request on its own client and thread, all released at once."""
    barrier = threading.Barrier(len(requests))

    def run(request: Callable[[httpx.Client], httpx.Response]) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=60) as client:
            client.get("/healthz")  # connected before the start
            barrier.wait()
            return request(client)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(run, requests))


def _post(path: str, body: dict[str, Any]) -> Callable[[httpx.Client], httpx.Response]:
    return lambda client: client.post(path, json=body)


def test_finding11_offsets_past_64_bits_are_refused_422(client) -> None:  # type: ignore[no-untyped-def]
    # a database integer is at most 2^63 - 1 on both engines: past it, 422 like any bad query
    for path in ("/devices", "/claims"):
        for offset in (2**63, 2**64, 10**40):
            r = client.get(path, params={"offset": offset}, headers=OPERATOR)
            assert r.status_code == 422, (path, offset, r.text)
        assert client.get(path, params={"offset": 2**63 - 1}, headers=OPERATOR).json() == []
        for limit in (0, 1001, 2**64):
            assert client.get(path, params={"limit": limit}, headers=OPERATOR).status_code == 422
    dev = TestDevice("offset-dev-1")
    dev.register(client)
    for method, name in (("GET", "after"), ("DELETE", "id")):
        for value in (2**63, 2**64):  # relay ids are 64-bit since alembic 0007 (issue 13)
            target = "/relay/messages?%s=%d" % (name, value)
            r = client.request(method, target, headers=dev.headers(method, target))
            assert r.status_code == 422, (target, r.text)
    target = "/relay/messages?after=%d" % (2**63 - 1)
    assert client.get(target, headers=dev.headers("GET", target)).json() == []


def test_finding11_enrollments_racing_for_one_device_id_are_201_or_409(
        live_server) -> None:  # type: ignore[no-untyped-def]
    # 24 devices with their own keys, claims and challenges enroll the same new device id at
    # once. Their claims name one owner, so a racer that finds the id enrolled re-registers it
    # with its keys (allowed for the owner's claims, finding 4): 201; one that loses the insert
    # of the new id is 409. Never 500, and the id ends with exactly one valid certificate, the
    # one of its current keys (each re-registration superseded the one before).
    url = live_server.url
    with httpx.Client(base_url=url, timeout=60) as client:
        racers = [TestDevice("contended-1") for _ in range(RACERS)]
        bodies = [r.enrollment_body(client, create_claim(client, owner="race-owner")) for r in racers]
    answers = race(url, [_post("/enroll", body) for body in bodies])
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {201, 409}, [(a.status_code, a.text[:200]) for a in answers]
    assert codes.count(201) >= 1
    with live_server.app.state.sessionmaker() as session:
        device = session.scalar(select(Device).where(Device.device_id == "contended-1"))
        assert device is not None
        valid = session.scalars(select(Certificate).where(Certificate.device_pk == device.id,
                                                          Certificate.revoked_at.is_(None))).all()
        assert len(valid) == 1
        assert decode_certificate_unverified(valid[0].data).identity_sign == device.is_pub
    winners = {base64.b64decode(b["is_pub"]) for b, a in zip(bodies, answers) if a.status_code == 201}
    assert device.is_pub in winners
    print("enrollment race: %s" % {c: codes.count(c) for c in set(codes)})


def test_finding11_parallel_pin_guesses_never_pass_the_registration_lock_limit(
        live_server) -> None:  # type: ignore[no-untyped-def]
    # a locked device id; 24 re-registrations with a wrong PIN at once (each with its own keys,
    # a claim of the device's owner and a challenge): at most ATTEMPTS of them get a PIN checked
    # ("wrong PIN"), the others find the lock closed, and the counter stops at the limit
    url = live_server.url
    with httpx.Client(base_url=url, timeout=60) as client:
        owner = TestDevice("locked-1")
        owner.register(client, owner="pin-owner")
        body = b'{"pin": "2468"}'
        r = client.put("/me/registration-lock", content=body,
                       headers={"Content-Type": "application/json",
                                **owner.headers("PUT", "/me/registration-lock", body)})
        assert r.status_code == 204, r.text
        bodies = [TestDevice("locked-1").enrollment_body(client, create_claim(client, owner="pin-owner"),
                                                         registration_lock_pin="1357")
                  for _ in range(RACERS)]
    answers = race(url, [_post("/enroll", body) for body in bodies])
    assert all(a.status_code == 423 for a in answers), [(a.status_code, a.text[:200]) for a in answers]
    checked = [a for a in answers if "wrong PIN (" in a.json()["detail"]]
    assert len(checked) == ATTEMPTS, [a.json()["detail"] for a in answers]
    with live_server.app.state.sessionmaker() as session:
        device = session.scalar(select(Device).where(Device.device_id == "locked-1"))
        assert device is not None and device.lock_failures == ATTEMPTS
        assert device.is_pub == owner.store.is_pub  # nobody re-registered it


def test_finding11_parallel_backup_fetches_never_pass_the_attempt_limit(
        live_server) -> None:  # type: ignore[no-untyped-def]
    # 24 fetches with wrong tokens at once: ATTEMPTS of them are told "wrong passphrase", the
    # others find the backup locked; afterwards even the right token is refused until an
    # operator unlocks it
    url = live_server.url
    with httpx.Client(base_url=url, timeout=60) as client:
        dev = TestDevice("backed-up-1")
        dev.register(client)
        blob, auth = backup.seal(b"archive", "pass phrase 1", FAST)
        path = "/backups/%s" % dev.device_id
        body = hashlib.sha256(auth).digest() + blob
        r = client.put(path, content=body, headers={"Content-Type": "application/octet-stream",
                                                     **dev.headers("PUT", path, body)})
        assert r.status_code == 200, r.text
    wrong = [{"auth": base64.b64encode(os.urandom(32)).decode()} for _ in range(RACERS)]
    answers = race(url, [_post(path + "/fetch", body) for body in wrong])
    codes = [a.status_code for a in answers]
    assert sorted(codes) == [403] * ATTEMPTS + [423] * (RACERS - ATTEMPTS), codes
    with live_server.app.state.sessionmaker() as session:
        assert session.scalar(select(Backup.failures)) == ATTEMPTS
    with httpx.Client(base_url=url, timeout=60) as client:
        right = {"auth": base64.b64encode(auth).decode()}
        assert client.post(path + "/fetch", json=right).status_code == 423
        assert client.delete(path + "/lock", headers=OPERATOR).status_code == 204
        assert client.post(path + "/fetch", json=right).content == blob


def test_finding11_nul_characters_are_422_not_500(client, app) -> None:  # type: ignore[no-untyped-def]
    dev = TestDevice("nul-dev-1")
    dev.register(client)
    token = create_claim(client)
    before = dump_tables(app.state.engine)
    refused = [
        client.get("/devices/nul%00dev", headers=OPERATOR),
        client.get("/devices", params={"fleet": "a\x00b"}, headers=OPERATOR),
        client.get("/devices", params={"owner": "\x00"}, headers=OPERATOR),
        client.get("/claims", params={"fleet": "\x00"}, headers=OPERATOR),
        client.post("/claims", json={"fleet": "plant-north", "label": "a\x00b"}, headers=OPERATOR),
        client.post("/devices/nul-dev-1/revoke", json={"reason": "lost\x00"}, headers=OPERATOR),
        client.get("/keys/nul%00dev/bundle", headers=OPERATOR),
        client.get("/keys/nul%00dev/inventory", headers=OPERATOR),
        client.get("/identities/nul%00dev", headers=OPERATOR),
        client.get("/owners/o%00/devices", headers=OPERATOR),
        client.get("/backups/nul%00dev/params"),
        client.post("/backups/nul%00dev/fetch", json={"auth": base64.b64encode(b"\x00" * 32).decode()}),
        client.get("/certificates/%00", headers=OPERATOR),
        client.post("/enroll", json=dev.enrollment_body(client, token[:-1] + "\x00")),
        client.post("/enroll", json=dev.enrollment_body(client, token, registration_lock_pin="12\x0034")),
    ]
    assert [r.status_code for r in refused] == [422] * len(refused), [r.text[:120] for r in refused]
    after = dump_tables(app.state.engine)
    after["enrollment_challenges"] = before["enrollment_challenges"]  # the two fresh challenges
    assert after == before
    body = b'{"pin": "12\\u000034"}'
    headers = {"Content-Type": "application/json", **dev.headers("PUT", "/me/registration-lock", body)}
    r = client.put("/me/registration-lock", content=body, headers=headers)
    assert r.status_code == 422
