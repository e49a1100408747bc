# Certificate and revocation-list verification (docs/provisioning.md, "Certificates and revocation
# lists") on MicroPython and CPython, against cases the host's Fleet CA wrote
# (tests/provisioning/test_certificates.py). Run from the repository root:
#
#   check_certificate.py CASES    prints "ok certificate <records> <flipped variants>"
#
# CASES is a vector file (tests/vectors/README.md format). Each record has an id starting with
# "cert" or "crl", `data` (the signed bytes) or `file` (the name, hex of ASCII, of a file next to
# CASES holding them: lines stay under 4 KB), `keys` (the trusted CA public keys, concatenated),
# optionally `now` (8 bytes; absent: no clock), `last` (8 bytes, the last CRL version held) and
# `crl` (a signed list to check a certificate against, trusted with the same keys), and `result`:
# `valid` or the name of the error class expected. Valid records carry the fields to compare.
# Records with `flip=01` are also checked with every byte flipped (two ways): each must fail with
# a CertificateError. The record "keyid" pins key_id().
from checks import raises_in
import sys

import vectorfile
from e2ee.protocol import certificate as C

raises = raises_in(C.CertificateError)
ERRORS = {"Malformed": C.Malformed, "UnknownIssuer": C.UnknownIssuer, "BadSignature": C.BadSignature,
          "Expired": C.Expired, "NotYetValid": C.NotYetValid, "Revoked": C.Revoked,
          "RolledBack": C.RolledBack}


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def split_keys(blob):
    return [bytes(blob[i:i + 32]) for i in range(0, len(blob), 32)]


def pinned():
    check(C.VERSION == 1, "VERSION")
    check(C.SERIAL_SIZE == 16 and C.KEY_ID_SIZE == 8 and C.KEY_SIZE == 32 and C.SIGNATURE_SIZE == 64, "sizes")
    check(C.MAX_NAME == 64 and C.MAX_ROLE == 32 and C.MAX_ROLES == 8, "name limits")
    check(C.MAX_SIGNED_CERTIFICATE == 768, "MAX_SIGNED_CERTIFICATE")
    check(C.MAX_REVOKED == 512 and C.MAX_SIGNED_REVOCATION_LIST == 9400, "revocation list limits")
    check(C.CERT_LABEL == b"e2ee-iot cert v1" and C.CRL_LABEL == b"e2ee-iot crl v1", "labels")
    check(issubclass(C.RolledBack, C.CertificateError) and issubclass(C.CertificateError, ValueError), "family")


def as_int(rec, name):
    value = rec.get(name)
    return None if value is None else vectorfile.as_int(value)


def verify(rec):
    keys = split_keys(rec["keys"])
    if rec["id"].startswith("crl"):
        return C.verify_revocation_list(rec["data"], keys, as_int(rec, "last"))
    crl = None
    if "crl" in rec:
        crl = C.verify_revocation_list(rec["crl"], keys, 0)
    return C.verify_certificate(rec["data"], keys, as_int(rec, "now"), crl)


def check_valid(rec, got):
    name = rec["id"]
    if name.startswith("crl"):
        check(got.version == as_int(rec, "version") and len(got) == as_int(rec, "count"), name + " version/count")
        for i in range(0, len(rec.get("revoked", b"")), 16):
            check(got.is_revoked(rec["revoked"][i:i + 16]), name + " revoked serial")
        for i in range(0, len(rec.get("notrevoked", b"")), 16):
            check(not got.is_revoked(rec["notrevoked"][i:i + 16]), name + " serial not revoked")
        return
    check(got.serial == rec["serial"], name + " serial")
    check(got.device_id == rec["device_id"].decode() and got.fleet == rec["fleet"].decode(), name + " names")
    check(got.identity_dh == rec["identity_dh"] and got.identity_sign == rec["identity_sign"], name + " keys")
    roles = rec["roles"].decode()
    check(",".join(got.roles) == roles, name + " roles")
    check(got.not_before == as_int(rec, "not_before") and got.not_after == as_int(rec, "not_after"), name + " times")
    check(got.time_checked == (rec["time_checked"] == b"\x01"), name + " time_checked")
    check(got.device_id in repr(got), name + " repr")


# Every byte flipped with 0x01 and with 0xFF: never accepted, always a typed error.
def flips(rec):
    data = bytearray(rec["data"])
    n = 0
    for i in range(len(data)):
        for mask in (0x01, 0xFF):
            data[i] ^= mask
            raises(C.CertificateError, verify, {"id": rec["id"], "data": data, "keys": rec["keys"],
                                                "now": rec.get("now"), "last": rec.get("last")})
            data[i] ^= mask
            n += 1
    check(bytes(data) == rec["data"], "data restored")
    return n


def run(path):
    pinned()
    folder = path.rsplit("/", 1)[0] if "/" in path else "."
    cases = 0
    flipped = 0
    for rec in vectorfile.records(path):
        name = rec["id"]
        if name == "keyid":
            for k, want in zip(split_keys(rec["keys"]), [rec["ids"][i:i + 8] for i in range(0, len(rec["ids"]), 8)]):
                check(C.key_id(k) == want, "key_id")
            raises(C.Malformed, C.key_id, bytes(31))
            cases += 1
            continue
        if "file" in rec:
            with open(folder + "/" + rec["file"].decode(), "rb") as f:
                rec["data"] = f.read()
        try:
            if rec["result"] == "valid":
                check_valid(rec, verify(rec))
            else:
                check(len(raises(ERRORS[rec["result"]], verify, rec)) > 0, "message")
        except AssertionError as e:
            raise AssertionError("%s: %s" % (name, e))
        if rec.get("flip") == b"\x01":
            flipped += flips(rec)
        cases += 1
    return cases, flipped


cases, flipped = run(sys.argv[1])
print("ok certificate %d %d" % (cases, flipped))
