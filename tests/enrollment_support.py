"""Enrolling a device whose keys live under MicroPython (tests/device/enroll_device.py) with a
running service: keys made on the device, proof of possession signed there, prekeys published
with requests it signs. Shared by the provisioning, linking and broker tests."""
from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
from support import DEVICE_TESTS


def device_json(micropython, *args: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return json.loads(micropython.run(DEVICE_TESTS / "enroll_device.py", *args).strip().splitlines()[-1])


def enroll_micropython_device(micropython, url: str, token: str, flash: str, skey: str, device_id: str,  # type: ignore[no-untyped-def]
                              fleet: str, one_time: int = 4) -> dict[str, Any]:
    """Returns the enrollment answer (certificate, CA keys, MQTT credentials)."""
    device_json(micropython, "keys", flash, skey, str(one_time))
    client = httpx.Client(base_url=url)
    challenge = base64.b64decode(client.post("/enroll/challenge").json()["challenge"])
    fields = device_json(micropython, "prove", flash, skey, challenge.hex(), token, device_id, fleet)
    r = client.post("/enroll", json={"claim_token": token, "challenge": base64.b64encode(challenge).decode(),
                                     "device_id": device_id, "fleet": fleet, **fields})
    assert r.status_code == 201, r.text
    ts = str(int(time.time()))
    signed = device_json(micropython, "upload", flash, skey, "/keys", ts, device_id, "1", "0")
    up = client.post("/keys", content=signed["body"].encode(), headers={
        "Content-Type": "application/json", "X-E2EE-Device": device_id, "X-E2EE-Timestamp": ts,
        "X-E2EE-Signature": signed["signature"]})
    assert up.status_code == 200, up.text
    return r.json()  # type: ignore[no-any-return]
