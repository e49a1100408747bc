# Zero-touch enrollment by claim over MQTT (docs/boards.md, "Zero-touch enrollment"): a board
# flashed with the SDK, its application and a claim file makes its keys at first boot, proves
# possession over the enrollment channel, receives its certificate and its broker account, and
# from then on connects as itself. No serial line, no host. `e2ee provision` stays for factories.
#
#   from e2ee import enroll
#   if enroll.pending():
#       enroll.by_claim(MQTTClient)     # blocks until enrolled (or raises EnrollError)
#
# The claim file, e2ee_data/claim.json (`e2ee claims create --mqtt` prints one per token):
#   {"fleet": "plant-north", "host": "broker.example", "port": 8883, "claim": 17, "token": "e2c_...",
#    "ca_keys": ["<base64>", ...], "device_id": "pump-7"}
# "claim" is the claim's id (its broker username is claim:<id>, the token its password: it may
# only use e2ee/v1/<fleet>/enroll/<id>/req and /resp); "ca_keys" pins the Fleet CA (the answer's
# certificate must verify under them; without them the answer's own keys are taken, trusting the
# broker's TLS as much as the answer); "device_id" is optional: without it the board is
# "d-" + the first 16 hex digits of its identity fingerprint.
#
# Steps: identity keys made here (e2ee.provision.generate: the hardware RNG, stored encrypted);
# a fresh challenge (POST /enroll/challenge over the channel); the proof of possession with the
# board's hardware evidence where it has a factory key (e2ee.provision.prove); POST /enroll with
# the broker password the board chose (random, sent only to the service: the claim's credential
# cannot read request topics, so boards sharing a batch claim never see each other's); the
# answer installed as `e2ee provision` installs it (e2ee.provision.install: certificate checked
# against these keys, TrustStore filled); the claim file deleted. The service deletes the claim's
# broker credential once the claim is spent.
import binascii
import json
import os
import time

from e2ee import board

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

CLAIM_FILE = board.DATA_DIR + "/claim.json"
_TRANSFER = board.DATA_DIR + "/enrollment.json"
_PASSWORD_BYTES = const(24)
_ONE_TIME = const(8)  # one-time prekeys made at first boot; the upkeep tops them up (e2ee.upkeep)
# (bytes sent, bytes received) of the last by_claim(): topics and payloads of its requests and answers
wire = (0, 0)


class EnrollError(Exception):
    # status: the service's HTTP-equivalent status (0: no answer in time)
    def __init__(self, status, detail):
        super().__init__("%d %s" % (status, detail))
        self.status = status
        self.detail = detail


# True when a claim file waits and the board is not enrolled yet.
def pending():
    if not board.exists(CLAIM_FILE):
        return False
    from e2ee import provision
    return not json.loads(provision.status())["enrolled"]


def _sleep_ms(ms):
    if hasattr(time, "sleep_ms"):
        time.sleep_ms(ms)
    else:
        time.sleep(ms / 1000)


# One request over the claim's channel, waiting for its answer (first boot: nothing else runs).
def _call(client, svc, path, body=b""):
    got = []
    svc.request("POST", path, body, on_answer=lambda status, doc: got.append((status, doc)), signed=False)
    while not got:
        client.check_msg()
        svc.step()
        if not got:
            _sleep_ms(10)
    status, doc = got[0]
    if status != 200:
        raise EnrollError(status, doc)
    return doc


# Enrolls the board with the claim in CLAIM_FILE over client_class (umqtt.simple's MQTTClient or
# e2ee.transport.mqtt.MQTTClient); returns the device id. timeout_ms: per answer; client_kw go to
# client_class (a TLS listener: ssl=<an ssl.SSLContext trusting the broker's CA>,
# ssl_params={"server_hostname": <the name on its certificate>}). Raises
# EnrollError (the service refused: its status and reason; 0: no answer), OSError (the network),
# or the client's error (a refused CONNACK: a spent or revoked claim).
def by_claim(client_class, timeout_ms=30000, connect_timeout=30, **client_kw):
    from e2ee import provision
    from e2ee.transport import topics
    from e2ee.transport.service import Service
    with open(CLAIM_FILE) as f:
        claim = json.load(f)
    state = json.loads(provision.status())
    if state["enrolled"]:
        return state["device_id"]
    if not state["identity"]:
        state = json.loads(provision.generate(_ONE_TIME))
    device_id = claim.get("device_id") or "d-" + state["fingerprint"][:16]
    state = None
    fleet, claim_id = claim["fleet"], claim["claim"]
    client = client_class("claim-%s-%s" % (claim_id, binascii.hexlify(os.urandom(4)).decode()), claim["host"],
                          claim["port"], topics.claim_user(claim_id), claim["token"], 60, **client_kw)
    svc = Service.for_claim(fleet, claim_id, timeout_ms=timeout_ms)
    svc.publish = lambda topic, payload: client.publish(topic, payload, qos=1)
    client.set_callback(svc.handle)
    try:
        client.connect(clean_session=True, timeout=connect_timeout)
        client.subscribe(svc.topic, 1)
        challenge = _call(client, svc, "/enroll/challenge")["challenge"]
        fields = json.loads(provision.prove(binascii.hexlify(binascii.a2b_base64(challenge)).decode(),
                                            claim["token"], device_id, fleet))
        password = binascii.b2a_base64(os.urandom(_PASSWORD_BYTES), newline=False).decode()
        password = password.replace("+", "-").replace("/", "_")  # URL-safe: 32 characters
        fields.update({"claim_token": claim["token"], "challenge": challenge, "device_id": device_id,
                       "fleet": fleet, "mqtt_password": password})
        body = json.dumps(fields).encode()
        fields = None
        answer = _call(client, svc, "/enroll", body)
        body = None
    finally:
        global wire
        wire = (svc.sent_bytes, svc.received_bytes)
        try:
            client.disconnect()
        except Exception:
            pass
    mqtt = answer.get("mqtt") or {}
    doc = {"device_id": answer["device_id"], "fleet": answer["fleet"], "service": "",
           "mqtt": {"host": mqtt.get("host") or claim["host"], "port": mqtt.get("port") or claim["port"],
                    "password": password},
           "certificate": answer["certificate"], "ca_keys": claim.get("ca_keys") or answer["ca_keys"],
           "revocation_list": answer["revocation_list"]}
    answer = None
    with open(_TRANSFER, "w") as f:
        json.dump(doc, f)
    doc = None
    provision.install(_TRANSFER)  # checks the certificate against these keys; deletes the file
    os.remove(CLAIM_FILE)
    return device_id
