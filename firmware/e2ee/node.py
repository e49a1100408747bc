# The high-level device API (docs/boards.md, "Node"): a board on its own in the field in a few
# lines, composed of the SDK's pieces and nothing else: zero-touch enrollment by claim at first
# boot (e2ee.enroll), the enrolled device with end-to-end delivery (e2ee.device.Device), its MQTT
# link over TLS with the service channel (e2ee.transport.link, e2ee.transport.service), sessions
# started from bundles fetched over that channel (BundleStarter), prekey upkeep (e2ee.upkeep) and
# revocation lists from the link's crl topic.
#
#   node = Node.open()                         # enrolls by claim if e2ee_data/claim.json waits
#   node.on_message(lambda peer, data: ...)    # each message once
#   mid = node.send("gateway", b"t=21.5")      # the session starts by itself (bundle over MQTT)
#   while not node.stopped:
#       node.step()                            # never sleeps; reconnects, upkeep, delivery
#       node.wait(100)                         # idle until a packet comes (or 100 ms)
#
# Settings: e2ee_data/node.json (written at flashing, next to the claim file), overridden by
# Node.open's keywords:
#   "ca"               the broker's CA certificate file (DER): TLS, the broker's certificate
#                      checked against it and its name (CERT_REQUIRED); without it plain TCP
#   "server_hostname"  the name the broker's certificate must carry (default: the broker host)
#   "keepalive"        MQTT keepalive in seconds (60)
#   "spk_every", "check_every", "soon", "target"   the upkeep's schedule (e2ee.upkeep: a week, an
#                      hour, 30 s after a used one-time prekey, 20 published)
# Other entries are the application's (node.config holds them all).
#
# Stopping: a node stops (node.stopped says why; step() does nothing more, send() raises
# NodeStopped) when a revocation list names its own certificate, or when the broker refuses its
# credentials REFUSALS times in a row (CONNACK 4 or 5: the operator revoked it, which deletes its
# broker account before the list is published, so a revoked board never sees the list).
import json

from e2ee import board

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

CONFIG_FILE = board.DATA_DIR + "/node.json"
CLAIM_FILE = board.DATA_DIR + "/claim.json"  # e2ee.enroll's
REFUSALS = const(3)  # refused CONNACKs in a row that stop the node (not one broker restart's worth)
_BAD_CREDENTIALS = (4, 5)  # CONNACK: bad user name or password, not authorised


class NodeStopped(Exception):
    pass


# Drops modules only enrollment needed, so their code and globals can be collected.
def _forget(*names):
    import sys
    for name in names:
        if sys.modules.pop(name, None) is not None:
            package, _, attr = name.rpartition(".")
            try:
                delattr(sys.modules[package], attr)
            except (KeyError, AttributeError):
                pass


# The node.json settings (an absent file: none), updated with `options`.
def load_config(path=CONFIG_FILE, **options):
    try:
        with open(path) as f:
            config = json.load(f)
    except OSError:
        config = {}
    config.update(options)
    return config


# client keywords for TLS from the settings: {"ssl": context} (plus ssl_params for a server name
# other than the host, which only e2ee.transport.mqtt.MQTTClient takes), or {} without "ca".
def tls_options(config):
    path = config.get("ca")
    if not path:
        return {}
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.verify_mode = ssl.CERT_REQUIRED  # MicroPython's PROTOCOL_TLS_CLIENT checks nothing by default
    context.load_verify_locations(cafile=path)
    out = {"ssl": context}
    if config.get("server_hostname"):
        out["ssl_params"] = {"server_hostname": config["server_hostname"]}
    return out


class Node:
    def __init__(self, device, link, service, upkeep, config):
        self.device = device
        self.link = link
        self.service = service
        self.upkeep = upkeep
        self.config = config
        self.stopped = None  # why the node stopped, or None
        self._refused = 0
        self._log = print

    def __repr__(self):
        return "<Node %s%s>" % (self.device.device_id, " stopped" if self.stopped else "")

    # Enrolls by claim when a claim file waits (blocks until enrolled: first boot, nothing else
    # runs yet) and restarts the board (a soft reset, SystemExit: main.py runs again on a clean
    # heap; restart=False goes on in this run, which needs the enrollment's heap as well); then
    # opens the enrolled device and its link (not connected yet: step() connects).
    # client_class: e2ee.transport.mqtt.MQTTClient (default) or umqtt.simple's MQTTClient; log(text)
    # for the link's and the upkeep's events (default print). Raises enroll.EnrollError, OSError,
    # device.NotEnrolled (no claim and no enrollment).
    @classmethod
    def open(cls, client_class=None, config_file=CONFIG_FILE, log=None, restart=True, **options):
        config = load_config(config_file, **options)
        tls = tls_options(config)
        if client_class is None:
            from e2ee.transport.mqtt import MQTTClient as client_class
        if board.exists(CLAIM_FILE):  # (e2ee.enroll itself is not loaded on an enrolled board's boots)
            from e2ee import enroll
            if enroll.pending():
                enroll.by_claim(client_class, **tls)
                if restart:
                    import sys
                    sys.exit()  # a soft reset: main.py runs again, as the enrolled board, on a clean heap
            _forget("e2ee.enroll", "e2ee.provision")
        from e2ee.device import Device
        from e2ee.transport.link import Link
        from e2ee.transport.service import BundleStarter, Service
        from e2ee.upkeep import Upkeep
        dev = Device.open()
        settings = dev.settings()
        fleet, mqtt = settings["fleet"], settings["mqtt"]
        svc = Service.for_device(fleet, dev.device_id, dev.sessions.keystore.sign)
        dev.starter = BundleStarter(svc, dev.start)  # the answer starts the session at once
        node = cls(dev, None, svc, None, config)
        node._log = log or print
        node.link = Link(client_class, mqtt["host"], mqtt["port"], fleet, dev.device_id, mqtt["password"],
                         dev.handle, node._crl, keepalive=config.get("keepalive", 60), log=log, service=svc,
                         delivery=dev, **tls)
        keep = {k: config[k] for k in ("spk_every", "check_every", "soon", "target") if k in config}
        node.upkeep = Upkeep(svc, dev.sessions, dev._config, on_event=node._event, **keep)
        return node

    @property
    def device_id(self):
        return self.device.device_id

    # on_message(sender, data): each message once (bytes).
    def on_message(self, callback):
        self.device.on_message = callback

    # on_status(peer, mid, status, reason): "sent", "delivered", "failed" (e2ee.device).
    def on_status(self, callback):
        self.device.on_status = callback

    # Queues data for peer on flash and returns its message id; the session starts by itself (the
    # peer's bundle and certificate over the service channel). Raises NodeStopped,
    # delivery.OutboxFull (messages wait for receipts: try later), delivery.DeliveryError (too large).
    def send(self, peer, data):
        if self.stopped:
            raise NodeStopped(self.stopped)
        return self.device.send(peer, data)

    # Messages to peer waiting for their receipt.
    def pending(self, peer):
        return self.device.pending(peer)

    # One turn of the main loop: the link (connect when due, receive, deliver, receipts, resend),
    # the upkeep. Never sleeps (a connect attempt blocks up to the link's timeout). True while up.
    def step(self):
        if self.stopped:
            return False
        up = self.link.step()
        if up:
            self._refused = 0
            self.upkeep.step()
            return True
        e = self.link.error
        if e is not None:
            self.link.error = None  # seen once
            self._log("e2ee: link down: %s %s" % (type(e).__name__, e))  # codes and TLS reasons: no secrets
            refused = type(e).__name__ in ("ConnectRefused", "MQTTException")  # either client's CONNACK
            if refused and e.args and e.args[0] in _BAD_CREDENTIALS:
                self._refused += 1
                if self._refused >= REFUSALS:
                    self.stop("the broker refuses this board's credentials (CONNACK %d)" % e.args[0])
        return False

    # An idle main loop's pause: until a packet arrives or ms milliseconds (at once when down).
    def wait(self, ms):
        if not self.stopped:
            self.link.wait(ms)

    # Stops: the link closed, nothing sent any more; what waits in the outbox stays on flash.
    def stop(self, why="stopped"):
        self.stopped = why
        self.link.close()

    def _event(self, text):
        self._log("e2ee: " + text)

    # A list from the crl topic: stored when newer; the node stops when it names its own certificate.
    def _crl(self, data):
        version = self.device.update_revocation_list(data)
        if version is None:
            return
        self._log("e2ee: revocation list %d" % version)
        trust = self.device.sessions.trust
        from e2ee.protocol.certificate import decode_certificate_unverified
        if trust.is_revoked(decode_certificate_unverified(trust.certificate).serial):
            self.stop("this board's certificate is revoked (list %d)" % trust.version)
