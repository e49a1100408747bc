"""Certified sessions (docs/protocol.md §6, "Certified sessions"): sessions bound to Fleet CA
certificates and refused once the revocation list names the peer, with certificates and lists
issued by a real Fleet CA (e2ee_host.fleet_ca) in a temporary directory.

The device script tests/device/check_trust.py runs the TrustStore and SessionManager checks on
MicroPython and CPython against the cases written here; the conversation tests pair a MicroPython
device process (tests/device/session_peer.py) with a CPython host, both with trust stores.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import DEVICE_TESTS, ROOT
from test_interop import Device as InteropDevice

from e2ee.protocol import certificate, envelope
from e2ee.protocol.keys import PrekeyBundle
from e2ee.protocol.session import PeerRevoked, SessionManager
from e2ee.protocol.trust import MissingCertificate, TrustStore
from e2ee_host import fleet_ca
from e2ee_host.fleet_ca import FileCAKeystore

SCRIPT = DEVICE_TESTS / "check_trust.py"
KEY = bytes(range(32))
NOW = 1_800_000_000
DAY = 86_400


def issue(ca: FileCAKeystore, device_id: str, keys: tuple[bytes, bytes], not_before: int = NOW - DAY,
          not_after: int = NOW + 30 * DAY) -> bytes:
    return fleet_ca.issue_certificate(ca, device_id=device_id, fleet="plant.north", identity_dh=keys[0],
                                      identity_sign=keys[1], roles=["sensor"], not_before=not_before,
                                      not_after=not_after)


def identity(manager: SessionManager) -> tuple[bytes, bytes]:
    return manager.keystore.ik_pub, manager.keystore.is_pub


def build_cases(tmp_path: Path) -> tuple[Path, Path]:
    """Key stores for alice, bob and mallory under root/, and the certificates and lists the device
    script reads from cases/ (check_trust.py names them)."""
    root, cases = tmp_path / "root", tmp_path / "cases"
    cases.mkdir()
    ca = FileCAKeystore(tmp_path / "ca.json")
    other = FileCAKeystore(tmp_path / "other-ca.json")
    ids = {name: identity(SessionManager.create(str(root / name), KEY, one_time=3))
           for name in ("alice", "bob", "mallory")}
    files: dict[str, bytes] = {"ca-keys": b"".join(ca.public_keys()), "now": NOW.to_bytes(8, "big")}
    short_end = NOW + 100
    certs = {
        "alice": issue(ca, "alice", ids["alice"]), "bob": issue(ca, "bob", ids["bob"]),
        "mallory": issue(ca, "mallory", ids["mallory"]),
        "bob-as-carol": issue(ca, "carol", ids["bob"]), "bob-other-keys": issue(ca, "bob", ids["mallory"]),
        "bob-unknown-ca": issue(other, "bob", ids["bob"]),
        "bob-expired": issue(ca, "bob", ids["bob"], not_before=NOW - 2 * DAY, not_after=NOW - DAY),
        "bob-revoked": issue(ca, "bob", ids["bob"]),
        "bob-short": issue(ca, "bob", ids["bob"], not_after=short_end),
        "bob-renewed": issue(ca, "bob", ids["bob"], not_after=NOW + 60 * DAY),
        "alice-other-keys": issue(ca, "alice", ids["mallory"]),
        "alice-unknown-ca": issue(other, "alice", ids["alice"]),
    }
    files.update(certs)
    serials = {}
    for name in ("alice", "bob", "bob-revoked", "bob-renewed", "bob-short"):
        cert = certificate.decode_certificate_unverified(certs[name])
        serials[name] = cert.serial
        files[name + "-serial"] = cert.serial
        files[name + "-not-after"] = cert.not_after.to_bytes(8, "big")
    many = [fleet_ca.new_serial() for _ in range(400)]
    files["crl-1"] = fleet_ca.sign_revocation_list(ca, version=1, revoked_serials=[serials["bob-revoked"]],
                                                   issued_at=NOW)
    files["crl-2"] = fleet_ca.sign_revocation_list(
        ca, version=2, revoked_serials=[serials["bob-revoked"], serials["alice"]], issued_at=NOW)
    files["crl-3"] = fleet_ca.sign_revocation_list(
        ca, version=3, revoked_serials=[serials["bob-revoked"], serials["alice"]] + many, issued_at=NOW)
    files["crl-late"] = fleet_ca.sign_revocation_list(ca, version=4, revoked_serials=[serials["alice"]],
                                                      issued_at=short_end + 1)
    files["crl-other-ca"] = fleet_ca.sign_revocation_list(other, version=9, revoked_serials=[], issued_at=NOW)
    for name, data in files.items():
        (cases / (name + ".bin")).write_bytes(data)
    return root, cases


# ---- the device script, on both runtimes ------------------------------------------------------

def test_trust_micropython(micropython, tmp_path):  # heap: tests/protocol/conftest.py
    root, cases = build_cases(tmp_path)
    assert micropython.run(SCRIPT, str(root), str(cases)).strip() == "ok trust"


def test_trust_cpython(tmp_path):
    root, cases = build_cases(tmp_path)
    env = dict(os.environ, PYTHONPATH="%s:%s" % (ROOT / "firmware", DEVICE_TESTS))
    proc = subprocess.run([sys.executable, str(SCRIPT), str(root), str(cases)], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok trust", proc.stdout + proc.stderr


# ---- a MicroPython device and a CPython host ---------------------------------------------------

class Device(InteropDevice):
    """tests/device/session_peer.py under MicroPython with a trust store (test_interop's driver)."""

    def __init__(self, micropython, directory: Path):
        super().__init__(micropython, directory, trust=True)

    def call(self, *words: str | bytes | bytearray) -> str:
        return self._call(*words)

    def identity(self) -> tuple[bytes, bytes]:
        keys = bytes.fromhex(self.call("identity"))
        return keys[:32], keys[32:]

    def received(self, peer: str, data: bytes) -> bytes:
        status, value = self.decrypt(peer, data)
        assert status == "ok" and isinstance(value, bytes), value
        return value


@pytest.fixture
def pair(micropython, tmp_path):
    """A certified device ("dev-1", MicroPython) and host ("gw-1", CPython), same Fleet CA."""
    ca = FileCAKeystore(tmp_path / "ca.json")
    device = Device(micropython, tmp_path / "device")
    host_trust = TrustStore(str(tmp_path / "host"), KEY)
    host = SessionManager.create(str(tmp_path / "host"), KEY, one_time=5, trust=host_trust)
    host_trust.set_ca_keys(ca.public_keys())
    host_cert = issue(ca, "gw-1", identity(host))
    host_trust.set_certificate(host_cert, NOW, identity(host))
    device_cert = issue(ca, "dev-1", device.identity())
    assert device.call("ca", b"".join(ca.public_keys())) == "ok"
    assert device.call("cert", device_cert) == "ok"
    try:
        yield ca, device, device_cert, host, host_cert
    finally:
        device.close()


@pytest.mark.parametrize("initiator", ["device", "host"])
def test_certified_conversation_and_revocation(pair, tmp_path, initiator):
    ca, device, device_cert, host, host_cert = pair
    if initiator == "device":
        assert device.call("start", "gw-1", host.bundle(host.keystore.one_time_prekey_ids()[0]).to_bytes(),
                           host_cert) == "ok"
        first = device.encrypt("gw-1", b"hello gateway")
        assert bytes(envelope.decode(first).sender_certificate) == device_cert
        assert host.decrypt("dev-1", first, NOW) == b"hello gateway"
    else:
        host.start("dev-1", PrekeyBundle.from_bytes(device.bundle()), device_cert, NOW)
        first = host.encrypt("dev-1", b"hello device")
        assert bytes(envelope.decode(first).sender_certificate) == host_cert
        assert device.received("gw-1", first) == b"hello device"
    serial = certificate.decode_certificate_unverified(device_cert).serial
    assert host.peer_certificate("dev-1")[0] == serial
    for i in range(6):  # both ways, one reordered pair each way
        to_host = [device.encrypt("gw-1", b"up %d.%d" % (i, k)) for k in range(2)]
        got = [bytes(host.decrypt("dev-1", m)) for m in reversed(to_host)]
        assert got == [b"up %d.1" % i, b"up %d.0" % i]
        to_device = [host.encrypt("dev-1", b"down %d.%d" % (i, k)) for k in range(2)]
        got = [device.received("gw-1", m) for m in reversed(to_device)]
        assert got == [b"down %d.1" % i, b"down %d.0" % i]
    # Trust state and the certified session survive the device's power cut.
    empty = fleet_ca.sign_revocation_list(ca, version=1, revoked_serials=[], issued_at=NOW)
    assert device.call("crl", empty) == "ok 1"
    device.restart()
    assert device.call("crl", empty) == "err RolledBack"
    assert host.decrypt("dev-1", device.encrypt("gw-1", b"after reboot")) == b"after reboot"
    # The host gets a list naming the device: every message with it is refused, nothing changes.
    in_flight = device.encrypt("gw-1", b"in flight")
    reply = host.encrypt("dev-1", b"reply in flight")
    listed = fleet_ca.sign_revocation_list(ca, version=2, revoked_serials=[serial], issued_at=NOW)
    assert host.trust.update_revocation_list(listed) == 2
    before = host.session_bytes("dev-1")
    with pytest.raises(PeerRevoked):
        host.encrypt("dev-1", b"to a revoked device")
    with pytest.raises(PeerRevoked):
        host.decrypt("dev-1", in_flight)
    assert host.session_bytes("dev-1") == before
    # After a restart the host still refuses, and refuses an older list.
    host = SessionManager.open(str(tmp_path / "host"), KEY, trust=TrustStore(str(tmp_path / "host"), KEY))
    with pytest.raises(PeerRevoked):
        host.decrypt("dev-1", in_flight)
    with pytest.raises(certificate.RolledBack):
        host.trust.update_revocation_list(empty)
    # The device gets a list naming the host: it refuses the host both ways.
    host_serial = certificate.decode_certificate_unverified(host_cert).serial
    both = fleet_ca.sign_revocation_list(ca, version=2, revoked_serials=[serial, host_serial], issued_at=NOW)
    assert device.call("crl", both) == "ok 2"
    before_device = device.call("session", "gw-1")
    assert device.call("enc", "gw-1", b"x") == "err PeerRevoked"
    assert device.call("dec", "gw-1", reply) == "err PeerRevoked"
    assert device.call("session", "gw-1") == before_device


def test_uncertified_sender_refused_by_certified_device(pair, tmp_path):
    # A host without a trust store starts a session with the certified device: its PreKeyMessage
    # carries no certificate, and the device refuses it without storing anything.
    _, device, _, _, _ = pair
    plain = SessionManager.create(str(tmp_path / "plain"), KEY, one_time=1)
    plain.start("gw-2", PrekeyBundle.from_bytes(device.bundle()))
    answer = device.call("dec", "gw-2", plain.encrypt("gw-2", b"who am I"))
    assert answer == "err " + MissingCertificate.__name__
    assert device.call("session", "gw-2") == "none"


# ---- storage ------------------------------------------------------------------------------------

class PowerCut(Exception):
    pass


def test_revocation_list_update_survives_a_power_cut_at_every_write(tmp_path, monkeypatch):
    # The k-th record write of an update fails (the power goes); after a "reboot" the store holds
    # the old list or the new one, whole, never a mix. A 3-chunk list replaces a 2-chunk one.
    from e2ee.protocol import store

    ca = FileCAKeystore(tmp_path / "ca.json")
    old_serials = [fleet_ca.new_serial() for _ in range(300)]
    new_serials = [fleet_ca.new_serial() for _ in range(512)]
    old = fleet_ca.sign_revocation_list(ca, version=5, revoked_serials=old_serials, issued_at=NOW)
    new = fleet_ca.sign_revocation_list(ca, version=6, revoked_serials=new_serials, issued_at=NOW)
    real_put = store.RecordStore.put
    outcomes = set()
    for cut in range(5):  # 3 chunks, the commit record, then nothing left to cut
        directory = str(tmp_path / ("device%d" % cut))
        trust = TrustStore(directory, KEY)
        trust.set_ca_keys(ca.public_keys())
        assert trust.update_revocation_list(old) == 5
        writes = [0]

        def put(self, name, data, writes=writes, cut=cut):
            if writes[0] == cut:
                raise PowerCut(name)
            writes[0] += 1
            real_put(self, name, data)

        monkeypatch.setattr(store.RecordStore, "put", put)
        try:
            trust.update_revocation_list(new)
        except PowerCut:
            assert trust.version == 5  # the object keeps the old list too
        monkeypatch.setattr(store.RecordStore, "put", real_put)
        rebooted = TrustStore(directory, KEY)
        version = rebooted.version
        outcomes.add(version)
        serials = old_serials if version == 5 else new_serials
        assert all(rebooted.is_revoked(s) for s in serials)
        assert not any(rebooted.is_revoked(s) for s in (new_serials if version == 5 else old_serials))
        if version == 5:
            assert rebooted.update_revocation_list(new) == 6
        chunks = sorted(n for n in os.listdir(os.path.join(directory, "trust")) if n.startswith("crl-"))
        assert len(chunks) == 3, chunks  # the stale chunks of the old list and the cut update are gone
    assert outcomes == {5, 6}


def test_trust_records_refuse_tampering_and_hide_nothing_secret(tmp_path):
    ca = FileCAKeystore(tmp_path / "ca.json")
    directory = str(tmp_path / "device")
    trust = TrustStore(directory, KEY)
    trust.set_ca_keys(ca.public_keys())
    with pytest.raises(certificate.Malformed):
        trust.set_ca_keys([b"\x00" * 31])
    assert trust.ca_keys() == ca.public_keys()  # a refused set leaves the stored one
    assert "ca_keys=1" in repr(trust) and KEY.hex() not in repr(trust)
    path = os.path.join(directory, "trust", "ca-keys")
    data = bytearray(open(path, "rb").read())
    assert ca.public_keys()[0] not in data  # encrypted at rest like every record
    data[-1] ^= 1
    open(path, "wb").write(data)
    from e2ee.protocol.store import Corrupted
    with pytest.raises(Corrupted):
        TrustStore(directory, KEY)


# Issue 12, finding 7: a certificate for a device's keys under non-canonical bytes (X25519 bit 255
# set, a value not below 2^255 - 19, an Ed25519 encoding with a sign on x = 0) was accepted as one
# for "other" keys; even with a valid CA signature it is Malformed now, on both runtimes.
@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_finding7_certificates_with_non_canonical_identity_dh_refused(runtime, micropython, tmp_path):
    from e2ee_host.proto.e2ee.v1 import certificate_pb2 as pb

    ca = FileCAKeystore(tmp_path / "ca.json")
    root, cases = tmp_path / "root", tmp_path / "cases"
    cases.mkdir()
    bob = SessionManager.create(str(root / "bob"), KEY, one_time=1)
    ik, is_ = identity(bob)

    def signed(identity_dh: bytes, identity_sign: bytes) -> bytes:  # as issue_certificate, unchecked
        body = pb.DeviceCertificate(
            version=1, serial=fleet_ca.new_serial(), device_id="bob", fleet="plant.north",
            identity_dh=identity_dh, identity_sign=identity_sign, not_before=NOW - DAY, not_after=NOW + DAY,
            issuer_key_id=ca.active_key_id()).SerializeToString(deterministic=True)
        signature = ca.sign(certificate.CERT_LABEL + body, ca.active_key_id())
        return pb.SignedCertificate(certificate=body, signature=signature).SerializeToString()

    files = {"ca-keys": ca.public_keys()[0], "now": NOW.to_bytes(8, "big"), "good": signed(ik, is_),
             "dh-bit-255": signed(ik[:31] + bytes([ik[31] | 0x80]), is_),
             "dh-not-below-p": signed((2**255 - 19).to_bytes(32, "little"), is_),
             "sign-non-canonical": signed(ik, b"\x01" + bytes(30) + b"\x80")}
    for name, data in files.items():
        (cases / (name + ".bin")).write_bytes(data)
    script = DEVICE_TESTS / "check_non_canonical_certificates.py"
    if runtime == "micropython":
        out = micropython.run(script, str(root), str(cases))
    else:
        proc = subprocess.run([sys.executable, str(script), str(root), str(cases)], capture_output=True,
                              text=True,
                              env=dict(os.environ, PYTHONPATH="%s:%s" % (ROOT / "firmware", DEVICE_TESTS)))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout
    assert out.strip() == "ok non-canonical certificates", out
