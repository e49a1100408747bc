"""The signing clock of the host SDK's DeviceClient (e2ee_host.client) against the service, both
engines (issue 12, finding 11): a busy client stays within the service's 300 s window however many
requests it signs per second, and never signs the same message twice (signed requests are single
use, finding 10)."""
from __future__ import annotations

import time

import httpx
from service_support import TestDevice

from e2ee_host.client import DeviceClient

REQUESTS = 600  # two per wall-clock second would already drift 300 s ahead with a 1 s step


def test_finding11_a_busy_client_is_never_locked_out(client) -> None:  # type: ignore[no-untyped-def]
    device = TestDevice("busy-gw")
    device.register(client)
    stamps: list[int] = []

    def record(request: httpx.Request) -> None:
        stamps.append(int(request.headers["X-E2EE-Timestamp"]))

    client.event_hooks = {"request": [record], "response": []}
    busy = DeviceClient(str(client.base_url), "busy-gw", "plant-north", device.store, http=client)
    started = time.time()
    for _ in range(REQUESTS):  # the same signed read, as fast as the service answers
        assert busy.inventory()["device_id"] == "busy-gw"
    finished = time.time()
    assert len(stamps) == REQUESTS and len(set(stamps)) == REQUESTS  # never the same message twice
    assert stamps == sorted(stamps)
    # wall time in milliseconds, ahead of it by at most 1 ms per request signed in the same ms
    assert started * 1000 - 1 <= stamps[0] and stamps[-1] <= finished * 1000 + REQUESTS
    # a second client of the same identity (a restored install, another process) signs its own
    other = DeviceClient(str(client.base_url), "busy-gw", "plant-north", device.store, http=client)
    other.last_timestamp = busy.last_timestamp  # as HostInstall persists it across processes
    assert other.inventory()["device_id"] == "busy-gw" and stamps[-1] > stamps[-2]
