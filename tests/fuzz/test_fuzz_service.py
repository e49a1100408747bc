"""Fuzz target: the provisioning service's request models (provisioning/app/models.py) as FastAPI
reads a JSON body (json.loads, then the model), and the checks the routes run on what a model
accepted: a prekey upload's keys and signature (routes/keys.py), an enrollment's proof of
possession (routes/enrollment.py). The HTTP layer is fuzzed by schemathesis against the OpenAPI
(tests/provisioning). Inputs: mutated real bodies (fields dropped, retyped, strings and base64
broken), random JSON. Outcomes: pydantic.ValidationError (422), or a model whose strings can be
stored (UTF-8, no NUL where a pattern forbids it) and whose route checks raise only
keys.KeyFormatError or crypto.CryptoError (both 422 or 401 there).
"""
from __future__ import annotations

import base64
import json
from types import SimpleNamespace
from typing import Any

import pydantic
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz_host import JSON

from e2ee import crypto
from e2ee.crypto.errors import CryptoError
from e2ee.protocol import enrollment
from e2ee.protocol.keys import KeyFormatError, KeyStore
from e2ee_provisioning import models
from e2ee_provisioning.api.routes import keys as keys_route

KS = KeyStore.generate(2)
B = KS.bundle()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BODIES: dict[type[pydantic.BaseModel], dict[str, Any]] = {
    models.ClaimCreate: {"fleet": "plant-north", "quota": 2, "count": 1, "expires_in": 3600, "owner": "acme",
                         "roles": ["sensor"], "label": "line 3", "require_hardware": False},
    models.PrekeyUpload: {"signed_prekey": {"spk_id": B.spk_id, "spk_pub": _b64(B.spk_pub),
                                            "spk_sig": _b64(B.spk_sig)},
                          "one_time_prekeys": [{"opk_id": i, "opk_pub": _b64(p)}
                                               for i, p in KS.one_time_prekey_publics()]},
    models.EnrollmentRequest: {"claim_token": "t" * 32, "challenge": _b64(bytes(32)), "device_id": "pump-7",
                               "fleet": "plant-north", "ik_pub": _b64(KS.ik_pub), "is_pub": _b64(KS.is_pub),
                               "proof": _b64(bytes(64)), "board_uid": _b64(b"uid"), "evidence": None,
                               "registration_lock_pin": "123456"},
    models.LinkApproval: {"owner": "acme", "device_id": "pump-7", "fingerprint": _b64(bytes(16)),
                          "approval": _b64(bytes(64)), "consent": _b64(bytes(64))},
    models.RelaySend: {"to": "pump-7", "fleet": "plant-north", "envelope": _b64(b"\x08\x01" * 10)},
    models.RevokeRequest: {"reason": "lost"},
    models.BackupFetch: {"auth": _b64(bytes(32))},
    models.RegistrationLockSet: {"pin": "123456"},
}
TEXT = st.text(max_size=40) | st.sampled_from(["", "\x00", "a\x00b", "\ud800", "../x", "A" * 200, "=",
                                               "AAA="])


@st.composite
def bodies(draw: st.DrawFn) -> tuple[type[pydantic.BaseModel], bytes]:
    model = draw(st.sampled_from(sorted(BODIES, key=lambda m: m.__name__)))
    doc = json.loads(json.dumps(BODIES[model]))
    for _ in range(draw(st.integers(0, 3))):
        target = doc
        if model is models.PrekeyUpload and draw(st.booleans()):  # a field of a nested upload
            opks = doc.get("one_time_prekeys")
            nested = [doc.get("signed_prekey"), opks[0] if isinstance(opks, list) and opks else None]
            target = draw(st.sampled_from(nested))
        if not isinstance(target, dict) or not target:
            break
        key = draw(st.sampled_from(sorted(target)))
        change = draw(st.integers(0, 4))
        if change == 0:
            del target[key]
        elif change == 1:
            target[key] = draw(JSON)
        elif change == 2:
            target[key] = draw(TEXT)
        elif change == 3 and isinstance(target[key], str):
            cut = draw(st.integers(0, len(target[key])))
            target[key] = target[key][:cut] + draw(TEXT)
        else:
            target[key] = draw(st.integers(-2**70, 2**70) | st.sampled_from([0xFFFFFFFF, 2**32, -1, 2**63]))
    if draw(st.integers(0, 9)) == 0:
        return model, json.dumps(draw(JSON)).encode()
    return model, json.dumps(doc).encode()


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@fuzz
@given(bodies())
def test_fuzz_service_request_models(case: tuple[type[pydantic.BaseModel], bytes]) -> None:
    model, body = case
    try:
        parsed = model.model_validate(json.loads(body))  # what FastAPI does with a JSON body
    except pydantic.ValidationError:
        return
    for text in _strings(parsed.model_dump()):
        text.encode()  # storable: PostgreSQL takes UTF-8 only
        assert "\x00" not in text  # and no NUL in its text columns
    if isinstance(parsed, models.PrekeyUpload):
        device = SimpleNamespace(ik_pub=KS.ik_pub, is_pub=KS.is_pub)
        try:
            keys_route._validated(device, parsed, None)  # type: ignore[arg-type]
        except (KeyFormatError, CryptoError):
            pass
    if isinstance(parsed, models.EnrollmentRequest):
        message = enrollment.proof_message(parsed.challenge, enrollment.claim_hash(parsed.claim_token),
                                           parsed.device_id, parsed.fleet, parsed.ik_pub, parsed.is_pub,
                                           parsed.board_uid or b"")
        try:
            crypto.ed25519_verify(parsed.is_pub, message, parsed.proof)
        except CryptoError:
            pass
