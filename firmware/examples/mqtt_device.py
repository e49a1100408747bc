# A board's application on the broker (docs/broker.md, docs/boards.md "Device runtime"): the
# enrolled device from its flash (e2ee.device, as `e2ee provision` left it: certified sessions, its
# TrustStore), its inbox link over MQTT with the credentials from enrollment, end-to-end delivery
# (docs/protocol.md §8: an outbox kept until the peer's receipt, each message delivered once, a
# session reset when one cannot be read), the fleet's revocation lists from the link's `crl` topic.
# Run in the board's filesystem root (the virtual board's flash directory). One command per stdin
# line (on a real board: from the application's own logic); lines starting "device:" are what the
# device shows.
#   start <peer> <bundle hex> <certificate hex>
#                               X3DH from the peer's bundle and certificate -> ok | refused <error>
#   bundle <peer> <bundle hex> <certificate hex>
#                               kept for the next time a session with peer must (re)start -> ok
#   send <peer> <text>          queue it in the outbox                       -> queued <id> | refused <error>
#   poll <ms> [<n>]             run the link for that long (or until n messages came)
#                                                                           -> polled <envelopes> dropped <total>
#   heap                        heap after a collection                      -> heap <allocated> <free>
# Shown as they happen: "device: <id> decrypted from <peer>: <text>" once per message, and
# "device: <id> message <id> to <peer> sent|delivered|failed <reason>".
# A message the device cannot use (a refused sender, a revoked peer, a malformed or poisoned
# envelope) is acknowledged and dropped by the link, which counts it and logs its error type.
import gc
import sys
import time
from binascii import unhexlify

from e2ee.device import Device  # loads the session stack and the crypto backends first
from e2ee import crypto
from e2ee.protocol.certificate import CertificateError
from e2ee.protocol.delivery import DeliveryError
from e2ee.protocol.keys import KeyAgreementError
from e2ee.protocol.session import SessionError
from e2ee.transport.link import Link
from e2ee.transport.mqtt import MQTTClient, MQTTException

REFUSED = (SessionError, CertificateError, KeyAgreementError, DeliveryError)
bundles = {}  # peer -> (bundle, certificate): the application's source of bundles today
count = [0, 0]  # envelopes handled, messages delivered (this poll)


def on_message(sender, data):
    count[1] += 1
    print("device: %s decrypted from %s: %s" % (dev.device_id, sender, data.decode()))


def on_status(peer, mid, status, reason):
    print("device: %s message %d to %s %s%s" % (dev.device_id, mid, peer, status, " " + reason if reason else ""))


def starter(peer):
    return bundles.pop(peer, None)


def on_envelope(sender, data):
    count[0] += 1
    dev.handle(sender, data)


def on_crl(data):
    version = dev.update_revocation_list(data)
    if version:
        print("device: %s revocation list version %d" % (dev.device_id, version))


def log(text):
    print("device: %s %s" % (dev.device_id, text))


def poll(ms, want):
    count[0] = count[1] = 0
    deadline = time.time() + ms / 1000
    while time.time() < deadline and count[1] < want:
        before = link.delivered
        try:
            link.poll()
        except (OSError, MQTTException):
            print("device: %s lost the broker; reconnecting" % dev.device_id)
            try:
                link.connect_with_backoff(attempts=2)
            except (OSError, MQTTException) as e:
                print("device: %s refused by the broker (%s): revoked?" % (dev.device_id, e))
                break
        if link.delivered == before:
            link.wait(10)  # idle: until something comes
    print("polled", count[0], "dropped", link.dropped)


dev = Device.open(on_message=on_message, on_status=on_status, starter=starter)
settings = dev.settings()
mqtt = settings["mqtt"]
link = Link(MQTTClient, mqtt["host"], mqtt["port"], settings["fleet"], dev.device_id, mqtt["password"], on_envelope,
            on_crl, keepalive=30, log=log, delivery=dev)
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
        elif cmd == "bundle":
            args = rest.split(" ")
            bundles[args[0]] = (unhexlify(args[1]), unhexlify(args[2]) if len(args) > 2 else None)
            print("ok")
        elif cmd == "send":
            peer, text = rest.split(" ", 1)
            print("queued", dev.send(peer, text.encode()))
    except REFUSED as e:
        print("refused", type(e).__name__)
    if cmd == "poll":
        args = rest.split(" ")
        poll(int(args[0]), int(args[1]) if len(args) > 1 else 1 << 30)
    elif cmd == "heap":
        gc.collect()
        print("heap", gc.mem_alloc(), gc.mem_free())
