"""Fuzz target: certificates and revocation lists (firmware/e2ee/protocol/certificate.py) and the
trust store that keeps them (trust.py; docs/protocol.md §6, "Certified sessions"), with a real
Fleet CA (e2ee_host.fleet_ca). Inputs: bytes, mutations of issued certificates and lists, and
mutated certificate or list bodies that the CA then signs, so the checks after the signature
(revocation, validity, names, serial order, rollback) see hostile but authentic input too.
Outcomes: success or a certificate.CertificateError; a refused list leaves the trust store's
files and version as they were.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fuzzing import fuzz, inputs, mutated, outcome, scratch_copy, snapshot
from hypothesis import given
from hypothesis import strategies as st

from e2ee.protocol import certificate
from e2ee.protocol.certificate import CertificateError
from e2ee.protocol.keys import KeyStore
from e2ee.protocol.trust import TrustStore
from e2ee_host import fleet_ca
from e2ee_host.proto.e2ee.v1 import certificate_pb2 as pb

KEY = bytes(range(32))
NOW = 1_800_000_000
DAY = 86_400
CERT_INPUT = certificate.MAX_SIGNED_CERTIFICATE + 8  # inputs up to just past the limit


class Fleet:
    """A CA, two devices' certificates, lists of versions 1 and 2, and a trust store template
    (CA keys, own certificate, list 1)."""

    def __init__(self, root: Path) -> None:
        self.ca = fleet_ca.FileCAKeystore(root / "ca.json")
        self.ca_keys = self.ca.public_keys()
        own, peer = KeyStore.generate(), KeyStore.generate()
        self.peer_identity = (peer.ik_pub, peer.is_pub)
        self.own = self.issue("gw-1", own)
        self.peer = self.issue("pump-7", peer)
        self.revoked = self.issue("pump-8", KeyStore.generate())
        serials = [certificate.decode_certificate_unverified(c).serial for c in (self.revoked,)]
        self.crl1 = fleet_ca.sign_revocation_list(self.ca, version=1, revoked_serials=serials, issued_at=NOW)
        self.crl2 = fleet_ca.sign_revocation_list(
            self.ca, version=2, revoked_serials=serials + [fleet_ca.new_serial() for _ in range(5)],
            issued_at=NOW)
        self.crl = certificate.verify_revocation_list(self.crl1, self.ca_keys, 0)
        self.template = root / "template"
        trust = TrustStore(str(self.template), KEY)
        trust.set_ca_keys(self.ca_keys)
        trust.set_certificate(self.own, NOW, (own.ik_pub, own.is_pub))
        trust.update_revocation_list(self.crl1)

    def issue(self, device_id: str, keys: KeyStore) -> bytes:
        return fleet_ca.issue_certificate(self.ca, device_id=device_id, fleet="plant.north",
                                          identity_dh=keys.ik_pub, identity_sign=keys.is_pub,
                                          roles=["sensor", "valve"], not_before=NOW - DAY,
                                          not_after=NOW + 30 * DAY)

    def certificates(self) -> list[bytes]:
        return [self.own, self.peer, self.revoked]

    def lists(self) -> list[bytes]:
        return [self.crl1, self.crl2]

    def sign_certificate(self, body: bytes) -> bytes:
        signature = self.ca.sign(certificate.CERT_LABEL + body, self.ca.active_key_id())
        return pb.SignedCertificate(certificate=body, signature=signature).SerializeToString()

    def sign_list(self, body: bytes) -> bytes:
        signature = self.ca.sign(certificate.CRL_LABEL + body, self.ca.active_key_id())
        return pb.SignedRevocationList(revocation_list=body, signature=signature).SerializeToString()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: Any) -> Fleet:
    return Fleet(tmp_path_factory.mktemp("fleet"))


def _bodies(signed: list[bytes], cls: Any, field: str) -> list[bytes]:
    return [getattr(cls.FromString(s), field) for s in signed]


def _check_certificate(cert: certificate.Certificate) -> None:
    # What verification returns is within the limits the rest of the SDK relies on.
    assert 1 <= len(cert.device_id) <= certificate.MAX_NAME and 1 <= len(cert.fleet) <= certificate.MAX_NAME
    assert len(cert.serial) == certificate.SERIAL_SIZE and len(cert.identity_dh) == certificate.KEY_SIZE
    assert len(cert.roles) <= certificate.MAX_ROLES and cert.not_before < cert.not_after


@fuzz
@given(data=st.data())
def test_fuzz_certificate_decode_and_verify(fleet: Fleet, data: st.DataObject) -> None:
    raw = data.draw(inputs(fleet.certificates(), fleet.ca_keys, max_size=CERT_INPUT))
    ok, cert = outcome(certificate.decode_certificate_unverified, CertificateError, raw)
    if ok:
        _check_certificate(cert)
    now = data.draw(st.sampled_from([None, NOW, 0, 2**64 - 1]))
    ok, cert = outcome(certificate.verify_certificate, CertificateError, raw, fleet.ca_keys, now, fleet.crl)
    if ok:
        _check_certificate(cert)


@fuzz
@given(data=st.data())
def test_fuzz_certificate_signed_bodies(fleet: Fleet, data: st.DataObject) -> None:
    # Hostile bodies with a valid CA signature: every check after the signature sees them.
    bodies = _bodies(fleet.certificates(), pb.SignedCertificate, "certificate")
    body = data.draw(mutated(bodies, fleet.ca_keys))
    ok, cert = outcome(certificate.verify_certificate, CertificateError, fleet.sign_certificate(body),
                       fleet.ca_keys, NOW, fleet.crl)
    if ok:
        _check_certificate(cert)


@fuzz
@given(data=st.data())
def test_fuzz_revocation_list_decode_and_verify(fleet: Fleet, data: st.DataObject) -> None:
    raw = data.draw(inputs(fleet.lists(), max_size=1200))
    ok, crl = outcome(certificate.decode_revocation_list_unverified, CertificateError, raw)
    if ok:
        assert crl.version >= 1 and len(crl.serials()) == len(crl) <= certificate.MAX_REVOKED
    outcome(certificate.verify_revocation_list, CertificateError, raw, fleet.ca_keys, 1)
    body = data.draw(mutated(_bodies(fleet.lists(), pb.SignedRevocationList, "revocation_list")))
    signed = fleet.sign_list(body)
    ok, crl = outcome(certificate.verify_revocation_list, CertificateError, signed, fleet.ca_keys, 1)
    if ok:
        serials = crl.serials()
        assert serials == sorted(set(serials)) and all(crl.is_revoked(s) for s in serials)


@fuzz
@given(data=st.data())
def test_fuzz_trust_store_revocation_update(fleet: Fleet, data: st.DataObject) -> None:
    # A list from the broker's retained topic: stored only when it verifies and is newer.
    if data.draw(st.booleans()):
        raw = data.draw(inputs(fleet.lists(), max_size=1200))
    else:
        body = data.draw(mutated(_bodies(fleet.lists(), pb.SignedRevocationList, "revocation_list")))
        raw = fleet.sign_list(body)
    with scratch_copy(fleet.template) as directory:
        trust = TrustStore(str(directory), KEY)
        before = snapshot(directory)
        ok, version = outcome(trust.update_revocation_list, CertificateError, raw)
        if ok:
            assert version > 1 and trust.version == version
        else:
            assert snapshot(directory) == before and trust.version == 1
        assert TrustStore(str(directory), KEY).version == trust.version  # what a reboot reads


@fuzz
@given(data=st.data())
def test_fuzz_trust_store_verify_peer(fleet: Fleet, data: st.DataObject) -> None:
    # A sender certificate from a PreKeyMessage, presented for "pump-7" with its identity keys.
    raw = data.draw(inputs(fleet.certificates(), fleet.ca_keys, max_size=CERT_INPUT))
    trust = TrustStore(str(fleet.template), KEY)
    before = snapshot(fleet.template)
    ok, cert = outcome(trust.verify_peer, CertificateError, "pump-7", raw, NOW, fleet.peer_identity)
    if ok:
        assert cert.device_id == "pump-7" and (cert.identity_dh, cert.identity_sign) == fleet.peer_identity
    assert snapshot(fleet.template) == before
