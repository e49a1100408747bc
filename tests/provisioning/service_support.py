"""Helpers for the provisioning service tests: a test device with real keys (e2ee.protocol.keys)
that registers, signs its requests and uploads prekeys, and a dump of every table."""
from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from e2ee.protocol import enrollment
from e2ee.protocol.keys import KeyStore
from e2ee_provisioning.core.security import signed_request_message

OPERATOR_KEY = "test-operator-key-9f2c1d0e"  # the test settings' operator key (not the default)
OPERATOR = {"X-API-Key": OPERATOR_KEY}
TABLES = ("devices", "enrollment_claims", "enrollment_challenges", "signed_prekeys", "one_time_prekeys",
          "revocations", "certificates", "revocation_lists", "backups", "links", "rendezvous",
          "relay_clients", "relay_messages")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class TestDevice:
    """A device: its KeyStore (private keys stay here) and the requests it signs with IS."""

    __test__ = False  # not a pytest class

    def __init__(self, device_id: str, one_time: int = 0, fleet: str = "plant-north") -> None:
        self.device_id = device_id
        self.fleet = fleet
        self.store = KeyStore.generate(one_time=one_time)
        self._last_ts = 0

    def enrollment_body(self, client: httpx.Client, token: str, board_uid: bytes = b"",
                        board_key: bytes | None = None, **fields: Any) -> dict[str, Any]:
        """The POST /enroll body over a fresh challenge (fields override or add entries)."""
        r = client.post("/enroll/challenge")
        assert r.status_code == 201, r.text
        challenge = base64.b64decode(r.json()["challenge"])
        raw = enrollment.enrollment_fields(self.store, challenge, token, self.device_id, self.fleet,
                                           board_uid, board_key)
        body = {"claim_token": token, "challenge": b64(challenge), "device_id": self.device_id,
                "fleet": self.fleet, **{k: b64(v) for k, v in raw.items()}}
        body.update(fields)
        return body

    def enroll(self, client: httpx.Client, token: str, **kw: Any) -> httpx.Response:
        return client.post("/enroll", json=self.enrollment_body(client, token, **kw))

    def register(self, client: httpx.Client, **claim: Any) -> dict[str, Any]:
        """Enrolls with a fresh single-use claim; returns the enrollment result."""
        token = create_claim(client, fleet=self.fleet, **claim)
        r = self.enroll(client, token)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def next_timestamp(self) -> int:
        self._last_ts = max(int(time.time()), self._last_ts + 1)
        return self._last_ts

    def headers(self, method: str, path: str, body: bytes = b"", timestamp: int | None = None,
                signer: KeyStore | None = None) -> dict[str, str]:
        ts = self.next_timestamp() if timestamp is None else timestamp
        sig = (signer or self.store).sign(signed_request_message(method, path, ts, self.device_id, body))
        return {"X-E2EE-Device": self.device_id, "X-E2EE-Timestamp": str(ts), "X-E2EE-Signature": b64(sig)}

    def signed_prekey(self) -> dict[str, Any]:
        bundle = self.store.bundle()
        return {"spk_id": bundle.spk_id, "spk_pub": b64(bundle.spk_pub), "spk_sig": b64(bundle.spk_sig)}

    def one_time_prekeys(self) -> list[dict[str, Any]]:
        return [{"opk_id": i, "opk_pub": b64(pub)} for i, pub in self.store.one_time_prekey_publics()]

    def upload_body(self, spk: bool = True, opks: list[dict[str, Any]] | None = None) -> bytes:
        doc: dict[str, Any] = {"one_time_prekeys": self.one_time_prekeys() if opks is None else opks}
        if spk:
            doc["signed_prekey"] = self.signed_prekey()
        return json.dumps(doc).encode()

    def post(self, client: httpx.Client, path: str, body: bytes, **kw: Any) -> httpx.Response:
        headers = {"Content-Type": "application/json", **self.headers("POST", path, body, **kw)}
        return client.post(path, content=body, headers=headers)

    def upload(self, client: httpx.Client, spk: bool = True,
               opks: list[dict[str, Any]] | None = None) -> httpx.Response:
        return self.post(client, "/keys", self.upload_body(spk, opks))


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The samples of a /metrics exposition: (name, labels) -> value, parsed by prometheus_client."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value in a /metrics exposition; 0 when the series is absent (a counter never
    incremented has no labelled series yet)."""
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def create_claim(client: httpx.Client, fleet: str = "plant-north", **fields: Any) -> str:
    """A new claim token (single use unless fields say otherwise)."""
    r = client.post("/claims", headers=OPERATOR, json={"fleet": fleet, **fields})
    assert r.status_code == 201, r.text
    return r.json()["tokens"][0]  # type: ignore[no-any-return]


def dump_tables(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every service table, in a stable order (for "no state change" checks)."""
    with engine.connect() as conn:
        return {t: sorted(tuple(r) for r in conn.execute(text("SELECT * FROM %s" % t))) for t in TABLES}
