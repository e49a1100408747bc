"""Host SDK client of the provisioning service (docs/provisioning.md): operator calls with an API
key, and device calls signed with a device's identity key (enrollment, prekey uploads, bundles).

Every reply is checked: HTTP errors raise `ApiError` (status and the service's detail), and
certificates and revocation lists are verified with the Fleet CA keys before they are returned.

    client = OperatorClient("http://127.0.0.1:8000", api_key)
    token = client.create_claims("plant-north").tokens[0]
    device = DeviceClient("http://127.0.0.1:8000", "pump-1", "plant-north", KeyStore.generate(20))
    enrolled = device.enroll(token)
"""
from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from e2ee.protocol import certificate, enrollment
from e2ee.protocol.certificate import Certificate
from e2ee.protocol.keys import KeyFormatError, KeyStore, PrekeyBundle

__all__ = ["ApiError", "BadAnswer", "Claims", "DeviceClient", "Enrolled", "NoBroker", "OperatorClient", "RelayEnvelope",
           "RevocationListInfo", "ServiceClient", "ServiceUnreachable"]

DEFAULT_TIMEOUT = 15.0
# Ids per relay acknowledgement: the service's MAX_FETCH (e2ee_provisioning.api.routes.relay), the
# envelopes one fetch returns at most.
RELAY_ACK_BATCH = 100


class ApiError(Exception):
    """The service answered with an error status; `detail` is its explanation."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__("%d %s" % (status, detail))
        self.status = status
        self.detail = detail


class BadAnswer(ApiError):
    """The service answered with a success status and a body that is not what its API promises
    (not JSON, a field missing or of another type, broken base64). Status 502, as a proxy says
    of a bad upstream answer."""

    def __init__(self, detail: str) -> None:
        super().__init__(502, detail)


class ServiceUnreachable(ApiError):
    """No answer from the service at `url` (refused, unreachable, timed out, connection broken):
    status 0, as no HTTP status came back; `reason` is what the connection said."""

    def __init__(self, url: object, error: Exception) -> None:
        self.url = str(url).rstrip("/")
        self.reason = str(error) or type(error).__name__
        super().__init__(0, "the service at %s is unreachable: %s" % (self.url, self.reason))
        self.args = (self.detail,)  # no "0 " in front: there was no answer to number


class NoBroker(Exception):
    """The service hands out no MQTT credentials at enrollment (it drives no broker)."""


@contextmanager
def _answer(what: str) -> Iterator[None]:
    """Reading a service answer: what breaks its shape becomes BadAnswer (found by fuzzing:
    KeyError, TypeError, binascii.Error escaped); the protocol's typed errors pass unchanged."""
    try:
        yield
    except (certificate.CertificateError, KeyFormatError, enrollment.EnrollmentError):
        raise
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        raise BadAnswer("malformed answer to %s (%s)" % (what, type(e).__name__)) from None


def _detail(r: httpx.Response) -> str:
    """The `detail` of an error answer, else its text."""
    try:
        doc = r.json()
    except ValueError:
        return r.text
    detail = doc.get("detail", r.text) if isinstance(doc, dict) else r.text
    return detail if isinstance(detail, str) else json.dumps(detail)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@dataclass(frozen=True)
class Claims:
    claims: list[dict[str, Any]]
    tokens: list[str]  # shown once by the service


@dataclass(frozen=True)
class RevocationListInfo:
    data: bytes  # the SignedRevocationList as served
    crl: certificate.RevocationList  # verified with the CA keys
    ca_keys: list[bytes]


@dataclass(frozen=True)
class Enrolled:
    certificate: bytes  # SignedCertificate, verified
    cert: Certificate
    ca_keys: list[bytes]
    revocation_list: bytes
    mqtt: dict[str, Any] | None

    def __repr__(self) -> str:  # the MQTT password stays out of logs and tracebacks
        return "<Enrolled %s serial=%s>" % (self.cert.device_id, self.cert.serial.hex())


@dataclass(frozen=True)
class RelayEnvelope:
    """An envelope the HTTP relay kept for this device (docs/broker.md, "Relay"). `id` is the
    relay's, never reused: the cursor for the next fetch and the name to acknowledge."""
    id: int
    sender: str
    envelope: bytes
    received_at: str


class ServiceClient:
    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT, transport: httpx.BaseTransport | None = None,
                 http: httpx.Client | None = None) -> None:
        self.http = http or httpx.Client(base_url=url.rstrip("/"), timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, *, headers: dict[str, str] | None = None,
              content: bytes | None = None, params: dict[str, Any] | None = None) -> Any:
        try:
            r = self.http.request(method, path, headers=headers, content=content,
                                  params={k: v for k, v in params.items() if v is not None} if params else None)
        except httpx.HTTPError as e:
            raise ServiceUnreachable(self.http.base_url, e) from None
        if r.status_code >= 400:
            raise ApiError(r.status_code, _detail(r))
        with _answer("%s %s" % (method, path)):
            return r.json() if r.content else None

    # --- public endpoints ---

    def ca_keys(self) -> list[bytes]:
        """The Fleet CA public keys the service reports. Pin them at provisioning time: later
        answers are verified against the pinned set, not against what the service says."""
        doc = self.call("GET", "/ca")
        with _answer("GET /ca"):
            return [_unb64(k["public_key"]) for k in doc["keys"]]

    def revocation_list(self, trusted_keys: Sequence[bytes], last_version: int = 0) -> RevocationListInfo:
        """The current signed revocation list, verified with `trusted_keys` and newer than
        `last_version` (certificate.RolledBack otherwise)."""
        doc = self.call("GET", "/revocations")
        with _answer("GET /revocations"):
            data = _unb64(doc["revocation_list"])
            crl = certificate.verify_revocation_list(data, list(trusted_keys), last_version)
            return RevocationListInfo(data, crl, [_unb64(k) for k in doc["ca_keys"]])


    def backup_params(self, device_id: str) -> dict[str, Any]:
        """Salt and Argon2id parameters of a device's backup (what a restore derives its token from)."""
        doc = self.call("GET", "/backups/%s/params" % device_id)
        if not isinstance(doc, dict):
            raise BadAnswer("malformed answer to GET /backups/%s/params" % device_id)
        return doc

    def fetch_backup(self, device_id: str, auth: bytes) -> bytes:
        """The sealed blob, for the token e2ee_host.backup.auth_token() derives from the passphrase."""
        try:
            r = self.http.post("/backups/%s/fetch" % device_id, json={"auth": _b64(auth)})
        except httpx.HTTPError as e:
            raise ServiceUnreachable(self.http.base_url, e) from None
        if r.status_code >= 400:
            raise ApiError(r.status_code, _detail(r))
        return r.content


class OperatorClient(ServiceClient):
    """Operator calls, authenticated with an API key (X-API-Key)."""

    def __init__(self, url: str, api_key: str, **kw: Any) -> None:
        super().__init__(url, **kw)
        self._headers = {"X-API-Key": api_key}

    def __repr__(self) -> str:
        return "<OperatorClient %s>" % self.http.base_url

    def _op(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        headers = dict(self._headers)
        content = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            content = json.dumps(body).encode()
        return self.call(method, path, headers=headers, content=content, params=params)

    def create_claims(self, fleet: str, *, quota: int = 1, count: int = 1, expires_in: int = 86_400,
                      owner: str = "", roles: Iterable[str] = (), label: str = "",
                      require_hardware: bool = False, mqtt: bool = False) -> Claims:
        """mqtt: each token also gets a broker credential for zero-touch enrollment over MQTT
        (username claim:<id>, the token as password; docs/provisioning.md, "Service channel")."""
        body: dict[str, Any] = {"fleet": fleet, "quota": quota, "count": count, "expires_in": expires_in,
                                "owner": owner, "roles": list(roles), "label": label,
                                "require_hardware": require_hardware}
        if mqtt:
            body["mqtt"] = True
        doc = self._op("POST", "/claims", body)
        return Claims(doc["claims"], doc["tokens"])

    def list_claims(self, fleet: str | None = None) -> list[dict[str, Any]]:
        return self._op("GET", "/claims", params={"fleet": fleet})  # type: ignore[no-any-return]

    def revoke_claim(self, claim_id: int, reason: str = "") -> dict[str, Any]:
        """No enrollment spends the claim from now on; returns the claim (revoked_at set)."""
        return self._op("POST", "/claims/%d/revoke" % claim_id, {"reason": reason})  # type: ignore[no-any-return]

    def list_devices(self, fleet: str | None = None, owner: str | None = None,
                     limit: int = 1000) -> list[dict[str, Any]]:
        """Every device matching the filters (pages through the list)."""
        out: list[dict[str, Any]] = []
        while True:
            page = self._op("GET", "/devices", params={"fleet": fleet, "owner": owner, "offset": len(out),
                                                         "limit": limit})
            out += page
            if len(page) < limit:
                return out

    def device(self, device_id: str) -> dict[str, Any]:
        return self._op("GET", "/devices/%s" % device_id)  # type: ignore[no-any-return]

    def revoke(self, device_id: str, reason: str = "") -> dict[str, Any]:
        return self._op("POST", "/devices/%s/revoke" % device_id, {"reason": reason})  # type: ignore[no-any-return]

    def add_group_member(self, fleet: str, group: str, device_id: str) -> None:
        """The device's broker client may read and write the group topic from now on."""
        self._op("PUT", "/groups/%s/%s/members/%s" % (fleet, group, device_id))

    def remove_group_member(self, fleet: str, group: str, device_id: str) -> None:
        self._op("DELETE", "/groups/%s/%s/members/%s" % (fleet, group, device_id))

    def clear_registration_lock(self, device_id: str) -> None:
        self._op("DELETE", "/devices/%s/registration-lock" % device_id)

    def unlock_backup(self, device_id: str) -> None:
        """Resets the wrong-passphrase counter of a device's backup, locked (423) after too many
        wrong fetches (docs/backup.md)."""
        self._op("DELETE", "/backups/%s/lock" % device_id)

    def certificate_status(self, serial: str) -> dict[str, Any]:
        return self._op("GET", "/certificates/%s" % serial)  # type: ignore[no-any-return]

    def inventory(self, device_id: str) -> dict[str, Any]:
        return self._op("GET", "/keys/%s/inventory" % device_id)  # type: ignore[no-any-return]

    def bundle(self, device_id: str) -> PrekeyBundle:
        doc = self._op("GET", "/keys/%s/bundle" % device_id)
        with _answer("GET /keys/%s/bundle" % device_id):
            return PrekeyBundle.from_bytes(_unb64(doc["bundle"]))


class DeviceClient(ServiceClient):
    """A device's calls: enrollment with proof of possession, then requests signed with its
    identity key IS (the private keys stay in `keystore`; only public keys and signatures are
    sent)."""

    def __init__(self, url: str, device_id: str, fleet: str, keystore: KeyStore, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.device_id = device_id
        self.fleet = fleet
        self.keystore = keystore
        self.last_timestamp = 0
        self.uploaded_opk_ids: set[int] = set()

    def __repr__(self) -> str:
        return "<DeviceClient %s %s>" % (self.device_id, self.http.base_url)

    def enroll(self, token: str, *, board_uid: bytes = b"", board_key: bytes | None = None,
               registration_lock_pin: str | None = None, trusted_keys: Sequence[bytes] | None = None,
               operator_key: str | None = None, require_broker: bool = False) -> Enrolled:
        """Claim + fresh challenge + proof of possession (+ hardware evidence): the certificate,
        verified with `trusted_keys` (default: the CA keys the enrollment answer carries).
        `operator_key` (X-API-Key) lets an operator re-register an enrolled device id with new
        keys without its owner's claim (docs/provisioning.md, "Re-registration").
        `require_broker`: raise NoBroker, before the claim is used, when the challenge says the
        service will hand out no MQTT credentials."""
        doc = self.call("POST", "/enroll/challenge")
        with _answer("POST /enroll/challenge"):
            challenge = _unb64(doc["challenge"])
        if require_broker and not doc.get("broker"):
            raise NoBroker("the service at %s gives no broker credentials (it drives no broker, or has no broker "
                           "address for devices: E2EE_PROV_MQTT_HOST)" % self.http.base_url)
        fields = enrollment.enrollment_fields(self.keystore, challenge, token, self.device_id, self.fleet,
                                              board_uid, board_key)
        body: dict[str, Any] = {"claim_token": token, "challenge": _b64(challenge), "device_id": self.device_id,
                                "fleet": self.fleet, **{k: _b64(v) for k, v in fields.items()}}
        if registration_lock_pin is not None:
            body["registration_lock_pin"] = registration_lock_pin
        headers = {"Content-Type": "application/json"}
        if operator_key is not None:
            headers["X-API-Key"] = operator_key
        doc = self.call("POST", "/enroll", headers=headers, content=json.dumps(body).encode())
        with _answer("POST /enroll"):
            ca_keys = [_unb64(k) for k in doc["ca_keys"]]
            trusted = list(trusted_keys) if trusted_keys is not None else ca_keys
            crl_data = _unb64(doc["revocation_list"])
            crl = certificate.verify_revocation_list(crl_data, trusted, 0)
            data = _unb64(doc["certificate"])
            cert = certificate.verify_certificate(data, trusted, int(time.time()), crl)
            mqtt = doc.get("mqtt")
        if (cert.identity_dh, cert.identity_sign, cert.device_id) != (
                self.keystore.ik_pub, self.keystore.is_pub, self.device_id):
            raise certificate.Malformed("the service certified other keys or another device id")
        return Enrolled(data, cert, ca_keys, crl_data, mqtt)

    def _timestamp(self) -> int:
        """Wall time in Unix milliseconds, 1 ms past the previous one when the clock has not
        moved on: unique per request (the service takes each signed message once) and ahead of
        wall time only while more than 1000 requests a second are signed (issue 12, finding 11)."""
        self.last_timestamp = max(time.time_ns() // 1_000_000, self.last_timestamp + 1)
        return self.last_timestamp

    def signed(self, method: str, path: str, body: bytes = b"", content_type: str = "application/json") -> Any:
        """A request signed with IS (docs/provisioning.md, "Authentication")."""
        ts = self._timestamp()
        signature = self.keystore.sign(enrollment.request_message(method, path, ts, self.device_id, body))
        headers = {"X-E2EE-Device": self.device_id, "X-E2EE-Timestamp": str(ts), "X-E2EE-Signature": _b64(signature)}
        if body:
            headers["Content-Type"] = content_type
        return self.call(method, path, headers=headers, content=body or None)

    def upload_prekeys(self, *, signed_prekey: bool = True, one_time: int | None = None) -> dict[str, Any]:
        """Publishes the current signed prekey (when asked) and the one-time prekeys not uploaded
        yet, generating `one_time` new ones first; returns the inventory."""
        if one_time:
            self.keystore.generate_one_time_prekeys(one_time)
        opks = [(i, pub) for i, pub in self.keystore.one_time_prekey_publics() if i not in self.uploaded_opk_ids]
        doc: dict[str, Any] = {"one_time_prekeys": [{"opk_id": i, "opk_pub": _b64(pub)} for i, pub in opks]}
        if signed_prekey:
            b = self.keystore.bundle()
            doc["signed_prekey"] = {"spk_id": b.spk_id, "spk_pub": _b64(b.spk_pub), "spk_sig": _b64(b.spk_sig)}
        inventory = self.signed("POST", "/keys", json.dumps(doc).encode())
        self.uploaded_opk_ids.update(i for i, _ in opks)
        return inventory  # type: ignore[no-any-return]

    def inventory(self) -> dict[str, Any]:
        return self.signed("GET", "/keys/%s/inventory" % self.device_id)  # type: ignore[no-any-return]

    def bundle(self, peer: str) -> PrekeyBundle:
        doc = self.signed("GET", "/keys/%s/bundle" % peer)
        with _answer("GET /keys/%s/bundle" % peer):
            return PrekeyBundle.from_bytes(_unb64(doc["bundle"]))

    def certificate_status(self, serial: str) -> dict[str, Any]:
        return self.signed("GET", "/certificates/%s" % serial)  # type: ignore[no-any-return]

    def set_registration_lock(self, pin: str) -> None:
        self.signed("PUT", "/me/registration-lock", json.dumps({"pin": pin}).encode())

    def remove_registration_lock(self) -> None:
        self.signed("DELETE", "/me/registration-lock")

    def report(self, *, delivered: int = 0, undelivered: int = 0, received: int = 0, decrypt_failures: int = 0,
               encrypt_failures: int = 0) -> None:
        """Reports counts of this client's own traffic since its previous report (POST /reports,
        docs/provisioning.md "Client reports"): counts only, each 0..10000; ApiError 429 when
        reported too often."""
        doc = {"delivered": delivered, "undelivered": undelivered, "received": received,
               "decrypt_failures": decrypt_failures, "encrypt_failures": encrypt_failures}
        self.signed("POST", "/reports", json.dumps(doc).encode())

    def put_backup(self, blob: bytes, auth: bytes) -> dict[str, Any]:
        """Stores this device's sealed backup (e2ee_host.backup.seal) with the hash of its token."""
        return self.signed("PUT", "/backups/%s" % self.device_id,  # type: ignore[no-any-return]
                           hashlib.sha256(auth).digest() + blob, content_type="application/octet-stream")

    # --- the HTTP relay (docs/broker.md, "Relay") ---

    def relay_register(self) -> None:
        """From now on the service keeps what arrives in this device's inbox for it to fetch."""
        self.signed("POST", "/relay/register")

    def relay_send(self, to: str, envelope: bytes, fleet: str | None = None) -> None:
        """Publishes `envelope` into `to`'s inbox on the broker (202 once the broker took it)."""
        body: dict[str, Any] = {"to": to, "envelope": _b64(envelope)}
        if fleet is not None:
            body["fleet"] = fleet
        self.signed("POST", "/relay/messages", json.dumps(body).encode())

    def relay_fetch(self, after: int = 0) -> list[RelayEnvelope]:
        """What waits in this device's inbox with an id above `after`, oldest first (at most 100).
        Page on with `after=` the last id; acknowledge by id what was handled (relay_acknowledge)."""
        doc = self.signed("GET", "/relay/messages?after=%d" % after)
        with _answer("GET /relay/messages"):
            return [RelayEnvelope(int(m["id"]), str(m["sender"]), _unb64(m["envelope"]), str(m["received_at"]))
                    for m in doc]

    def relay_acknowledge(self, ids: Iterable[int]) -> None:
        """The service forgets exactly these envelopes (the ids relay_fetch returned), never one
        that arrived after the fetch; acknowledging an id twice is harmless."""
        ids = list(ids)
        for i in range(0, len(ids), RELAY_ACK_BATCH):
            query = "&".join("id=%d" % n for n in ids[i:i + RELAY_ACK_BATCH])
            self.signed("DELETE", "/relay/messages?" + query)
