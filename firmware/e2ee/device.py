# An enrolled device as an application sees it (docs/boards.md, "Device runtime"): its identity,
# certificate and sessions from the board's flash, where e2ee.provision left them, and end-to-end
# delivery over them (docs/protocol.md §8): messages in and out, each with its fate.
#
#   dev = Device.open(on_message=got, on_status=fate, starter=bundle_for)
#   mid = dev.send("gateway-1", b"valve open")   # kept in the outbox on flash; -> message id
#   link = Link(MQTTClient, ..., dev.handle, dev.update_revocation_list, delivery=dev)
#   link.step()                                  # in the main loop: receive, receipt, send, resend
#   got(sender, data)                            # each message once (bytes)
#   fate(peer, mid, status, reason)              # "sent", "delivered" (receipt), "failed" (why)
#   bundle_for(peer) -> (bundle, certificate)    # a fresh bundle when a session must (re)start
#
# Certified (docs/protocol.md §6, "Certified sessions"; issue 12, finding 1): open() loads the
# TrustStore that provisioning stored (Fleet CA keys, the device's certificate, the revocation
# list), so every session is bound to a CA certificate of its peer id: a fleet member cannot
# speak under another device's name, and a revoked peer is refused. Running without it takes
# an explicit Device.open(uncertified=True).
#
# encrypt()/decrypt() remain the bare session cipher (no receipts, no outbox): for transports
# that carry their own delivery (the HIL rig's serial line).
import time

from e2ee import board
from e2ee.protocol.session import SessionManager  # first: loads the crypto backends (heap order)
from e2ee.protocol.keys import PrekeyBundle
from e2ee.protocol.store import NotFound, RecordStore

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# Messages a board keeps per peer until their receipts: two windows (one on the way, one queued
# behind it, delivery.WINDOW = 16). Each costs a file on flash and about 30 bytes of RAM (its id
# and time); beyond it send() raises delivery.OutboxFull and the application decides.
OUTBOX = const(32)
_IDLE_FLUSH = const(1)  # seconds between flushes when nothing new is due (expiry, retries, resets)


class NotEnrolled(Exception):
    pass


# A session with the peer must (re)start and the starter has no bundle for it now: tried again
# later (delivery.py, 10 s).
class NoBundle(Exception):
    pass


class Device:
    # on_message(sender, data): each message once; on_status(peer, mid, status, reason);
    # starter(peer) -> (bundle bytes, certificate bytes) or None; see the top of this file.
    def __init__(self, device_id, sessions, config=None, directory=board.DATA_DIR, storage_key=None,
                 on_message=None, on_status=None, starter=None, max_outbox=OUTBOX):
        self.device_id = device_id
        self.sessions = sessions
        self.on_message = on_message
        self.on_status = on_status
        self.starter = starter
        self.max_outbox = max_outbox
        self._config = config
        self._dir = directory
        self._key = storage_key
        self._delivery = None
        self._due = True  # something may be due: flush() runs at once
        self._flushed = 0

    def __repr__(self):
        return "<Device %s%s>" % (self.device_id, "" if self.certified else " uncertified")

    # True when sessions are certified (a TrustStore is loaded).
    @property
    def certified(self):
        return self.sessions.trust is not None

    # The device stored under `directory` on flash (after provisioning, after any reboot), with
    # its TrustStore. uncertified=True opts out: sessions bind whatever identity a peer id
    # presents first and revocation lists are ignored (tests, labs: never a fleet in the field).
    # The callbacks and max_outbox as for Device(); they may also be set as attributes before the
    # first message.
    @classmethod
    def open(cls, directory=board.DATA_DIR, uncertified=False, **callbacks):
        key = board.storage_key(directory)
        try:
            config = RecordStore(directory + "/config", "config", key)
            device_id = config.get("device-id").decode()
            trust = None if uncertified else _trust(directory, key, config)
            sessions = SessionManager.open(directory, key, trust=trust)
        except NotFound:
            raise NotEnrolled("this board is not enrolled: run e2ee provision")
        return cls(device_id, sessions, config, directory, key, **callbacks)

    # What provisioning stored (e2ee.provision.install): fleet, service, broker credentials, the
    # certificate, CA keys and revocation list.
    def settings(self):
        import json
        return json.loads(self._config.get("device"))

    # X3DH from the peer's bundle bytes; a certified device needs the peer's SignedCertificate.
    # Messages waiting for a new session with peer (after a reset request) go on this one.
    def start(self, peer, bundle, certificate=None):
        self.sessions.start(peer, PrekeyBundle.from_bytes(bundle), certificate)
        if self._delivery is not None:
            self._delivery.started(peer)
        self._due = True

    # --- delivery (docs/protocol.md §8) ---

    # The Delivery over this device's sessions: its state and outboxes under the data directory
    # (delivery/, outbox/<peer>/, encrypted with the storage key), made at first use.
    @property
    def delivery(self):
        if self._delivery is None:
            from e2ee.protocol.delivery import Delivery
            self._delivery = Delivery(self.sessions, self._dir, self._key, self.device_id,
                                      starter=self._start_for_delivery,
                                      on_status=self._status, max_outbox=self.max_outbox)
        return self._delivery

    # Queues data for peer (on flash before this returns) and returns its message id, which
    # on_status names. Raises delivery.OutboxFull (max_outbox messages wait for receipts) or
    # delivery.DeliveryError (over delivery.MAX_PAYLOAD bytes); nothing is stored then.
    def send(self, peer, data):
        mid = self.delivery.send(peer, data)
        self._due = True
        return mid

    # Messages of peer waiting for a receipt (sent or not yet).
    def pending(self, peer):
        return self.delivery.pending(peer)

    # An inbox envelope from sender (the link's on_message): a message goes to on_message once, a
    # receipt settles the outbox, a reset request restarts the session. Raises what the
    # envelope's fault is (session.MESSAGE_ERRORS, delivery.DeliveryError): the link drops it.
    def handle(self, sender, envelope):
        self._due = True
        return self.delivery.handle(sender, envelope, self._deliver)

    # Publishes what is due with publish(peer, envelope) (the link's send): reset requests,
    # receipts, messages within each peer's window. Runs at once when something happened since
    # the last flush, else at most once per _IDLE_FLUSH seconds (expiry, retries). Returns the
    # number published.
    def flush(self, publish):
        now = time.time()
        if not self._due and now - self._flushed < _IDLE_FLUSH:
            return 0
        self._due, self._flushed = False, now
        return self.delivery.flush(publish)

    # The link reconnected: messages on the way may have been lost with the broker.
    def reconnected(self):
        self.delivery.reconnected()
        self._due = True

    def _deliver(self, sender, payload):
        if self.on_message is not None:
            self.on_message(sender, bytes(payload))

    def _status(self, peer, mid, status, reason):
        if self.on_status is not None:
            self.on_status(peer, mid, status, reason)

    # Delivery's starter: the application's, or none (the application calls start() itself).
    def _start_for_delivery(self, peer):
        got = None if self.starter is None else self.starter(peer)
        if got is None:
            raise NoBundle(peer)
        self.sessions.start(peer, PrekeyBundle.from_bytes(got[0]), got[1])

    # --- the bare session cipher ---

    def encrypt(self, peer, plaintext):
        return self.sessions.encrypt(peer, plaintext)

    def decrypt(self, peer, data):
        return self.sessions.decrypt(peer, data)

    # A SignedRevocationList from the link's `crl` topic: verified with the CA keys and stored
    # (trust.py); returns its version, or None when it is not newer than the stored one (the
    # broker hands the retained list over again after every reconnect) or the device is
    # uncertified. A forged or malformed list raises a certificate.CertificateError.
    def update_revocation_list(self, data):
        from e2ee.protocol.certificate import RolledBack
        trust = self.sessions.trust
        if trust is None:
            return None
        try:
            return trust.update_revocation_list(data)
        except RolledBack:
            return None


# The device's TrustStore; filled from the provisioning record the first time (a board enrolled
# before e2ee.provision.install wrote it, or restored from a backup, which carries no trust
# records).
def _trust(directory, key, config):
    from e2ee.protocol.trust import TrustStore
    trust = TrustStore(directory, key)
    if trust.certificate is None:
        from e2ee.provision import install_trust
        install_trust(trust, config)
    return trust
