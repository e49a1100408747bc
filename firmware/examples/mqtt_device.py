# A board's application on the broker (docs/broker.md): the enrolled device from its flash
# (e2ee.device, as `e2ee provision` left it: certified sessions, its TrustStore), its inbox link
# over MQTT with the credentials from enrollment, envelopes decrypted by its sessions, the
# fleet's revocation lists from the link's `crl` topic. Run in the board's filesystem root (the
# virtual board's flash directory). One command per stdin line (on a real board: from the
# application's own logic); lines starting "device:" are what the device shows.
#   start <peer> <bundle hex> <certificate hex>
#                               X3DH from the peer's bundle and certificate -> ok | refused <error>
#   send <peer> <text>          encrypt, publish to the peer's inbox         -> sent <bytes> | refused <error>
#   poll <ms>                   handle arrivals for that long                -> polled <n> dropped <total>
# A message the device cannot use (a refused sender, a revoked peer, a malformed or poisoned
# envelope) is acknowledged and dropped by the link, which counts it and logs its error type.
import sys
import time
from binascii import unhexlify

from e2ee.device import Device  # loads the session stack and the crypto backends first
from e2ee import crypto
from e2ee.protocol.certificate import CertificateError
from e2ee.protocol.keys import KeyAgreementError
from e2ee.protocol.session import SessionError
from e2ee.transport.link import Link
from e2ee.transport.mqtt import MQTTClient, MQTTException

REFUSED = (SessionError, CertificateError, KeyAgreementError)
dev = Device.open()
settings = dev.settings()
mqtt = settings["mqtt"]
count = [0]


def on_message(sender, data):
    count[0] += 1
    text = bytes(dev.decrypt(sender, data)).decode()
    print("device: %s decrypted from %s: %s" % (dev.device_id, sender, text))


def on_crl(data):
    version = dev.update_revocation_list(data)
    if version:
        print("device: %s revocation list version %d" % (dev.device_id, version))


def log(text):
    print("device: %s %s" % (dev.device_id, text))


link = Link(MQTTClient, mqtt["host"], mqtt["port"], settings["fleet"], dev.device_id, mqtt["password"], on_message,
            on_crl, keepalive=30, log=log)
link.connect_with_backoff()
print("device: %s online (crypto %s, %s), inbox e2ee/v1/%s/d/%s/inbox" % (
    dev.device_id, crypto.default.name, "certified" if dev.certified else "UNCERTIFIED", settings["fleet"],
    dev.device_id))
print("ready")
while True:
    line = sys.stdin.readline()
    if not line:
        break
    cmd, _, rest = line.rstrip("\n").partition(" ")
    try:
        if cmd == "start":
            args = rest.split(" ")
            dev.start(args[0], unhexlify(args[1]), unhexlify(args[2]) if len(args) > 2 else None)
            print("ok")
        elif cmd == "send":
            peer, text = rest.split(" ", 1)
            wire = dev.encrypt(peer, text.encode())
            link.send(peer, wire)
            print("sent", len(wire))
    except REFUSED as e:
        print("refused", type(e).__name__)
    if cmd == "poll":
        count[0] = 0
        deadline = time.time() + int(rest) / 1000
        while time.time() < deadline:
            try:
                link.poll()
            except (OSError, MQTTException):
                print("device: %s lost the broker; reconnecting" % dev.device_id)
                try:
                    link.connect_with_backoff(attempts=2)
                except (OSError, MQTTException) as e:
                    print("device: %s refused by the broker (%s): revoked?" % (dev.device_id, e))
                    break
            time.sleep(0.01)
        print("polled", count[0], "dropped", link.dropped)
