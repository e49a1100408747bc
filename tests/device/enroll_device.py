# A device enrolling with the provisioning service, one step per run (as a board would between
# reboots): its keys are generated here, kept encrypted in DIR (its flash), and never printed.
# Run from the repository root under MicroPython or CPython; every step prints one JSON line.
#
#   enroll_device.py keys DIR STORAGE_KEY N
#       new identity with N one-time prekeys -> {ik_pub, is_pub, fingerprint}
#   enroll_device.py prove DIR STORAGE_KEY CHALLENGE TOKEN DEVICE_ID FLEET [BOARD_UID BOARD_KEY]
#       the POST /enroll fields (e2ee.protocol.enrollment.enrollment_fields), base64
#   enroll_device.py upload DIR STORAGE_KEY PATH TS DEVICE_ID SPK NEW_OPKS
#       a signed key-directory upload: NEW_OPKS fresh one-time prekeys (0: those not uploaded
#       yet), the signed prekey when SPK is 1 -> {body, signature}
#   enroll_device.py verify CERT CRL CA_KEYS NOW LAST
#       checks the certificate and revocation list files with the CA keys
#       -> {device_id, serial, crl_version, revoked} or {error: ClassName}
# STORAGE_KEY, CHALLENGE, BOARD_UID, BOARD_KEY, CA_KEYS (concatenated 32-byte keys): hex.
import binascii
import json
import sys

# Each step imports only what it uses: the whole SDK as .mpy does not fit the ESP32's 120 KB
# heap at once (docs/performance.md), and a board runs one step per boot the same way.


# The device's key record on its flash: encrypted at rest (docs/protocol.md §5).
class Flash:
    def __init__(self, directory, storage_key):
        from e2ee.protocol.store import RecordStore
        self.records = RecordStore(directory + "/keys", "keys", unhex(storage_key))

    def load(self):
        from e2ee.protocol.keys import KeyStore
        return KeyStore.from_bytes(self.records.get("keystore"))

    def save(self, ks):
        self.records.put("keystore", ks.to_bytes())


def b64(data):
    return binascii.b2a_base64(data).decode().strip()


def unhex(text):
    return binascii.unhexlify(text)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def keys(directory, storage_key, count):
    from e2ee.protocol.keys import KeyStore
    ks = KeyStore.generate(int(count))
    Flash(directory, storage_key).save(ks)
    return {"ik_pub": b64(ks.ik_pub), "is_pub": b64(ks.is_pub), "fingerprint": b64(ks.fingerprint())}


def prove(directory, storage_key, challenge, token, device_id, fleet, board_uid=None, board_key=None):
    from e2ee.protocol import enrollment
    ks = Flash(directory, storage_key).load()
    uid = unhex(board_uid) if board_uid else b""
    fields = enrollment.enrollment_fields(ks, unhex(challenge), token, device_id, fleet, uid,
                                          unhex(board_key) if board_key else None)
    return dict((k, b64(v)) for k, v in fields.items())


def upload(directory, storage_key, path, ts, device_id, spk, new_opks):
    from e2ee.protocol import enrollment
    flash = Flash(directory, storage_key)
    ks = flash.load()
    sent_file = directory + "/uploaded_opks"
    try:
        sent = int(read(sent_file))
    except OSError:
        sent = 0
    if int(new_opks):
        ks.generate_one_time_prekeys(int(new_opks))
        flash.save(ks)
    opks = [{"opk_id": i, "opk_pub": b64(pub)} for i, pub in ks.one_time_prekey_publics() if i > sent]
    doc = {"one_time_prekeys": opks}
    if spk == "1":
        bundle = ks.bundle()
        doc["signed_prekey"] = {"spk_id": bundle.spk_id, "spk_pub": b64(bundle.spk_pub),
                                "spk_sig": b64(bundle.spk_sig)}
    body = json.dumps(doc).encode()
    signature = ks.sign(enrollment.request_message("POST", path, int(ts), device_id, body))
    if opks:
        with open(sent_file, "w") as f:
            f.write(str(max(o["opk_id"] for o in opks)))
    return {"body": body.decode(), "signature": b64(signature)}


def verify(cert_file, crl_file, ca_keys, now, last):
    from e2ee.protocol import certificate
    blob = unhex(ca_keys)
    trusted = [blob[i:i + 32] for i in range(0, len(blob), 32)]
    try:
        crl = certificate.verify_revocation_list(read(crl_file), trusted, int(last))
        cert = certificate.verify_certificate(read(cert_file), trusted, int(now), crl)
    except certificate.CertificateError as e:
        return {"error": type(e).__name__}
    return {"device_id": cert.device_id, "serial": binascii.hexlify(cert.serial).decode(),
            "roles": list(cert.roles), "crl_version": crl.version, "revoked": len(crl)}


STEPS = {"keys": keys, "prove": prove, "upload": upload, "verify": verify}
print(json.dumps(STEPS[sys.argv[1]](*sys.argv[2:])))
