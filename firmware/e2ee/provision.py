# The board's side of provisioning (docs/boards.md, "Provisioning"), called by the host's
# `e2ee provision` through the raw REPL or by an application over the network. Every function
# returns JSON text; private keys are generated here and never leave the board.
#
#   generate(one_time)        new identity keys in e2ee_data/keys (refuses when one exists)
#   prove(challenge_hex, token, device_id, fleet)
#                             the POST /enroll fields over the service's challenge
#   install(path)             stores the enrollment result (a JSON file the host wrote, deleted
#                             here) after checking it: a certificate for these keys and this
#                             device id, signed by the CA keys it carries; fills the TrustStore
#   prekeys(path, ts, spk, new)
#                             a signed key-directory upload of up to 8 one-time prekeys not
#                             published yet (call again until it carries none); uploaded(id)
#                             records what the service accepted
#   status()                  enrolled or not, device id, fingerprint
#
# Each call imports only what it needs: a 120 KB ESP32 heap does not hold the whole SDK at once.
import binascii
import json

from e2ee import board

KEYS_DIR = board.DATA_DIR + "/keys"
CONFIG_DIR = board.DATA_DIR + "/config"
_KEYSTORE = "keystore"  # the record e2ee.protocol.session.SessionManager opens
_DEVICE = "device"  # device id, fleet, service, broker credentials, certificate, CA keys, list
_UPLOADED = "uploaded-opks"  # highest one-time prekey id already published
_PUBLIC = "public"  # IK.pub || IS.pub, so checks need not load the whole key store
_DEVICE_ID = "device-id"  # the enrolled device id alone (small to read)
_UPLOAD_BATCH = 8  # one-time prekeys per signed upload: request bodies stay small in RAM


class ProvisionError(Exception):
    pass


# The timestamp a signed request carries: at least `ts` and above every one this board signed
# before (the service refuses a write that is not newer than the last), remembered on flash.
def _timestamp(config, ts):
    from e2ee.protocol.store import NotFound
    try:
        last = int(config.get("last-ts"))
    except NotFound:
        last = 0
    ts = max(int(ts), last + 1)
    config.put("last-ts", str(ts).encode())
    return ts


def _b64(data):
    return binascii.b2a_base64(data).decode().strip()


def _unb64(text):
    return binascii.a2b_base64(text)


def _store(directory, kind):
    from e2ee.protocol.store import RecordStore
    return RecordStore(directory, kind, board.storage_key())


def _keystore():
    from e2ee.protocol.keys import KeyStore
    from e2ee.protocol.store import NotFound
    try:
        return KeyStore.from_bytes(_store(KEYS_DIR, "keys").get(_KEYSTORE))
    except NotFound:
        raise ProvisionError("no identity on this board: run generate first")


def _device():
    from e2ee.protocol.store import NotFound
    try:
        return json.loads(_store(CONFIG_DIR, "config").get(_DEVICE))
    except NotFound:
        return None


def generate(one_time=20, force=False):
    from e2ee.protocol.keys import KeyStore
    store = _store(KEYS_DIR, "keys")
    if _KEYSTORE in store.names() and not force:
        raise ProvisionError("this board already has an identity (generate(force=True) replaces it)")
    ks = KeyStore.generate(one_time)
    store.put(_KEYSTORE, ks.to_bytes())
    config = _store(CONFIG_DIR, "config")
    config.put(_PUBLIC, ks.ik_pub + ks.is_pub)
    for name in (_UPLOADED, _DEVICE, _DEVICE_ID, "last-ts"):  # a new identity is not enrolled and has published nothing
        if name in config.names():
            config.delete(name)
    return json.dumps({"ik_pub": _b64(ks.ik_pub), "is_pub": _b64(ks.is_pub),
                       "fingerprint": binascii.hexlify(ks.fingerprint()).decode()})


def prove(challenge_hex, token, device_id, fleet):
    from e2ee.protocol import enrollment
    uid, key = board.hardware_binding()
    fields = enrollment.enrollment_fields(_keystore(), binascii.unhexlify(challenge_hex), token, device_id,
                                          fleet, uid or b"", key)
    return json.dumps(dict((k, _b64(v)) for k, v in fields.items()))


def install(path):
    import os
    from e2ee.protocol import certificate
    with open(path) as f:
        doc = json.load(f)
    os.remove(path)  # it holds the broker password: only the encrypted record keeps it
    config = _store(CONFIG_DIR, "config")
    public = config.get(_PUBLIC)
    trusted = [_unb64(k) for k in doc["ca_keys"]]
    crl = certificate.verify_revocation_list(_unb64(doc["revocation_list"]), trusted, 0)
    cert = certificate.verify_certificate(_unb64(doc["certificate"]), trusted, doc.get("now"), crl)
    if cert.device_id != doc["device_id"] or cert.identity_dh + cert.identity_sign != public:
        raise ProvisionError("the certificate is for other keys or another device id")
    keep = {}
    for k in ("device_id", "fleet", "service", "mqtt", "certificate", "ca_keys", "revocation_list"):
        keep[k] = doc[k]
    doc = None
    config.put(_DEVICE, json.dumps(keep).encode())
    config.put(_DEVICE_ID, cert.device_id.encode())
    keep = None
    from e2ee.protocol.trust import TrustStore
    install_trust(TrustStore(board.DATA_DIR, board.storage_key()), config)
    return json.dumps({"device_id": cert.device_id, "fleet": cert.fleet,
                       "serial": binascii.hexlify(cert.serial).decode(), "not_after": cert.not_after,
                       "crl_version": crl.version})


# Fills the device's TrustStore (e2ee.protocol.trust, what e2ee.device.Device.open certifies its
# sessions with) from the enrollment record in `config`: the CA keys, the revocation list unless
# the stored one is newer (rollback protection), the device's certificate for its own keys.
def install_trust(trust, config):
    device = json.loads(config.get(_DEVICE))
    trust.set_ca_keys([_unb64(k) for k in device["ca_keys"]])
    crl = _unb64(device["revocation_list"])
    cert = _unb64(device["certificate"])
    device = None
    from e2ee.protocol.certificate import RolledBack
    try:
        trust.update_revocation_list(crl)
    except RolledBack:
        pass
    crl = None
    public = config.get(_PUBLIC)
    trust.set_certificate(cert, None, (public[:32], public[32:64]))


def prekeys(path, ts, spk=True, new=0):
    from e2ee.protocol import enrollment
    from e2ee.protocol.store import NotFound
    config = _store(CONFIG_DIR, "config")
    try:
        device_id = config.get(_DEVICE_ID).decode()
    except NotFound:
        raise ProvisionError("not enrolled: install an enrollment first")
    ks = _keystore()
    if new:
        ks.generate_one_time_prekeys(new)
        _store(KEYS_DIR, "keys").put(_KEYSTORE, ks.to_bytes())
    try:
        sent = int(config.get(_UPLOADED))
    except NotFound:
        sent = 0
    from e2ee.upkeep import upload_body
    body, last, count = upload_body(ks, sent, _UPLOAD_BATCH, spk)
    ks = None
    ts = _timestamp(config, ts)
    signature = _keystore().sign(enrollment.request_message("POST", path, ts, device_id, body))
    return json.dumps({"body": body.decode(), "signature": _b64(signature), "last_opk": last, "count": count,
                       "ts": ts})


# After the service accepted an upload: one-time prekeys up to last_opk are published.
def uploaded(last_opk):
    _store(CONFIG_DIR, "config").put(_UPLOADED, str(last_opk).encode())
    return json.dumps({"uploaded": last_opk})


# --- host-assisted backup (docs/backup.md): the provisioning host seals the board's records ---

# Identity, settings and trust only: never session (ratchet) state, which a restored board would
# send with again, reusing message keys and nonces (docs/backup.md, "Never restored"). put_record
# refuses any other store, so an old archive's session records never reach a board.
_STORES = ((KEYS_DIR, "keys"), (CONFIG_DIR, "config"))


# [[kind, name], ...] of every record on the board.
def records():
    out = []
    for directory, kind in _STORES:
        out += [[kind, name] for name in _store(directory, kind).names()]
    return json.dumps(out)


# One record's plaintext, hex: it crosses the provisioning link to the host that seals the backup.
def record(kind, name):
    for directory, k in _STORES:
        if k == kind:
            return json.dumps(binascii.hexlify(_store(directory, kind).get(name)).decode())
    raise ProvisionError("no record store %s" % kind)


# Restores one record from a transfer file the host wrote (deleted here), encrypted under this
# board's own storage key. Only on a board without an identity yet (a replacement board).
def put_record(kind, name, path):
    import os
    with open(path, "rb") as f:
        data = f.read()
    os.remove(path)
    for directory, k in _STORES:
        if k == kind:
            _store(directory, kind).put(name, data)
            return json.dumps({"restored": kind + "/" + name})
    raise ProvisionError("no record store %s" % kind)


# Signs a request whose body the host wrote to `path` (deleted here), for the host to send.
def sign_request(method, path, ts, body_path):
    import os
    from e2ee.protocol import enrollment
    config = _store(CONFIG_DIR, "config")
    device_id = config.get(_DEVICE_ID).decode()
    with open(body_path, "rb") as f:
        body = f.read()
    os.remove(body_path)
    ts = _timestamp(config, ts)
    signature = _keystore().sign(enrollment.request_message(method, path, ts, device_id, body))
    return json.dumps({"device_id": device_id, "signature": _b64(signature), "ts": ts})


# The board as the owner's primary (docs/linking.md): its signature approving a link.
def sign_approval(owner, device_id, fingerprint_hex):
    from e2ee.protocol import linking
    message = linking.approval_message(owner, device_id, binascii.unhexlify(fingerprint_hex))
    return json.dumps(_b64(_keystore().sign(message)))


def status():
    from e2ee.protocol.store import NotFound
    try:
        ks = _keystore()
    except (ProvisionError, NotFound):
        return json.dumps({"identity": False, "enrolled": False})
    device = _device()
    return json.dumps({"identity": True, "enrolled": device is not None,
                       "device_id": device["device_id"] if device else None,
                       "fingerprint": binascii.hexlify(ks.fingerprint()).decode()})
