"""Concurrent bundle fetches against a real uvicorn server (issue 4, "Must show"): 50 parallel
fetches for a device with 20 one-time prekeys hand out each prekey at most once; the other 30
get the signed prekey only. Runs on PostgreSQL (SELECT ... FOR UPDATE SKIP LOCKED inside
DELETE ... RETURNING) and on SQLite (BEGIN IMMEDIATE)."""
from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from service_support import OPERATOR, TestDevice

from e2ee.protocol import keys

FETCHES = 50
ONE_TIME_PREKEYS = 20


def test_parallel_bundle_fetches_hand_out_each_prekey_once(live_server) -> None:  # type: ignore[no-untyped-def]
    device = TestDevice("hub-1", one_time=ONE_TIME_PREKEYS)
    with httpx.Client(base_url=live_server.url) as c:
        device.register(c)
        assert device.upload(c).json()["one_time_prekeys"] == ONE_TIME_PREKEYS
    start = threading.Barrier(FETCHES)

    def fetch(_: int) -> keys.PrekeyBundle:
        with httpx.Client(base_url=live_server.url, timeout=60) as c:  # one connection per client
            start.wait()
            r = c.get("/keys/hub-1/bundle", headers=OPERATOR)
            assert r.status_code == 200, r.text
            return keys.PrekeyBundle.from_bytes(base64.b64decode(r.json()["bundle"]))

    with ThreadPoolExecutor(FETCHES) as pool:
        bundles = list(pool.map(fetch, range(FETCHES)))
    handed = [b.opk_id for b in bundles if b.opk_id is not None]
    assert sorted(handed) == list(range(1, ONE_TIME_PREKEYS + 1))  # each exactly once, none lost
    assert sum(b.opk_id is None for b in bundles) == FETCHES - ONE_TIME_PREKEYS
    assert all(b == device.store.bundle(b.opk_id) for b in bundles)
    with httpx.Client(base_url=live_server.url) as c:
        assert c.get("/keys/hub-1/inventory", headers=OPERATOR).json()["one_time_prekeys"] == 0
