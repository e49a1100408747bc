# An enrolled device as an application sees it (docs/boards.md, "Device runtime"): its identity,
# certificate and sessions from the board's flash, where e2ee.provision left them; envelopes in
# and out. Transports (MQTT, the serial link of the HIL rig) carry the envelopes.
#
#   dev = Device.open()
#   dev.start("gateway-1", bundle_bytes, gateway_certificate)   # X3DH from the peer's bundle
#   wire = dev.encrypt("gateway-1", b"valve open")
#   text = dev.decrypt("gateway-1", wire_from_peer)
#   dev.update_revocation_list(data)             # the link's `crl` messages
#
# Certified (docs/protocol.md §6, "Certified sessions"; issue 12, finding 1): open() loads the
# TrustStore that provisioning stored (Fleet CA keys, the device's certificate, the revocation
# list), so every session is bound to a CA certificate of its peer id: a fleet member cannot
# speak under another device's name, and a revoked peer is refused. Running without it takes
# an explicit Device.open(uncertified=True).
from e2ee import board
from e2ee.protocol.session import SessionManager  # first: loads the crypto backends (heap order)
from e2ee.protocol.keys import PrekeyBundle
from e2ee.protocol.store import NotFound, RecordStore


class NotEnrolled(Exception):
    pass


class Device:
    def __init__(self, device_id, sessions, config=None):
        self.device_id = device_id
        self.sessions = sessions
        self._config = config

    def __repr__(self):
        return "<Device %s%s>" % (self.device_id, "" if self.certified else " uncertified")

    # True when sessions are certified (a TrustStore is loaded).
    @property
    def certified(self):
        return self.sessions.trust is not None

    # The device stored under `directory` on flash (after provisioning, after any reboot), with
    # its TrustStore. uncertified=True opts out: sessions bind whatever identity a peer id
    # presents first and revocation lists are ignored (tests, labs: never a fleet in the field).
    @classmethod
    def open(cls, directory=board.DATA_DIR, uncertified=False):
        key = board.storage_key(directory)
        try:
            config = RecordStore(directory + "/config", "config", key)
            device_id = config.get("device-id").decode()
            trust = None if uncertified else _trust(directory, key, config)
            sessions = SessionManager.open(directory, key, trust=trust)
        except NotFound:
            raise NotEnrolled("this board is not enrolled: run e2ee provision")
        return cls(device_id, sessions, config)

    # What provisioning stored (e2ee.provision.install): fleet, service, broker credentials, the
    # certificate, CA keys and revocation list.
    def settings(self):
        import json
        return json.loads(self._config.get("device"))

    # X3DH from the peer's bundle bytes; a certified device needs the peer's SignedCertificate.
    def start(self, peer, bundle, certificate=None):
        self.sessions.start(peer, PrekeyBundle.from_bytes(bundle), certificate)

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
