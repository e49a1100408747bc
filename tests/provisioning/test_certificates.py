"""Device certificates and revocation lists (docs/provisioning.md, "Certificates and revocation
lists"): the host's Fleet CA (e2ee_host.fleet_ca) issues them, the device reader
(e2ee.protocol.certificate) verifies them under MicroPython and CPython, and the CA keystore keeps
its private keys out of every repr, message and log.
"""
from __future__ import annotations

import logging
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import vectorfile
from support import DEVICE_TESTS, ROOT, regenerate_protobuf

from e2ee.protocol import certificate as device
from e2ee_host import fleet_ca
from e2ee_host.fleet_ca import CERT_LABEL, CRL_LABEL, FileCAKeystore, pb

SCRIPT = DEVICE_TESTS / "check_certificate.py"
PROTO = ROOT / "proto" / "e2ee" / "v1" / "certificate.proto"
GENERATED = ROOT / "host" / "e2ee_host" / "proto"
# The heap policy of tests/protocol/conftest.py: imported as .mpy files, crypto + envelope +
# certificate code leave about 44 KB of a 120 KB heap (largest free block about 7 KB), too little
# for the largest revocation list (9317 bytes, plus a copy to verify and its 8 KB serial array).
# Frozen into the firmware (E2EE_DEVICE_FROZEN=1, docs/decisions.md D12) the code is out of the
# heap and the device checks run with the ESP32's 120 KB.
DEVICE_HEAP = "120K" if os.environ.get("E2EE_DEVICE_FROZEN") else "256K"
NOW = 1_800_000_000
DAY = 86_400
IK = bytes(range(0x20, 0x40))
IS = bytes(range(0x40, 0x60))


@pytest.fixture
def ca(tmp_path: Path) -> FileCAKeystore:
    return FileCAKeystore(tmp_path / "ca" / "fleet-ca.json")


def issue(ks: fleet_ca.CAKeystore, **fields: object) -> bytes:
    args: dict[str, object] = dict(device_id="dev-0001", fleet="plant.north", identity_dh=IK, identity_sign=IS,
                                   not_before=NOW - DAY, not_after=NOW + 30 * DAY, roles=["sensor", "group_7"])
    args.update(fields)
    return fleet_ca.issue_certificate(ks, **args)  # type: ignore[arg-type]


def raw_cert(ks: fleet_ca.CAKeystore, **fields: object) -> pb.DeviceCertificate:
    """A DeviceCertificate message with valid fields unless overridden (no limit checks)."""
    args: dict[str, object] = dict(version=1, serial=bytes(range(16)), device_id="dev-0001", fleet="plant.north",
                                   identity_dh=IK, identity_sign=IS, roles=["sensor"], not_before=NOW - DAY,
                                   not_after=NOW + DAY, issuer_key_id=ks.active_key_id())
    args.update(fields)
    return pb.DeviceCertificate(**args)  # type: ignore[arg-type]


def sign_body(ks: fleet_ca.CAKeystore, body: bytes, label: bytes = CERT_LABEL, crl: bool = False) -> bytes:
    """Signs arbitrary bytes as the CA would, bypassing the issuer's checks, so a device that
    skipped a check would accept the result: these cases can only fail on the device's rules."""
    signature = ks.sign(label + body)
    if crl:
        return pb.SignedRevocationList(revocation_list=body, signature=signature).SerializeToString()
    return pb.SignedCertificate(certificate=body, signature=signature).SerializeToString()


def raw_crl(ks: fleet_ca.CAKeystore, version: int, serials: list[bytes], issuer: bytes | None = None) -> bytes:
    body = pb.RevocationList(version=version, issued_at=NOW, revoked_serials=serials,
                             issuer_key_id=ks.active_key_id() if issuer is None else issuer).SerializeToString()
    return sign_body(ks, body, CRL_LABEL, crl=True)


def u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


def keys(*stores: fleet_ca.CAKeystore) -> bytes:
    return b"".join(k for ks in stores for k in ks.public_keys())


def expected(data: bytes, now: int | None) -> dict[str, bytes]:
    cert = pb.DeviceCertificate.FromString(pb.SignedCertificate.FromString(data).certificate)
    return {"serial": cert.serial, "device_id": cert.device_id.encode(), "fleet": cert.fleet.encode(),
            "identity_dh": cert.identity_dh, "identity_sign": cert.identity_sign,
            "roles": ",".join(cert.roles).encode(), "not_before": u64(cert.not_before),
            "not_after": u64(cert.not_after), "time_checked": b"\x01" if now is not None else b"\x00"}


def build_cases(tmp_path: Path) -> tuple[Path, int]:
    """Writes the device's cases (check_certificate.py explains the fields); returns the path and
    the number of records the device must count."""
    old = FileCAKeystore(tmp_path / "old-ca.json")
    other = FileCAKeystore(tmp_path / "other-ca.json")
    recs: list[dict[str, object]] = []

    def cert(name: str, data: bytes, trusted: bytes, result: str, now: int | None = NOW, **extra: bytes) -> None:
        rec: dict[str, object] = {"id": "cert-" + name, "data": data, "keys": trusted}
        if now is not None:
            rec["now"] = u64(now)
        rec.update(extra)
        if result == "valid":
            rec.update(expected(data, now))
        rec["result"] = result
        recs.append(rec)

    def crl(name: str, data: bytes, trusted: bytes, last: int, result: str, **extra: bytes) -> None:
        recs.append({"id": "crl-" + name, "data": data, "keys": trusted, "last": u64(last), **extra,
                     "result": result})

    recs.append({"id": "keyid", "keys": keys(old, other), "ids": b"".join(old.key_ids() + other.key_ids())})
    # Valid, with and without a clock, at the window's edges, with no roles.
    small = issue(old, device_id="d", fleet="f", roles=[], not_before=NOW - 1, not_after=NOW + 1)
    cert("small", small, keys(old), "valid", flip=b"\x01")
    cert("valid", issue(old), keys(old), "valid")
    cert("no-clock", issue(old, not_before=NOW + DAY, not_after=NOW + 2 * DAY), keys(old), "valid", now=None)
    edges = issue(old, not_before=NOW, not_after=NOW + 10)
    cert("first-second", edges, keys(old), "valid", now=NOW)
    cert("last-second", edges, keys(old), "valid", now=NOW + 9)
    cert("expired", edges, keys(old), "Expired", now=NOW + 10)
    cert("not-yet-valid", edges, keys(old), "NotYetValid", now=NOW - 1)
    # Issuers: unknown CA, a signature by another key under a trusted key id, the CRL label.
    cert("unknown-issuer", issue(other), keys(old), "UnknownIssuer")
    forged = raw_cert(old).SerializeToString()
    cert("forged", pb.SignedCertificate(certificate=forged, signature=other.sign(CERT_LABEL + forged))
         .SerializeToString(), keys(old, other), "BadSignature")
    cert("crl-label", sign_body(old, forged, CRL_LABEL), keys(old), "BadSignature")
    # Rotation with overlap: old certificates verify while the old key is trusted.
    before = issue(old)
    old.rotate()
    after = issue(old)
    new_only = old.public_keys()[-1]
    old_only = old.public_keys()[0]
    cert("old-key-overlap", before, keys(old), "valid")
    cert("new-key-overlap", after, keys(old), "valid")
    cert("old-key-retired", before, new_only, "UnknownIssuer")
    cert("new-key-unknown", after, old_only, "UnknownIssuer")
    # Revocation, checked against a verified list.
    revoked_cert = issue(old, serial=b"\x55" * 16)
    cert("revoked", revoked_cert, keys(old), "Revoked",
         crl=fleet_ca.sign_revocation_list(old, version=3, revoked_serials=[b"\x54" * 16, b"\x55" * 16]))
    cert("not-revoked", revoked_cert, keys(old), "valid",
         crl=fleet_ca.sign_revocation_list(old, version=3, revoked_serials=[b"\x54" * 16, b"\x56" * 16]))
    # Field rules the device enforces on a correctly signed certificate.
    malformed = {
        "version-2": raw_cert(old, version=2), "version-missing": raw_cert(old, version=0),
        "serial-15": raw_cert(old, serial=bytes(15)), "device-id-slash": raw_cert(old, device_id="a/b"),
        "device-id-plus": raw_cert(old, device_id="a+"), "device-id-space": raw_cert(old, device_id="a b"),
        "device-id-empty": raw_cert(old, device_id=""), "device-id-65": raw_cert(old, device_id="d" * 65),
        "fleet-65": raw_cert(old, fleet="f" * 65), "fleet-hash": raw_cert(old, fleet="#"),
        "identity-dh-31": raw_cert(old, identity_dh=IK[:31]), "identity-sign-33": raw_cert(old, identity_sign=IS + b"x"),
        "roles-9": raw_cert(old, roles=["r%d" % i for i in range(9)]), "role-33": raw_cert(old, roles=["r" * 33]),
        "role-twice": raw_cert(old, roles=["a", "b", "a"]), "role-empty": raw_cert(old, roles=[""]),
        "window-empty": raw_cert(old, not_before=NOW, not_after=NOW), "window-missing": raw_cert(old, not_before=0, not_after=0),
        "issuer-7": raw_cert(old, issuer_key_id=old.active_key_id()[:7]),
    }
    for name, msg in malformed.items():
        cert(name, sign_body(old, msg.SerializeToString()), keys(old), "Malformed")
    body = raw_cert(old).SerializeToString()
    cert("device-id-twice", sign_body(old, body + pb.DeviceCertificate(device_id="x").SerializeToString()),
         keys(old), "Malformed")
    cert("wrong-wire-type", sign_body(old, body + b"\x18\x01"), keys(old), "Malformed")  # field 3 as varint
    # An unknown field is skipped, and covered by the signature like everything else.
    cert("unknown-field", sign_body(old, body + b"\xa2\x01\x03abc"), keys(old), "valid")
    signed = pb.SignedCertificate.FromString(issue(old))
    cert("signature-63", pb.SignedCertificate(certificate=signed.certificate, signature=signed.signature[:63])
         .SerializeToString(), keys(old), "Malformed")
    cert("no-certificate", pb.SignedCertificate(signature=signed.signature).SerializeToString(), keys(old), "Malformed")
    padded = signed.SerializeToString() + b"\x1a\xd8\x04" + bytes(600)  # unknown field 3, 600 bytes
    assert len(padded) > device.MAX_SIGNED_CERTIFICATE
    cert("oversize", padded, keys(old), "Malformed")
    cert("truncated", issue(old)[:-1], keys(old), "Malformed")
    # Revocation lists: versions, rollback, issuers, serial rules.
    a, b, c = b"\x10" * 16, b"\x20" * 16, b"\x30" * 16
    list_v5 = fleet_ca.sign_revocation_list(old, version=5, revoked_serials=[c, a], issued_at=NOW)
    crl("first", list_v5, keys(old), 0, "valid", version=u64(5), count=u64(2), revoked=a + c, notrevoked=b,
        flip=b"\x01")
    crl("newer", list_v5, keys(old), 4, "valid", version=u64(5), count=u64(2), revoked=a + c, notrevoked=b)
    crl("same-version", list_v5, keys(old), 5, "RolledBack")
    crl("older-version", list_v5, keys(old), 6, "RolledBack")
    crl("empty", fleet_ca.sign_revocation_list(old, version=6, revoked_serials=[]), keys(old), 5, "valid",
        version=u64(6), count=u64(0), notrevoked=a)
    crl("unknown-issuer", fleet_ca.sign_revocation_list(other, version=9, revoked_serials=[a]), keys(old), 0,
        "UnknownIssuer")
    crl("cert-label", sign_body(old, pb.RevocationList(version=9, issuer_key_id=old.active_key_id())
                                .SerializeToString(), CERT_LABEL, crl=True), keys(old), 0, "BadSignature")
    crl("unsorted", raw_crl(old, 7, [b, a]), keys(old), 0, "Malformed")
    crl("repeated-serial", raw_crl(old, 7, [a, a]), keys(old), 0, "Malformed")
    crl("serial-15", raw_crl(old, 7, [a[:15]]), keys(old), 0, "Malformed")
    crl("version-0", raw_crl(old, 0, [a]), keys(old), 0, "Malformed")
    crl("issuer-9", raw_crl(old, 7, [a], issuer=old.active_key_id() + b"\x00"), keys(old), 0, "Malformed")
    # Lists above 4 KB go in files next to the cases (a vector line stays under 4 KB).
    def crl_file(name: str, data: bytes, last: int, result: str, **extra: bytes) -> None:
        (tmp_path / (name + ".bin")).write_bytes(data)
        crl(name, b"", keys(old), last, result, file=(name + ".bin").encode(), **extra)

    crl_file("513-serials", raw_crl(old, 7, [i.to_bytes(16, "big") for i in range(513)]), 0, "Malformed")
    big_serials = sorted(os.urandom(16) for _ in range(device.MAX_REVOKED))
    near = (int.from_bytes(big_serials[100], "big") + 1).to_bytes(16, "big")
    crl_file("largest", fleet_ca.sign_revocation_list(old, version=2**64 - 1, revoked_serials=big_serials,
                                                      issued_at=2**64 - 1), 2**64 - 2, "valid",
             version=u64(2**64 - 1), count=u64(512), revoked=big_serials[0] + big_serials[255] + big_serials[-1],
             notrevoked=(b"" if near in big_serials else near) + bytes(16))
    cases = tmp_path / "cases.txt"
    vectorfile.write(str(cases), "certificate cases written by tests/provisioning/test_certificates.py", recs)
    return cases, len(recs)


# Flips per record with flip=01: two per byte.
def flip_count(tmp_path: Path) -> int:
    return sum(2 * len(r["data"]) for r in vectorfile.records(str(tmp_path / "cases.txt"))
               if r.get("flip") == b"\x01")


# ---- the device reader, on both runtimes ----------------------------------------------------

def test_device_verifies_micropython(micropython, tmp_path):
    cases, count = build_cases(tmp_path)
    out = micropython.run(SCRIPT, str(cases), heapsize=DEVICE_HEAP)
    assert out.split() == ["ok", "certificate", str(count), str(flip_count(tmp_path))], out


def test_device_verifies_cpython(tmp_path):
    cases, count = build_cases(tmp_path)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(cases)], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH="%s:%s" % (ROOT / "firmware", DEVICE_TESTS)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["ok", "certificate", str(count), str(flip_count(tmp_path))], proc.stdout


# ---- generated code and limits ----------------------------------------------------------------

def test_generated_code_is_current(tmp_path):
    # certificate_pb2.py/.pyi must be exactly protoc's output for the .proto (pinned grpcio-tools).
    fresh_dir = regenerate_protobuf(PROTO, tmp_path)
    for name in ("certificate_pb2.py", "certificate_pb2.pyi"):
        fresh = (fresh_dir / name).read_bytes()
        assert (GENERATED / "e2ee" / "v1" / name).read_bytes() == fresh, (
            "%s is stale: regenerate it (command in host/e2ee_host/fleet_ca.py)" % name)


def test_largest_messages_fit_the_limits(ca):
    # Every field at its limit (uint64 maxima, 64-byte names, 8 roles of 32 bytes, 512 serials).
    big_cert = issue(ca, device_id="d" * 64, fleet="f" * 64, roles=["r%031d" % i for i in range(8)],
                     not_before=2**64 - 2, not_after=2**64 - 1)
    assert len(big_cert) == 593 <= device.MAX_SIGNED_CERTIFICATE
    big_crl = fleet_ca.sign_revocation_list(ca, version=2**64 - 1, issued_at=2**64 - 1,
                                            revoked_serials=[i.to_bytes(16, "big") for i in range(512)])
    assert len(big_crl) == 9317 <= device.MAX_SIGNED_REVOCATION_LIST
    with pytest.raises(device.Malformed, match="more than 512"):
        fleet_ca.sign_revocation_list(ca, version=1, revoked_serials=[i.to_bytes(16, "big") for i in range(513)])


# ---- the host CA -------------------------------------------------------------------------------

def test_issue_and_verify_on_host(ca):
    data = issue(ca, serial=b"\x07" * 16)
    cert = fleet_ca.verify_certificate(data, ca.public_keys(), NOW)
    assert (cert.device_id, cert.fleet, cert.roles, cert.serial) == ("dev-0001", "plant.north", ("sensor", "group_7"),
                                                                     b"\x07" * 16)
    assert (cert.identity_dh, cert.identity_sign, cert.issuer_key_id) == (IK, IS, ca.active_key_id())
    assert cert.time_checked
    unchecked = fleet_ca.verify_certificate(data, ca.public_keys(), None)
    assert not unchecked.time_checked
    # The bytes are what protobuf writes deterministically, and the signature covers them exactly.
    signed = pb.SignedCertificate.FromString(data)
    assert signed.SerializeToString(deterministic=True) == data
    assert pb.DeviceCertificate.FromString(signed.certificate).serial == b"\x07" * 16
    assert len(fleet_ca.new_serial()) == 16 and fleet_ca.new_serial() != fleet_ca.new_serial()


@pytest.mark.parametrize("fields", [dict(device_id="a/b"), dict(fleet=""), dict(roles=["x"] * 2),
                                    dict(identity_dh=IK[:31]), dict(not_after=0), dict(serial=b"\x01" * 8)])
def test_issuer_refuses_what_devices_would(ca, fields):
    with pytest.raises(device.Malformed):
        issue(ca, **fields)


def test_revocation_list_sorted_and_deduplicated(ca):
    a, b = b"\x01" * 16, b"\x02" * 16
    data = fleet_ca.sign_revocation_list(ca, version=1, revoked_serials=[b, a, b], issued_at=NOW)
    body = pb.RevocationList.FromString(pb.SignedRevocationList.FromString(data).revocation_list)
    assert list(body.revoked_serials) == [a, b] and body.issued_at == NOW
    crl = fleet_ca.verify_revocation_list(data, ca.public_keys(), 0)
    assert crl.is_revoked(a) and not crl.is_revoked(b"\x03" * 16) and len(crl) == 2
    with pytest.raises(fleet_ca.RolledBack):
        fleet_ca.verify_revocation_list(data, ca.public_keys(), 1)


def test_rotation_and_retirement(ca):
    first = ca.active_key_id()
    before = issue(ca)
    second = ca.rotate()
    assert second != first and ca.active_key_id() == second and ca.key_ids() == [first, second]
    after = issue(ca)
    assert fleet_ca.verify_certificate(after, ca.public_keys(), NOW).issuer_key_id == second
    assert fleet_ca.verify_certificate(before, ca.public_keys(), NOW).issuer_key_id == first
    # Another process sees the rotation (the file is reloaded when it changed).
    assert FileCAKeystore(ca.path).key_ids() == [first, second]
    with pytest.raises(fleet_ca.CAKeystoreError, match="active"):
        ca.retire(second)
    ca.retire(first)
    assert ca.key_ids() == [second]
    with pytest.raises(fleet_ca.UnknownIssuer):
        fleet_ca.verify_certificate(before, ca.public_keys(), NOW)
    with pytest.raises(fleet_ca.CAKeystoreError, match=first.hex()):
        ca.retire(first)


def test_keystore_file_is_0600_and_refused_when_readable(ca):
    ca.active_key_id()  # first use creates the key
    assert stat.S_IMODE(ca.path.stat().st_mode) == 0o600
    ca.rotate()
    assert stat.S_IMODE(ca.path.stat().st_mode) == 0o600
    assert not list(ca.path.parent.glob("*.tmp"))
    os.chmod(ca.path, 0o640)
    with pytest.raises(fleet_ca.CAKeystoreError, match="mode 0640"):
        FileCAKeystore(ca.path).keys()


def seeds(path: Path) -> list[bytes]:
    import json
    return [bytes.fromhex(k["seed"]) for k in json.loads(path.read_bytes())["keys"]]


def test_private_key_never_leaks(ca, caplog):
    caplog.set_level(logging.DEBUG)
    issue(ca)
    ca.rotate()
    ca.retire(ca.key_ids()[0])
    ca.rotate()
    secrets = seeds(ca.path)
    assert len(secrets) == 2
    texts = [repr(ca), str(ca), caplog.text] + [k.hex() for k in ca.key_ids()] + [repr(k) for k in ca.keys()]
    # Errors: unknown key, retiring the active key, a malformed file, a permissive file.
    for action in (lambda: ca.sign(b"m", b"\x00" * 8), lambda: ca.retire(ca.active_key_id())):
        with pytest.raises(fleet_ca.CAKeystoreError) as e:
            action()
        texts.append(str(e.value))
    broken = ca.path.with_name("broken.json")
    broken.write_bytes(ca.path.read_bytes()[:-7])
    broken.chmod(0o600)
    with pytest.raises(fleet_ca.CAKeystoreError) as e:
        FileCAKeystore(broken).keys()
    assert e.value.__cause__ is None and e.value.__suppress_context__
    texts.append(str(e.value))
    with pytest.raises(TypeError):
        pickle.dumps(ca)
    assert "created" in caplog.text or "rotated" in caplog.text  # the log did record the events
    for secret in secrets:
        for form in (secret.hex(), secret.hex().upper(), secret[:8].hex()):
            for text in texts:
                assert form not in text
        assert secret[:8] not in ca.key_ids()
    # A key id is the public key's digest.
    assert [k.key_id for k in ca.keys()] == [device.key_id(k.public_key) for k in ca.keys()]
