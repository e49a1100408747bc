"""Fuzz target: public keys from the network, i.e. prekey bundles from the key directory
(firmware/e2ee/protocol/keys.py PrekeyBundle.from_bytes; docs/protocol.md §1, §2) and X3DH and
session starts from them (x3dh.initiate, SessionManager.start). Inputs: bytes and mutations of
real bundles, with and without a one-time prekey, and mutated bundles whose signed prekey the
peer then signs again, so X3DH gets past the signature with small-order, non-canonical or
foreign keys. Outcomes: success or the typed errors (keys.KeyFormatError, keys.KeyAgreementError,
session.SessionError, certificate.CertificateError); a refused start stores nothing.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from fuzzing import fuzz, inputs, mutated, outcome, scratch_copy, snapshot
from hypothesis import given
from hypothesis import strategies as st

from e2ee.protocol import session, x3dh
from e2ee.protocol.certificate import CertificateError
from e2ee.protocol.keys import (
    KeyAgreementError, KeyFormatError, KeyStore, PrekeyBundle, spk_signature_message,
)
from e2ee.protocol.trust import TrustStore
from e2ee_host import fleet_ca

KEY = bytes(range(32))
NOW = 1_800_000_000
DAY = 86_400
START_ERRORS = (KeyFormatError, KeyAgreementError, session.SessionError, CertificateError)


class Peers:
    """A device (template directory, certified) and the peer "pump-7" whose bundles it fetches."""

    def __init__(self, root: Path) -> None:
        ca = fleet_ca.FileCAKeystore(root / "ca.json")
        self.peer = KeyStore.generate(3)
        self.template = root / "device"
        trust = TrustStore(str(self.template), KEY)
        trust.set_ca_keys(ca.public_keys())
        own = session.SessionManager.create(str(self.template), KEY, one_time=2)
        trust.set_certificate(self._issue(ca, "gw-1", own.keystore), NOW)
        self.peer_certificate = self._issue(ca, "pump-7", self.peer)
        self.bundles = [self.peer.bundle().to_bytes()] + [self.peer.bundle(i).to_bytes()
                                                          for i in self.peer.one_time_prekey_ids()[:2]]

    @staticmethod
    def _issue(ca: fleet_ca.FileCAKeystore, device_id: str, keys: KeyStore) -> bytes:
        return fleet_ca.issue_certificate(ca, device_id=device_id, fleet="plant.north",
                                          identity_dh=keys.ik_pub, identity_sign=keys.is_pub,
                                          not_before=NOW - DAY, not_after=NOW + DAY)

    def resigned(self, data: bytes) -> bytes:
        """`data` (a bundle of the right size after mutation) with its SPK signature made again by
        the peer's identity key over whatever IK, spk_id and SPK it now holds."""
        if len(data) not in (165, 201):
            return data
        ik, spk_id, spk = data[1:33], struct.unpack(">I", data[65:69])[0], data[69:101]
        return data[:101] + self.peer.sign(spk_signature_message(ik, spk_id, spk)) + data[165:]


@pytest.fixture(scope="module")
def peers(tmp_path_factory: Any) -> Peers:
    return Peers(tmp_path_factory.mktemp("peers"))


def _bundle_keys(peers: Peers) -> list[bytes]:
    b = peers.peer.bundle()
    return [b.ik_pub, b.is_pub, b.spk_pub]


@fuzz
@given(data=st.data())
def test_fuzz_keys_bundle_decode(peers: Peers, data: st.DataObject) -> None:
    raw = data.draw(inputs(peers.bundles, _bundle_keys(peers), max_size=260))
    ok, bundle = outcome(PrekeyBundle.from_bytes, KeyFormatError, raw)
    if ok:
        assert PrekeyBundle.from_bytes(bundle.to_bytes()) == bundle
        outcome(x3dh.initiate, KeyAgreementError, KeyStore.generate(), bundle)


@fuzz
@given(data=st.data())
def test_fuzz_keys_session_start(peers: Peers, data: st.DataObject) -> None:
    # A certified start from a bundle the key directory served (a hostile directory may serve
    # anything): typed refusals only, and nothing stored unless the session was made.
    raw = data.draw(mutated(peers.bundles, _bundle_keys(peers)))
    if data.draw(st.booleans()):
        raw = peers.resigned(raw)
    with scratch_copy(peers.template) as directory:
        trust = TrustStore(str(directory), KEY)
        manager = session.SessionManager.open(str(directory), KEY, trust=trust)
        before = snapshot(directory)

        def start() -> None:
            manager.start("pump-7", PrekeyBundle.from_bytes(raw), peers.peer_certificate, NOW)

        ok, _ = outcome(start, START_ERRORS)
        if ok:
            assert manager.has_session("pump-7")
        else:
            assert snapshot(directory) == before
