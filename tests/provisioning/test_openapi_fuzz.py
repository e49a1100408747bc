"""Schemathesis against the service's own OpenAPI schema (issue 12, "must show"), bounded, on
SQLite and PostgreSQL, against the service under uvicorn: no request gets a server error.

Every operation gets E2EE_FUZZ_EXAMPLES (default 15) positive and as many negative cases
(schema-valid and schema-violating requests). Each case is sent as generated, with the operator's
key, or signed by an enrolled device (the signature over the exact bytes sent), and sometimes
with its path's device id, owner and fleet set to ones that exist, so the fuzzing gets past
authentication and lookups into the handlers. A 5xx fails the test, except 503 "no broker" (this
service drives none: the relay and group routes say so on purpose).
"""
from __future__ import annotations

import os
import time

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from service_support import OPERATOR_KEY, TestDevice

EXAMPLES = int(os.environ.get("E2EE_FUZZ_EXAMPLES", "15"))
AUTH = ("generated", "operator", "device")
OWNER = "fuzz-owner"


class Sender:
    """Sends generated cases with the chosen authentication and collects the server errors."""

    def __init__(self, url: str, dev: TestDevice, session: requests.Session) -> None:
        self.url, self.dev, self.session = url, dev, session
        self.sent = 0
        self.errors: list[str] = []

    def prepare(self, case: schemathesis.Case, auth: str,
                fixed: dict[str, str]) -> requests.PreparedRequest | None:
        kwargs = case.as_transport_kwargs(base_url=self.url)
        try:
            prepared = requests.Request(kwargs["method"], kwargs["url"], headers=kwargs.get("headers"),
                                        params=kwargs.get("params"), cookies=kwargs.get("cookies"),
                                        json=kwargs.get("json"), data=kwargs.get("data")).prepare()
        except (requests.RequestException, ValueError, UnicodeError):
            return None  # not sendable as HTTP (the client refuses it): nothing reaches the server
        if auth != "generated":
            for name in fixed:
                prepared.headers.pop(name, None)
        if auth == "operator":
            prepared.headers["X-API-Key"] = OPERATOR_KEY
        elif auth == "device":
            signed = self.dev.headers(prepared.method or "GET", prepared.path_url, _body(prepared),
                                      timestamp=int(time.time()))
            prepared.headers.update(signed)
        return prepared

    def send(self, label: str, prepared: requests.PreparedRequest) -> None:
        try:
            try:
                r = self.session.send(prepared, timeout=30)
            except requests.ConnectionError:  # a kept-alive connection the server closed
                r = self.session.send(prepared, timeout=30)
        except requests.ConnectionError as e:
            self.errors.append("%s: connection failed (%s)" % (label, type(e).__name__))
            return
        except requests.RequestException:
            return  # refused by the client while sending
        self.sent += 1
        deliberate = r.status_code == 503 and "broker" in r.text
        if r.status_code >= 500 and not deliberate:
            self.errors.append("%s %s: %d %s %r" % (prepared.method, prepared.path_url[:120], r.status_code,
                                                    r.text[:120], _body(prepared)[:120]))


def _body(prepared: requests.PreparedRequest) -> bytes:
    body = prepared.body or b""
    return body.encode() if isinstance(body, str) else body


def test_schemathesis_finds_no_server_error(live_server) -> None:  # type: ignore[no-untyped-def]
    url = live_server.url
    with httpx.Client(base_url=url, timeout=30) as client:
        dev = TestDevice("fuzz-dev-1", one_time=5)
        dev.register(client, owner=OWNER)
        assert dev.upload(client).status_code == 200
    known = {"device_id": dev.device_id, "owner": OWNER, "fleet": dev.fleet}
    schema = schemathesis.openapi.from_dict(live_server.app.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30
    started = time.monotonic()
    with requests.Session() as session:
        sender = Sender(url, dev, session)
        for operation in operations:
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                # the operation's auth headers are generated only when sent as generated; fixed (and
                # replaced) otherwise, which spares their costly filtered generation
                fixed = {p.name: "0" for p in operation.headers}
                cases = {auth: operation.as_strategy(generation_mode=mode,
                                                     headers=None if auth == "generated" else fixed)
                         for auth in AUTH}

                @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                          suppress_health_check=list(HealthCheck))
                @given(data=st.data(), auth=st.sampled_from(AUTH), existing=st.booleans())
                def run(data, auth: str, existing: bool) -> None:  # type: ignore[no-untyped-def]
                    case = data.draw(cases[auth])
                    if existing and case.path_parameters:
                        case.path_parameters.update(
                            {k: v for k, v in known.items() if k in case.path_parameters})
                    prepared = sender.prepare(case, auth, fixed)
                    if prepared is not None:
                        sender.send(operation.label, prepared)

                try:
                    run()
                except Unsatisfiable:
                    # nothing of this operation can break its schema (no parameters, no body)
                    assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label
    print("schemathesis: %d requests over %d operations in %.1f s, %d server errors" % (
        sender.sent, len(operations), time.monotonic() - started, len(sender.errors)))
    assert not sender.errors, "\n".join(sender.errors[:30])
