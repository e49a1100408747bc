# A board on its own in the field (docs/boards.md, "Zero-touch enrollment"; docs/provisioning.md,
# "Service channel"): flashed with the SDK and a claim file only, it enrolls itself over MQTT at
# first boot (e2ee.enroll), then runs as itself on the broker: its Link with the service channel
# (e2ee.transport.service), sessions started from bundles the channel fetches (BundleStarter),
# prekey upkeep (e2ee.upkeep), the revocation list and the service's time. Run in the board's
# flash directory; one command per stdin line, answers on stdout:
#   micropython service_node.py [<broker CA file>]   (with a CA: the claim's broker is a TLS listener
#                                                      whose certificate names localhost)
#   time                      the service's clock            -> time <status> <service ms> <board ms>
#   crl                       the current revocation list     -> crl <status> <version> (verified, stored)
#   bundle <peer>             a certified session from the channel's bundle -> started <peer> | refused <why>
#   deliver <peer> <text>     end-to-end delivery (e2ee.protocol.delivery) with the BundleStarter: the
#                             session starts from the channel's bundle -> status ... delivered <mid>
#                             (from then on inbox messages go through the delivery layer)
#   send <peer> <text>        encrypt, publish to the inbox   -> sent <bytes>
#   poll <ms>                 run the link for that long      -> got <sender> <text> ... polled
#   upkeep <ms>               prekey upkeep until settled     -> upkeep <published> <spk id>
#   rotate <ms>               a new signed prekey, uploaded   -> rotated <spk id> <published>
#   auto <ms>                 the main loop with the upkeep until a message came and the upkeep
#                             settled again (a PreKeyMessage used a one-time prekey: topped up by
#                             itself)                         -> got ... auto <published> <held>
#   ask <method> <path> [<body>]  a signed request as given   -> answer <status> <detail or body keys>
#   wire                      bytes the channel carried       -> wire <sent> <received>
#   heap                      after a collection              -> heap <allocated> <free>
import gc
import json
import sys
import time
from binascii import a2b_base64

from e2ee import enroll
from e2ee.transport.mqtt import MQTTClient

if enroll.pending():
    tls = {}
    if len(sys.argv) > 1:
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.verify_mode = ssl.CERT_REQUIRED  # MicroPython's default checks nothing (CERT_NONE)
        context.load_verify_locations(cafile=sys.argv[1])
        tls = {"ssl": context, "ssl_params": {"server_hostname": "localhost"}}
    t0 = time.ticks_ms()
    print("enrolled", enroll.by_claim(MQTTClient, **tls), time.ticks_diff(time.ticks_ms(), t0), enroll.wire[0],
          enroll.wire[1])

from e2ee.device import Device  # noqa: E402 (the session stack loads after enrollment freed its heap)
from e2ee.transport.link import Link  # noqa: E402
from e2ee.transport.service import BundlePending, BundleStarter, Service  # noqa: E402
from e2ee.upkeep import Upkeep  # noqa: E402

dev = Device.open()
settings = dev.settings()
mqtt = settings["mqtt"]
svc = Service.for_device(settings["fleet"], dev.device_id, dev.sessions.keystore.sign)


delivery = None
statuses = []


received = [0]


def deliver(sender, data):
    received[0] += 1
    print("got", sender, bytes(data).decode())


def on_message(sender, data):
    if delivery is not None:
        delivery.handle(sender, data, deliver)
    else:
        deliver(sender, dev.decrypt(sender, data))


def on_status(peer, mid, status, reason):
    statuses.append((peer, mid, status))
    print("status", peer, mid, status, reason or "")


# The starter's start: the session, and the delivery told of it (what Device.start does with its own).
def start(peer, bundle, certificate):
    dev.start(peer, bundle, certificate)
    if delivery is not None:
        delivery.started(peer)


def on_crl(data):
    version = dev.update_revocation_list(data)
    if version:
        print("crl-topic", version)


def log(text):
    print("link:", text)


link = Link(MQTTClient, mqtt["host"], mqtt["port"], settings["fleet"], dev.device_id, mqtt["password"],
            on_message, on_crl, keepalive=30, log=log, service=svc)
link.connect_with_backoff()
starter = BundleStarter(svc, start)
upkeep = Upkeep(svc, dev.sessions, dev._config, soon=1, on_event=lambda text: print("keys:", text))
print("ready", dev.device_id)


def run(ms, done=None, keep=False):
    deadline = time.ticks_add(time.ticks_ms(), ms)
    while time.ticks_diff(deadline, time.ticks_ms()) > 0:
        link.step()
        if delivery is not None and link.client is not None:
            try:
                delivery.flush(link.send)
            except OSError:
                pass  # the link is down: step() reconnects, the next flush sends
        if keep:
            upkeep.step()
        if done is not None and done():
            return True
        time.sleep_ms(5)
    return False


def ask(call, *args):
    got = []
    call(*(args + (lambda status, doc: got.append((status, doc)),)))
    run(20000, lambda: got)
    return got[0] if got else (None, None)


while True:
    line = sys.stdin.readline()
    if not line:
        break
    cmd, _, rest = line.rstrip("\n").partition(" ")
    if cmd == "time":
        status, doc = ask(svc.sync_time)
        print("time", status, doc["now_ms"] if status == 200 else doc, svc.now_ms())
    elif cmd == "crl":
        status, doc = ask(svc.revocation_list)
        if status == 200:
            dev.update_revocation_list(a2b_base64(doc["revocation_list"]))
            print("crl", status, dev.sessions.trust.version)
        else:
            print("crl", status, doc)
    elif cmd == "bundle":
        peer = rest
        try:
            answered = svc.answered
            try:
                starter(peer)  # asks; the answer starts the session
            except BundlePending:
                pass
            run(20000, lambda: svc.answered > answered)
            if peer in starter._refused:
                starter(peer)  # raises Undeliverable: the service or the certificate refused
            print("started" if dev.sessions.has_session(peer) else "waiting", peer)
        except Exception as e:
            print("refused", type(e).__name__, e)
    elif cmd == "deliver":
        peer, text = rest.split(" ", 1)
        if delivery is None:
            from e2ee import board
            from e2ee.protocol.delivery import Delivery
            delivery = Delivery(dev.sessions, board.DATA_DIR, board.storage_key(), dev.device_id, starter=starter,
                                on_status=on_status)
        mid = delivery.send(peer, text.encode())
        run(30000, lambda: (peer, mid, "delivered") in statuses)
        print("delivered" if (peer, mid, "delivered") in statuses else "undelivered", mid)
    elif cmd == "send":
        peer, text = rest.split(" ", 1)
        wire = dev.encrypt(peer, text.encode())
        link.send(peer, wire)
        print("sent", len(wire))
    elif cmd == "poll":
        run(int(rest))
        print("polled")
    elif cmd == "upkeep":
        upkeep.check_now()
        run(int(rest), lambda: not upkeep.busy and upkeep.published is not None
            and upkeep.published >= upkeep.target and upkeep._next > 0, keep=True)
        print("upkeep", upkeep.published, dev.sessions.keystore.spk_id)
    elif cmd == "auto":
        before = received[0]

        def settled():
            now = svc.now_ms() // 1000
            return (received[0] > before and not upkeep.busy and upkeep.published == upkeep.target
                    and upkeep._next > now + 60)
        run(int(rest), settled, keep=True)
        print("auto", upkeep.published, dev.sessions.keystore.one_time_prekey_count())
    elif cmd == "rotate":
        upkeep.rotate()
        run(int(rest), lambda: not upkeep.busy)
        print("rotated", dev.sessions.keystore.spk_id, upkeep.published)
    elif cmd == "ask":
        parts = rest.split(" ", 2)
        status, doc = ask(lambda cb: svc.request(parts[0], parts[1], (parts[2] if len(parts) > 2 else "").encode(),
                                                 on_answer=cb))
        print("answer", status, json.dumps(sorted(doc) if isinstance(doc, dict) else doc))
    elif cmd == "wire":
        print("wire", svc.sent_bytes, svc.received_bytes)
    elif cmd == "heap":
        gc.collect()
        print("heap", gc.mem_alloc(), gc.mem_free())
