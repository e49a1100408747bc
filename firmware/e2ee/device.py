# An enrolled device as an application sees it (docs/boards.md, "Device runtime"): its identity,
# certificate and sessions from the board's flash, where e2ee.provision left them; envelopes in
# and out. Transports (MQTT, the serial link of the HIL rig) carry the envelopes.
#
#   dev = Device.open()
#   dev.start("gateway-1", bundle_bytes)         # X3DH from the peer's prekey bundle
#   wire = dev.encrypt("gateway-1", b"valve open")
#   text = dev.decrypt("gateway-1", wire_from_peer)
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
        return "<Device %s>" % self.device_id

    # The device stored under `directory` on flash (after provisioning, after any reboot).
    @classmethod
    def open(cls, directory=board.DATA_DIR):
        key = board.storage_key(directory)
        try:
            config = RecordStore(directory + "/config", "config", key)
            device_id = config.get("device-id").decode()
            sessions = SessionManager.open(directory, key)
        except NotFound:
            raise NotEnrolled("this board is not enrolled: run e2ee provision")
        return cls(device_id, sessions, config)

    # What provisioning stored (e2ee.provision.install): fleet, service, broker credentials, the
    # certificate, CA keys and revocation list.
    def settings(self):
        import json
        return json.loads(self._config.get("device"))

    def start(self, peer, bundle):
        self.sessions.start(peer, PrekeyBundle.from_bytes(bundle))

    def encrypt(self, peer, plaintext):
        return self.sessions.encrypt(peer, plaintext)

    def decrypt(self, peer, data):
        return self.sessions.decrypt(peer, data)
