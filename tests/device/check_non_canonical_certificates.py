# Audit finding 7 (issue 12) for certificates: a DeviceCertificate whose identity_dh has bit 255
# set or is not below p = 2^255 - 19, or whose identity_sign is not a canonical Ed25519 encoding,
# names a device's keys under other bytes; it is Malformed, even with a valid CA signature. On
# MicroPython and CPython:   check_non_canonical_certificates.py ROOT CASES    prints "ok ..."
# CASES <name>.bin: ca-keys, now (be64), good, dh-bit-255, dh-not-below-p, sign-non-canonical
# (certificates for device id "bob", signed by the CA); ROOT/bob: bob's key store.
import sys

from checks import raises_in
from e2ee.protocol import certificate
from e2ee.protocol.session import SessionManager
from e2ee.protocol.trust import TrustStore

raises = raises_in(certificate.CertificateError)
ROOT, CASES = sys.argv[1:3]
KEY = bytes(range(32))


def case(name):
    with open(CASES + "/" + name + ".bin", "rb") as f:
        return f.read()


ca = [case("ca-keys")]
now = int.from_bytes(case("now"), "big")
bob = SessionManager.open(ROOT + "/bob", KEY)
trust = TrustStore(ROOT + "/bob", KEY)
trust.set_ca_keys(ca)
good = certificate.verify_certificate(case("good"), ca, now)
assert good.identity_dh == bob.keystore.ik_pub and good.device_id == "bob"
for name in ("dh-bit-255", "dh-not-below-p", "sign-non-canonical"):
    data = case(name)
    raises(certificate.Malformed, certificate.verify_certificate, data, ca, now)
    raises(certificate.Malformed, certificate.decode_certificate_unverified, data)
    raises(certificate.Malformed, trust.verify_peer, "bob", data, now)
    raises(certificate.Malformed, trust.set_certificate, data, now)
assert trust.certificate is None, "a refused certificate was stored"
trust.set_certificate(case("good"), now, (bob.keystore.ik_pub, bob.keystore.is_pub))
print("ok non-canonical certificates")
