"""Linking from a host (docs/linking.md): the owner's primary approves a new device from its QR
payload; a host can also be the new device. The channel crypto is the device package's
(e2ee.protocol.linking); this module moves its messages through the service's rendezvous and
records the link. Both sides poll the rendezvous with backoff inside the service's rate limit and
wait as long as their timeout says (docs/linking.md §2, "Polling").

    approve(primary, payload, owner, confirm=lambda code: input(code) == "y", trusted_keys=ca)
    link = NewDeviceLink(client); show(link.offer.payload()); code = link.wait(300); link.accept()
"""
from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import httpx

from e2ee.protocol import certificate, keys, linking
from e2ee_host.client import ApiError, BadAnswer, DeviceClient, ServiceClient, ServiceUnreachable, _detail

__all__ = ["POLL", "LinkRefused", "NewDeviceLink", "Pace", "answer_consent", "approve", "fetch_slot", "put_slot",
           "qr_png", "qr_text"]


class LinkRefused(linking.LinkError):
    pass


def _object(data: bytes, what: str) -> dict[str, Any]:
    """An opened channel message as the JSON object it must be; LinkRefused otherwise (found by
    fuzzing: JSONDecodeError and AttributeError escaped)."""
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise LinkRefused("the %s is not a JSON object" % what)
    return doc


class Pace(NamedTuple):
    """The waits between attempts on a rendezvous slot, seconds: `first`, then each `growth` times
    the last, at most `longest` (docs/linking.md §2, "Polling")."""
    first: float = 1.0
    growth: float = 1.5
    longest: float = 5.0


# The slots sit behind the service's enrollment rate limit, per client address (20 requests, 2 more
# a second, by default), which both sides of a link share when they sit behind one address: from
# 1 s to 5 s apart, one side polls 9 times in its first 30 s and then 0.2 times a second.
POLL = Pace()


def _retry_after(r: httpx.Response) -> float:
    """The delay a 429 asks for (RFC 9110 §10.2.3, delay-seconds); 1 s when it names none we read."""
    try:
        return max(0.0, float(int(r.headers["Retry-After"])))
    except (KeyError, ValueError):
        return 1.0


def _until_answered(service: ServiceClient, method: str, path: str, *, timeout: float, pace: Pace,
                    content: bytes | None = None, waiting: bool = False) -> httpx.Response:
    """`method path` on the rendezvous, again while the answer is 429 (after at least its
    Retry-After), no answer (the service restarting; a write only when it never reached the
    service) or, when `waiting` for the other side, 404; `pace` apart, growing. Returns any other
    answer; at `timeout`: LinkRefused when the other side never wrote, ApiError when the service
    stayed unreachable or kept refusing."""
    headers = {"Content-Type": "application/octet-stream"} if content is not None else None
    # a write that may have arrived is not sent again: its repeat would find its own slot taken
    retried = httpx.TransportError if method == "GET" else httpx.ConnectError
    deadline = time.monotonic() + timeout
    wait = pace.first
    failure: Exception
    while True:
        try:
            r = service.http.request(method, path, content=content, headers=headers)
        except retried as e:
            failure = ServiceUnreachable(service.http.base_url, e)
            pause = wait
        except httpx.HTTPError as e:
            raise ServiceUnreachable(service.http.base_url, e) from None
        else:
            if r.status_code == 429:
                failure = ApiError(429, "the service's rate limit refused every attempt for %.0f s" % timeout)
                pause = max(wait, _retry_after(r))
            elif waiting and r.status_code == 404:
                failure = LinkRefused("no answer from the other device within %.0f s" % timeout)
                pause = wait
            else:
                return r
        left = deadline - time.monotonic()
        if left <= 0:
            raise failure
        time.sleep(min(pause, left))
        wait = min(wait * pace.growth, pace.longest)


def put_slot(service: ServiceClient, rendezvous: str, slot: str, data: bytes, timeout: float = 60.0, *,
             pace: Pace = POLL) -> None:
    """Writes this side's message into the rendezvous (retried while rate-limited, up to `timeout`)."""
    r = _until_answered(service, "PUT", "/rendezvous/%s/%s" % (rendezvous, slot), timeout=timeout, pace=pace,
                        content=data)
    if r.status_code >= 400:
        raise ApiError(r.status_code, _detail(r))


def fetch_slot(service: ServiceClient, rendezvous: str, slot: str, timeout: float = 60.0, *,
               pace: Pace = POLL) -> bytes:
    """Waits up to `timeout` for the other side's message in the rendezvous, polling at `pace`."""
    r = _until_answered(service, "GET", "/rendezvous/%s/%s" % (rendezvous, slot), timeout=timeout, pace=pace,
                        waiting=True)
    if r.status_code != 200:
        raise ApiError(r.status_code, _detail(r))
    return r.content


def approve(primary: DeviceClient, payload: str, owner: str, *, trusted_keys: Sequence[bytes],
            confirm: Callable[[str], bool], timeout: float = 60.0, pace: Pace = POLL) -> dict[str, Any]:
    """Checks the QR's fingerprint against the new device's certificate, runs the channel, asks
    `confirm(check_code)` (the user compares the code on both screens) and records the link with
    the primary's signed approval. Waits up to `timeout` for the new device's answer, polling at
    `pace`."""
    offer = linking.Offer.parse(payload)
    if offer.fleet != primary.fleet:
        raise LinkRefused("the device is in fleet %s, this primary in %s" % (offer.fleet, primary.fleet))
    ident = primary.signed("GET", "/identities/%s" % offer.device_id)
    try:
        cert_data = base64.b64decode(ident["certificate"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise BadAnswer("malformed answer to GET /identities/%s" % offer.device_id) from None
    cert = certificate.verify_certificate(cert_data, list(trusted_keys), int(time.time()))
    if cert.device_id != offer.device_id or keys.fingerprint(cert.identity_dh, cert.identity_sign) != offer.fingerprint:
        raise LinkRefused("the QR code's fingerprint does not match %s's certified identity" % offer.device_id)
    channel, ephemeral = linking.Channel.for_primary(offer)
    hello = json.dumps({"owner": owner, "primary": primary.device_id,
                        "fingerprint": primary.keystore.fingerprint().hex()}).encode()
    put_slot(primary, offer.rendezvous(), "offer", bytes(ephemeral) + channel.seal_offer(hello), timeout, pace=pace)
    if not confirm(channel.check_code):
        raise LinkRefused("the check codes differ: someone else answered the QR code")
    answer = _object(channel.open_answer(fetch_slot(primary, offer.rendezvous(), "answer", timeout, pace=pace)),
                     "new device's answer")
    consent = answer_consent(answer, offer)
    signature = primary.keystore.sign(linking.approval_message(owner, offer.device_id, offer.fingerprint))
    body = {"owner": owner, "device_id": offer.device_id, "fingerprint": base64.b64encode(offer.fingerprint).decode(),
            "approval": base64.b64encode(signature).decode(), "consent": consent}
    result = primary.signed("POST", "/links", json.dumps(body).encode())
    return {**result, "check_code": channel.check_code}


def answer_consent(answer: dict[str, Any], offer: linking.Offer) -> str:
    """The new device's consent (base64) from its opened answer; LinkRefused when it declined or
    sent none. The service checks the signature (docs/linking.md §2-§3)."""
    consent = answer.get("consent")
    if answer.get("device_id") != offer.device_id or not answer.get("accept") or not isinstance(consent, str):
        raise LinkRefused("the new device declined")
    return consent


def qr_text(payload: str) -> str:
    """The payload as a terminal QR code (segno)."""
    import io

    import segno
    out = io.StringIO()
    segno.make(payload, error="m").terminal(out=out, compact=True)
    return out.getvalue()


def qr_png(payload: str, path: str) -> None:
    import segno
    segno.make(payload, error="m").save(path, scale=6)


class NewDeviceLink:
    """The new device's side, on a host: show `offer.payload()` (QR), then `wait()` for the
    primary's message, compare `check_code` on both screens, then `accept()`. The rendezvous is
    polled at `pace`."""

    def __init__(self, client: DeviceClient, pace: Pace = POLL) -> None:
        self.client = client
        self.pace = pace
        self.offer = linking.Offer.new(client.device_id, client.fleet, client.keystore.fingerprint())
        self.channel: linking.Channel | None = None
        self.hello: dict[str, Any] = {}

    def wait(self, timeout: float = 300.0) -> str:
        """Waits up to `timeout` s for the primary's offer; returns the check code to show."""
        data = fetch_slot(self.client, self.offer.rendezvous(), "offer", timeout, pace=self.pace)
        self.channel = self.offer.channel(data[:32])
        self.hello = _object(self.channel.open_offer(data[32:]), "primary's offer")
        return self.channel.check_code

    def accept(self, timeout: float = 60.0) -> None:
        """Answers the primary with this device's consent: its signature over the owner and the
        primary the (check-code confirmed) offer named, and its own fingerprint."""
        if self.channel is None:
            raise LinkRefused("no offer from a primary yet")
        owner, primary = self.hello.get("owner"), self.hello.get("primary")
        if not isinstance(owner, str) or not isinstance(primary, str):
            raise LinkRefused("the primary's offer names no owner or primary")
        consent = self.client.keystore.sign(linking.consent_message(owner, primary, self.offer.fingerprint))
        answer = json.dumps({"accept": True, "device_id": self.client.device_id,
                             "consent": base64.b64encode(consent).decode()}).encode()
        put_slot(self.client, self.offer.rendezvous(), "answer", self.channel.seal_answer(answer), timeout,
                 pace=self.pace)
