# The service channel, the board's side (docs/provisioning.md, "Service channel"): requests to the
# provisioning service over the board's one MQTT connection, as AWS IoT's jobs topics do. A
# request goes out on the device's own req topic, signed by its identity key IS over the same
# bytes as the HTTP API (e2ee.protocol.enrollment.request_message); the answer comes back on its
# resp topic, matched by request id. Nothing blocks: request() publishes and returns, the link's
# message callback hands answers to handle(), step() expires what got no answer.
#
#   svc = Service.for_device(fleet, device_id, keystore.sign)
#   link = Link(..., service=svc)               # subscribes svc.topic, routes its answers, publishes
#   svc.bundle("gateway-1", got)                # got(status, doc): 200 and the answer, or status, detail
#   svc.sync_time()                             # boards without a real-time clock, before signing
#   starter = BundleStarter(svc, dev.start)     # Delivery's starter: sessions from fetched bundles
#
# Wire (what api/channel.py on the service reads): one JSON line
#   {"id": "<12 hex>", "m": "GET", "p": "/keys/gateway-1/bundle", "ts": <Unix ms>, "sig": "<base64>"}
# then the body; the answer {"id": ..., "status": 200, "body": {...}} or {..., "status": 404,
# "detail": "..."}. `ts` is unique per request (the service takes a signed request once) and
# increasing (it refuses a write not newer than the last).
#
# RAM: a request's bytes live only while it is published; per request in flight its id, callback
# and deadline (MAX_PENDING of them).
import binascii
import json
import os
import time

from e2ee.protocol.enrollment import request_message
from e2ee.transport import topics
from e2ee.transport.link import _diff, _ticks  # the link's monotonic ms clock

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

MAX_PENDING = const(4)  # requests in flight at once: a board asks for one thing at a time
TIMEOUT_MS = const(30000)  # an answer not here by then counts as lost (status 0); ask again
_PLAUSIBLE_MS = 1600000000000  # a wall clock below this (2020-09) is not set: the service's time is used
_NO_ANSWER = const(0)

def _wall_ms():
    if hasattr(time, "time_ns"):
        return time.time_ns() // 1000000
    return int(time.time() * 1000)


# A request that could not go out: no clock yet to sign with, too many in flight, no link.
class ServiceError(Exception):
    pass


class Service:
    # request_topic / topic: where requests go and answers come (topic: subscribe to it);
    # device_id and sign(message) -> signature: the signer (None: unsigned requests only, the
    # claim's enrollment channel); publish(topic, payload): set by the Link (or by hand).
    def __init__(self, request_topic, topic, device_id=None, sign=None, timeout_ms=TIMEOUT_MS):
        self.request_topic = request_topic
        self.topic = topic
        self.device_id = device_id
        self.publish = None
        self.timeout_ms = timeout_ms
        self.answered = 0
        self.lost = 0  # requests that got no answer in time
        self.sent_bytes = 0  # topic + payload of every request published, answers received
        self.received_bytes = 0
        self._topic_b = topic.encode()
        self._sign = sign
        self._pending = {}  # id -> (callback, ticks when sent)
        self._last_ts = 0
        self._synced = None  # (the service's Unix ms, ticks then), once sync_time() was answered

    def __repr__(self):
        return "<Service %s pending=%d>" % (self.request_topic, len(self._pending))

    @classmethod
    def for_device(cls, fleet, device_id, sign, **kw):
        return cls(topics.service_request(fleet, device_id), topics.service_response(fleet, device_id),
                   device_id, sign, **kw)

    @classmethod
    def for_claim(cls, fleet, claim, **kw):
        return cls(topics.enroll_request(fleet, claim), topics.enroll_response(fleet, claim), **kw)

    # --- time ---

    # Unix milliseconds: the service's clock once sync_time() was answered (carried on by the
    # tick counter, which a board's ticks_diff follows for 6 days: sync again daily), else the
    # board's own when it is set; None before either.
    def now_ms(self):
        if self._synced is not None:
            return self._synced[0] + _diff(_ticks(), self._synced[1])
        wall = _wall_ms()
        return wall if wall >= _PLAUSIBLE_MS else None

    # Asks the service's clock (unsigned: a board without one cannot sign yet); on_answer as for
    # request(). The round trip's half is added to the service's time.
    def sync_time(self, on_answer=None):
        sent = _ticks()

        def got(status, doc):
            if status == 200 and isinstance(doc, dict) and isinstance(doc.get("now_ms"), int):
                now = _ticks()
                self._synced = (doc["now_ms"] + _diff(now, sent) // 2, now)
            if on_answer is not None:
                on_answer(status, doc)
        return self.request("GET", "/time", on_answer=got, signed=False)

    # --- requests ---

    # Publishes a request; on_answer(status, doc) once: 200 and the answer's body, or the
    # service's status and detail, or 0 and why when no answer came within timeout_ms. Returns
    # the request id. Raises ServiceError (nothing sent) or what publish raises (the link is down).
    def request(self, method, path, body=b"", on_answer=None, signed=True):
        if len(self._pending) >= MAX_PENDING:
            raise ServiceError("%d requests in flight" % len(self._pending))
        if self.publish is None:
            raise ServiceError("no link to publish with")
        rid = binascii.hexlify(os.urandom(6)).decode()
        head = {"id": rid, "m": method, "p": path}
        if signed:
            if self._sign is None:
                raise ServiceError("nothing to sign with")
            now = self.now_ms()
            if now is None:
                raise ServiceError("no clock yet: sync_time() first")
            ts = max(now, self._last_ts + 1)
            self._last_ts = ts
            head["ts"] = ts
            head["sig"] = binascii.b2a_base64(self._sign(request_message(method, path, ts, self.device_id, body)),
                                              newline=False).decode()
        payload = json.dumps(head).encode() + b"\n" + body
        head = None
        self._pending[rid] = (on_answer, _ticks())
        try:
            self.publish(self.request_topic, payload)
        except BaseException:
            del self._pending[rid]
            raise
        self.sent_bytes += len(self.request_topic) + len(payload)
        return rid

    # An answer from the link (any topic: False when it is not this channel's). An answer to no
    # request in flight (late, another board's on a shared claim topic, a replay) is ignored.
    def handle(self, topic, payload):
        if isinstance(topic, str):
            topic = topic.encode()
        if topic != self._topic_b:
            return False
        self.received_bytes += len(topic) + len(payload)
        try:
            doc = json.loads(payload)
            entry = self._pending.pop(doc["id"], None)
        except (ValueError, KeyError, TypeError):
            return True  # not an answer: dropped
        if entry is not None:
            self.answered += 1
            code = doc.get("status")
            if type(code) is not int:  # an answer that says nothing: as good as none
                code, doc = _NO_ANSWER, {"detail": "malformed answer"}
            if entry[0] is not None:
                entry[0](code, doc.get("body") if code == 200 else doc.get("detail"))
        return True

    # Expires requests without an answer: their callbacks get status 0. Call from the main loop.
    def step(self):
        now = _ticks()
        for rid in [r for r, e in self._pending.items() if _diff(now, e[1]) >= self.timeout_ms]:
            entry = self._pending.pop(rid)
            self.lost += 1
            if entry[0] is not None:
                entry[0](_NO_ANSWER, "no answer within %d ms" % self.timeout_ms)

    def pending(self):
        return len(self._pending)

    # --- operations (docs/provisioning.md, "Service channel") ---

    # The peer's prekey bundle with one of its one-time prekeys (handed out once) and its newest
    # certificate: {"device_id", "bundle", "one_time_prekey", "certificate"} (base64 fields).
    def bundle(self, peer, on_answer):
        return self.request("GET", "/keys/%s/bundle" % peer, on_answer=on_answer)

    # This device's prekey inventory at the service: {"one_time_prekeys", "signed_prekey_id", "replenish"}.
    def inventory(self, on_answer):
        return self.request("GET", "/keys/%s/inventory" % self.device_id, on_answer=on_answer)

    # A key-directory upload (the JSON body of POST /keys); answered with the inventory.
    def upload_prekeys(self, body, on_answer):
        return self.request("POST", "/keys", body, on_answer=on_answer)

    # The current signed revocation list: {"version", "revocation_list", "ca_keys", ...}; verify it.
    def revocation_list(self, on_answer):
        return self.request("GET", "/revocations", on_answer=on_answer, signed=False)


# Delivery's starter (e2ee.protocol.delivery.Delivery(starter=...), or a device's that wraps it):
# a session that must (re)start needs the peer's bundle and certificate. The first call asks the
# service and raises BundlePending (Delivery tries again later; nothing blocks); the answer
# starts the session at once through start(peer, bundle, certificate), which must also tell the
# Delivery (Delivery.started(peer), as Device.start does), or, without start, is returned by the
# next call as (bundle, certificate). A peer the service refuses (404 unknown or another fleet,
# 410 revoked, 403) or whose certificate does not verify raises delivery.Undeliverable at the
# next call: its messages fail.
class BundlePending(ServiceError):
    pass


class BundleStarter:
    def __init__(self, service, start=None):
        self.service = service
        self.start = start
        self._asked = {}  # peer -> request id in flight
        self._got = {}  # peer -> (bundle, certificate), without start
        self._refused = {}  # peer -> why

    def __call__(self, peer):
        why = self._refused.pop(peer, None)
        if why is not None:
            from e2ee.protocol.delivery import Undeliverable
            raise Undeliverable(why)
        got = self._got.pop(peer, None)
        if got is not None:
            return got
        if peer not in self._asked:
            try:
                self._asked[peer] = self.service.bundle(peer, lambda status, doc: self._answer(peer, status, doc))
            except (ServiceError, OSError):
                pass  # no link or clock yet: asked at the next call
        raise BundlePending(peer)

    def _answer(self, peer, status, doc):
        self._asked.pop(peer, None)
        if status in (403, 404, 410):
            self._refused[peer] = "the service refused %s's bundle: %d %s" % (peer, status, doc)
            return
        if status != 200:
            return  # lost, rate-limited, the service's trouble: asked again at the next call
        try:
            bundle = binascii.a2b_base64(doc["bundle"])
            certificate = binascii.a2b_base64(doc["certificate"])
        except (KeyError, TypeError, ValueError):
            self._refused[peer] = "malformed bundle answer for %s" % peer
            return
        if self.start is None:
            self._got[peer] = (bundle, certificate)
            return
        try:
            self.start(peer, bundle, certificate)
        except (OSError, MemoryError):
            raise
        except Exception as e:  # a certificate or bundle that does not verify: never usable
            self._refused[peer] = "%s: %s" % (type(e).__name__, e)
