"""Fuzz target: the service channel over MQTT (docs/provisioning.md, "Service channel"), both
ends. The service's request reader (e2ee_provisioning.api.channel): a request or an HTTPException
with a 4xx status, nothing else. The board's answer reader (e2ee.transport.service.Service.handle
into BundleStarter, as a board's delivery uses it; on MicroPython in test_fuzz_device.py): never
raises; an answer to the request in flight runs its callback exactly once with an int status.
"""
from __future__ import annotations

import base64
import json
from typing import Any

from fastapi import HTTPException
from fuzzing import fuzz, inputs
from hypothesis import given

from e2ee.protocol.keys import KeyStore, PrekeyBundle
from e2ee.transport.service import BundleStarter, Service
from e2ee_provisioning.api import channel

RID = "000000000000"


def answers(bundle: bytes, certificate: bytes) -> list[bytes]:
    """Valid answers of the channel: a bundle, errors, another request's, time and inventory."""
    body = {"device_id": "gw-1", "bundle": base64.b64encode(bundle).decode(), "one_time_prekey": True,
            "certificate": base64.b64encode(certificate).decode()}
    docs: list[dict[str, Any]] = [{"id": RID, "status": 200, "body": body},
                                  {"id": RID, "status": 410, "detail": "device is revoked"},
                                  {"id": RID, "status": 404, "detail": "no such device"},
                                  {"id": "ffffffffffff", "status": 200, "body": body},
                                  {"id": RID, "status": 200, "body": {"now_ms": 1800000000000}},
                                  {"id": None, "status": 400, "detail": "request line is not JSON"}]
    return [json.dumps(d).encode() for d in docs]


REQUESTS = [b'{"id": "a1", "m": "GET", "p": "/time"}',
            b'{"id": "a2", "m": "GET", "p": "/keys/gw-1/bundle", "ts": 1800000000000, "sig": "' +
            base64.b64encode(bytes(64)) + b'"}\n',
            b'{"id": "a3", "m": "POST", "p": "/keys", "ts": 1800000000001, "sig": "AAAA"}\n{"one_time_prekeys": []}',
            b'{"id": "e1", "m": "POST", "p": "/enroll"}\n{"claim_token": "e2c_x", "mqtt_password": "p"}']


@fuzz
@given(inputs(REQUESTS, max_size=400))
def test_fuzz_channel_request_reader(payload: bytes) -> None:
    try:
        request = channel._parse(payload, 32768)
    except HTTPException as e:
        assert 400 <= e.status_code < 500
        return
    assert request.method in ("GET", "POST") and request.path.startswith("/")
    assert (request.ts is None) == (request.sig is None)


_KEYS = KeyStore.generate(1)
_ANSWERS = answers(_KEYS.bundle(_KEYS.one_time_prekey_ids()[0]).to_bytes(), b"\x0a\x02ok")


@fuzz
@given(inputs(_ANSWERS, max_size=1200))
def test_fuzz_channel_answer_reader(payload: bytes) -> None:
    svc = Service.for_device("plant-north", "pump-7", None)
    started: list[PrekeyBundle] = []
    starter = BundleStarter(svc, lambda peer, bundle, cert: started.append(PrekeyBundle.from_bytes(bundle)))
    calls: list[tuple[Any, Any]] = []

    def callback(status: Any, doc: Any) -> None:
        calls.append((status, doc))
        starter._answer("gw-1", status, doc)
    svc._pending[RID] = (callback, 0)
    assert svc.handle(svc.topic, payload) is True
    assert svc.handle("e2ee/v1/plant-north/d/pump-7/inbox", payload) is False  # not the channel's
    assert len(calls) <= 1 and len(calls) + svc.pending() == 1
    assert all(type(status) is int for status, _ in calls)
    assert len(started) + len(starter._refused) <= 1
