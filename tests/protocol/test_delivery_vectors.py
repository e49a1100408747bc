"""Delivery known answers (docs/protocol.md §8): docs/vectors/delivery.txt.

The file is written by `published_vectors()` below from a reference written from §8 on top of
`cryptography` (Ed25519, X25519) and the protobuf runtime (`envelope_pb2`), not with the firmware:
data and receipt records with their exact bytes and what a receipt names, malformed records, the
signed session-reset request (the signed message, the signature and the Control envelope) for fixed
identity keys, requests a target must refuse, and the receiver's window (low, bitmap) after each
seq of four sequences. `E2EE_UPDATE_VECTORS=1` (or `python tests/protocol/test_delivery_vectors.py`)
rewrites it. The firmware reproduces every record on MicroPython and CPython
(tests/device/check_delivery_vectors.py).
"""
from __future__ import annotations

import hashlib
import os
import struct
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

ROOT = Path(__file__).resolve().parents[2]
DEVICE_TESTS = ROOT / "tests" / "device"
for _path in (DEVICE_TESTS, ROOT / "host", ROOT / "tests", ROOT / "tests" / "protocol"):
    sys.path.insert(0, str(_path))
VECTORS = ROOT / "docs" / "vectors" / "delivery.txt"

import vectorfile  # noqa: E402
from test_session import run_device_script  # noqa: E402

from e2ee_host.proto.e2ee.v1 import envelope_pb2 as pb  # noqa: E402

# §8 kinds, labels and limits, written out here rather than imported from the firmware.
DATA, RECEIPT = 1, 2
BITS = 30
RESET_CONTEXT = b"e2ee-iot session reset v1"
RESET_KEYS, SIGNATURE = 4, 64  # a request names 1..4 ratchet keys, then its signature
WINDOW, RESET_INTERVAL, TTL, RECEIPT_GRACE, MAX_PAYLOAD = 16, 60, 604800, 30, 4083

HEADER = """Delivery known answers (docs/protocol.md §8), e2ee-iot protocol version 1.
Written by tests/protocol/test_delivery_vectors.py published_vectors() from a reference over
`cryptography` (Ed25519, X25519) and the protobuf runtime (%s, SerializeToString(deterministic=True)),
not the firmware. Private inputs are SHA-256 of "e2ee-iot delivery vectors <label>". License: CC0.
data: stream (8), seq (be32), payload -> record = 01 || stream || seq || payload.
receipt: stream, low (be32), bits (be32) -> record = 02 || stream || low || bits; named: the seqs
from max(1, low - 1) to low + 31 the receipt names (seq <= low, or bit seq - low - 1 set), be32 each.
Malformed/record-<what>: decoding the session plaintext `record` raises Malformed.
reset: requester and target ids (ASCII), the requester's identity signing key (signing_seed,
signing_pub), dh (the 1 to 4 ratchet keys the request names, 32 bytes each, newest first) ->
message (the signed reset message), signature (Ed25519), payload = dh || signature, wire (the
Control envelope, kind SESSION_RESET).
ResetRefused/reset-<what>: target `target`, holding signing_pub as `requester`'s identity, gets
`wire` from `requester`: the signature over the reset message it rebuilds does not verify.
ResetRefused/reset-no-session: a target without a session with `requester` refuses `wire`.
Malformed/reset-<what>: a Control SESSION_RESET whose payload is not 32k + 64 bytes, k = 1..4, is refused.
window-X: the receiver's window of one inbound stream, processed in file order from low = 0,
bits = 0: taking seq gives new (01 delivered, 00 a duplicate), then low and bits, and the
receipt it sends for the stream of the first record of window-X."""


def h(label: str) -> bytes:
    return hashlib.sha256(b"e2ee-iot delivery vectors " + label.encode()).digest()


def be32(n: int) -> bytes:
    return struct.pack(">I", n)


class Refused(Exception):
    """The §8 error, by name."""


# ---- reference ----------------------------------------------------------------------------------

def data_record(stream: bytes, seq: int, payload: bytes) -> bytes:
    return bytes((DATA,)) + stream + be32(seq) + payload


def receipt_record(stream: bytes, low: int, bits: int) -> bytes:
    return bytes((RECEIPT,)) + stream + be32(low) + be32(bits)


def decode(record: bytes) -> tuple:
    """§8 record decoding: (kind, stream, seq, payload) or (kind, stream, low, bits)."""
    if len(record) >= 13 and record[0] == DATA:
        seq = struct.unpack(">I", record[9:13])[0]
        if seq == 0:
            raise Refused("Malformed")
        return DATA, record[1:9], seq, record[13:]
    if len(record) == 17 and record[0] == RECEIPT:
        low, bits = struct.unpack(">II", record[9:17])
        if bits >= 1 << BITS:
            raise Refused("Malformed")
        return RECEIPT, record[1:9], low, bits
    raise Refused("Malformed")


def names(low: int, bits: int, seq: int) -> bool:
    """Whether a receipt (low, bits) names seq."""
    return seq <= low or (seq - low - 1 < BITS and bool(bits >> (seq - low - 1) & 1))


def take(low: int, bits: int, seq: int) -> tuple[bool, int, int]:
    """The receiver's window: (new, low, bits) after seq arrives. Set = delivered: every seq up to
    low and low + 1 + i for bit i. A seq beyond low + BITS moves low up to seq - BITS first."""
    delivered = {s for s in range(low + 1, low + 1 + BITS) if bits >> (s - low - 1) & 1}
    if names(low, bits, seq):
        return False, low, bits
    if seq - low > BITS:
        low = seq - BITS
        delivered = {s for s in delivered if s > low}
    delivered.add(seq)
    while low + 1 in delivered:
        low += 1
        delivered.discard(low)
    return True, low, sum(1 << (s - low - 1) for s in delivered)


def reset_message(requester: str, target: str, keys: bytes) -> bytes:
    r, t = requester.encode(), target.encode()
    return RESET_CONTEXT + bytes((len(r),)) + r + bytes((len(t),)) + t + keys


def control_wire(payload: bytes) -> bytes:
    body = pb.Control(kind=pb.Control.SESSION_RESET, payload=payload).SerializeToString(deterministic=True)
    return pb.Envelope(version=1, type=pb.CONTROL, body=body).SerializeToString(deterministic=True)


def verify_reset(requester: str, target: str, signing_pub: bytes, wire: bytes) -> bytes:
    """What a target checks of a request's bytes (§8, the size and signature): returns the keys."""
    env = pb.Envelope.FromString(wire)
    control = pb.Control.FromString(env.body)
    assert env.type == pb.CONTROL and control.kind == pb.Control.SESSION_RESET
    k = (len(control.payload) - SIGNATURE) // 32
    if not 0 < k <= RESET_KEYS or len(control.payload) != 32 * k + SIGNATURE:
        raise Refused("Malformed")
    keys, sig = control.payload[:32 * k], control.payload[32 * k:]
    try:
        Ed25519PublicKey.from_public_bytes(signing_pub).verify(sig, reset_message(requester, target, keys))
    except InvalidSignature:
        raise Refused("ResetRefused") from None
    return keys


def signing_pub(seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


def ratchet_pub(label: str) -> bytes:
    return X25519PrivateKey.from_private_bytes(h(label)).public_key().public_bytes_raw()


# ---- the records ---------------------------------------------------------------------------------

def reference_records() -> list[dict]:
    recs: list[dict] = []
    s1, s2 = h("stream 1")[:8], h("stream 2")[:8]

    for stream, seq, payload in ((s1, 1, b""), (s1, 2, b"valve 7 open"), (s2, 0xFFFFFFFF, b"\x00" * 4),
                                 (s2, 0x01000000, bytes(range(32)))):
        record = data_record(stream, seq, payload)
        assert decode(record) == (DATA, stream, seq, payload)
        recs.append({"id": "data", "stream": stream, "seq": be32(seq), "payload": payload, "record": record})

    for stream, low, bits in ((s1, 0, 0), (s1, 0, 0b1), (s1, 5, 0b1010), (s2, 100, (1 << BITS) - 1),
                              (s2, 0xFFFFFFE1, 1 << (BITS - 1))):
        record = receipt_record(stream, low, bits)
        assert decode(record) == (RECEIPT, stream, low, bits)
        named = [s for s in range(max(1, low - 1), low + 32) if s <= 0xFFFFFFFF and names(low, bits, s)]
        recs.append({"id": "receipt", "stream": stream, "low": be32(low), "bits": be32(bits),
                     "record": record, "named": b"".join(be32(s) for s in named)})

    bad = (("empty", b""), ("kind-0", b"\x00" + s1 + be32(1)), ("kind-3", b"\x03" + s1 + be32(1) + be32(0)),
           ("data-12", data_record(s1, 1, b"")[:12]), ("data-seq-0", data_record(s1, 0, b"x")),
           ("receipt-16", receipt_record(s1, 1, 0)[:16]), ("receipt-18", receipt_record(s1, 1, 0) + b"\x00"),
           ("receipt-13", receipt_record(s1, 1, 0)[:13]),
           ("receipt-bit-30", receipt_record(s1, 1, 1 << BITS)),
           ("receipt-bit-31", receipt_record(s1, 1, 1 << 31)))
    for what, record in bad:
        with pytest.raises(Refused, match="Malformed"):
            decode(record)
        recs.append({"id": "Malformed/record-" + what, "result": "invalid", "record": record})

    # Session-reset requests for fixed identity keys; dh: real X25519 ratchet keys.
    sent = []
    # dh: the keys a request names (the newest first), one or several (a forged failure's among them)
    for requester, target, label, n in (("bob", "alice", "bob", 1), ("valve-7", "Gateway.North-1", "valve-7", 1),
                                        ("bob", "alice", "bob", 4)):
        seed = h("identity signing " + label)
        dh = b"".join(ratchet_pub("ratchet %s %d" % (target, i)) if i else ratchet_pub("ratchet " + target)
                      for i in range(n))
        message = reset_message(requester, target, dh)
        signature = Ed25519PrivateKey.from_private_bytes(seed).sign(message)
        payload = dh + signature
        wire = control_wire(payload)
        assert verify_reset(requester, target, signing_pub(seed), wire) == dh
        sent.append((requester, target, seed, dh, signature, wire))
        recs.append({"id": "reset", "requester": requester.encode(), "target": target.encode(),
                     "signing_seed": seed, "signing_pub": signing_pub(seed), "dh": dh, "message": message,
                     "signature": signature, "payload": payload, "wire": wire})

    requester, target, seed, dh, signature, wire = sent[0]
    pub = signing_pub(seed)
    mallory = h("identity signing mallory")
    flipped = bytearray(signature)
    flipped[0] ^= 1
    other_dh = ratchet_pub("ratchet other")
    refused = (
        # the request bob signed for alice, replayed to carol (the target id is signed)
        ("other-target", requester, "carol", pub, wire),
        # bob's request sent in mallory's name (the requester id is signed); mallory's key held
        ("other-requester", "mallory", target, signing_pub(mallory), wire),
        # a fleet member signs with its own identity key in bob's name
        ("other-identity", requester, target, pub,
         control_wire(dh + Ed25519PrivateKey.from_private_bytes(mallory).sign(reset_message(requester, target, dh)))),
        ("flipped-signature", requester, target, pub, control_wire(dh + bytes(flipped))),
        # another ratchet key with bob's signature over the first one
        ("other-dh", requester, target, pub, control_wire(other_dh + signature)),
        # the ids are length-prefixed: (bo, balice) is not (bob, alice)
        ("id-boundary", "bo", "balice", pub, wire),
    )
    for what, req, tgt, key, w in refused:
        with pytest.raises(Refused, match="ResetRefused"):
            verify_reset(req, tgt, key, w)
        recs.append({"id": "ResetRefused/reset-" + what, "result": "invalid", "requester": req.encode(),
                     "target": tgt.encode(), "signing_pub": key, "wire": w})
    recs.append({"id": "ResetRefused/reset-no-session", "result": "invalid", "requester": requester.encode(),
                 "target": target.encode(), "wire": wire})
    for what, payload in (("empty", b""), ("dh-only", dh), ("95", (dh + signature)[:95]),
                          ("97", dh + signature + b"\x00"), ("5-keys", dh * 5 + signature),
                          ("signature-only", signature)):
        with pytest.raises(Refused, match="Malformed"):
            verify_reset(requester, target, pub, control_wire(payload))
        recs.append({"id": "Malformed/reset-" + what, "result": "invalid", "requester": requester.encode(),
                     "wire": control_wire(payload)})

    # The receiver's window: out of order, duplicates, slides past the bitmap, a first seq far
    # ahead (a receiver that lost its record), the 30/31 boundary, a jump beyond the bitmap, the
    # last seqs of a stream.
    windows = (
        ("a", s1, (2, 1, 2, 5, 3, 4, 4, 7, 9, 38, 38, 8, 10, 6, 9, 39)),
        ("b", s2, (40, 11, 10, 12, 41, 40)),
        ("c", s1, (1, 31, 31, 32, 3, 2, 40, 140, 120, 111, 110)),
        ("d", s2, (0xFFFFFFF0, 0xFFFFFFFF, 0xFFFFFFE1, 0xFFFFFFE2, 0xFFFFFFFE, 0xFFFFFFE0)),
    )
    for name, stream, seqs in windows:
        low = bits = 0
        for seq in seqs:
            new, low, bits = take(low, bits, seq)
            assert bits < 1 << BITS
            recs.append({"id": "window-" + name, "seq": be32(seq), "new": b"\x01" if new else b"\x00",
                         "low": be32(low), "bits": be32(bits), "receipt": receipt_record(stream, low, bits)})
    return recs


def published_vectors() -> str:
    from google.protobuf import __version__ as protobuf_version

    path = Path(os.environ.get("TMPDIR", "/tmp")) / ("delivery-vectors-%d.txt" % os.getpid())
    vectorfile.write(str(path), HEADER % ("protobuf %s.x" % protobuf_version.split(".")[0]),
                     reference_records())
    text = path.read_text()
    path.unlink()
    return text


# ---- tests ---------------------------------------------------------------------------------------

def test_published_vectors_are_current() -> None:
    text = published_vectors()
    if os.environ.get("E2EE_UPDATE_VECTORS"):
        VECTORS.write_text(text)
    assert VECTORS.read_text() == text, "docs/vectors/delivery.txt is stale: E2EE_UPDATE_VECTORS=1"


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_firmware_matches_delivery_vectors(runtime, micropython, tmp_path) -> None:  # type: ignore[no-untyped-def]
    records = sum(1 for line in VECTORS.read_text().splitlines() if line and not line.startswith("#"))
    out = run_device_script(runtime, micropython, "check_delivery_vectors.py", str(VECTORS), str(tmp_path))
    assert out.strip() == "ok delivery vectors=%d" % records, out


def test_vectors_cover_every_refusal() -> None:
    ids = [rec["id"] for rec in vectorfile.records(str(VECTORS))]
    assert {i.split("/")[0] for i in ids if "/" in i} == {"Malformed", "ResetRefused"}
    windows = [rec for rec in vectorfile.records(str(VECTORS)) if rec["id"].startswith("window-")]
    assert {rec["new"] for rec in windows} == {b"\x00", b"\x01"}
    # some seqs slide the bitmap (low jumps by more than one)
    assert any(int.from_bytes(b["low"], "big") - int.from_bytes(a["low"], "big") > 1
               for a, b in zip(windows, windows[1:]) if a["id"] == b["id"])


def test_reference_window_against_a_set() -> None:
    # take() against the plain definition: a seq is new iff it was not taken before and lies above
    # top - BITS (top: the highest seq taken), below which the window counts every seq as taken.
    import random

    rnd = random.Random(8)
    for _ in range(200):
        low = bits = top = 0
        taken: set[int] = set()
        for _ in range(60):
            seq = max(1, top + rnd.randint(-40, 45))
            new, low, bits = take(low, bits, seq)
            assert new == (seq not in taken and seq > top - BITS), (seq, top, sorted(taken))
            taken.add(seq)
            top = max(top, seq)
            assert top - BITS <= low <= top and bits < 1 << BITS


def test_reference_refuses_tampering() -> None:
    seed = h("t")
    dh = ratchet_pub("t")
    wire = control_wire(dh + Ed25519PrivateKey.from_private_bytes(seed).sign(reset_message("a", "b", dh)))
    assert verify_reset("a", "b", signing_pub(seed), wire) == dh
    for req, tgt in (("b", "a"), ("a", "c"), ("ab", "")):
        with pytest.raises(Refused, match="ResetRefused"):
            verify_reset(req, tgt, signing_pub(seed), wire)


def test_limits_pinned() -> None:
    from e2ee.protocol import delivery, ratchet

    assert (delivery.DATA, delivery.RECEIPT, delivery.BITS) == (DATA, RECEIPT, BITS)
    assert (delivery.WINDOW, delivery.RESET_INTERVAL, delivery.TTL, delivery.RECEIPT_GRACE,
            delivery.MAX_PAYLOAD) == (WINDOW, RESET_INTERVAL, TTL, RECEIPT_GRACE, MAX_PAYLOAD)
    assert (delivery._RESET_CONTEXT, delivery._RESET_KEYS, delivery._SIGNATURE, delivery._FAILURES,
            delivery._RESEND_MAX, delivery._INBOUND, delivery.MAX_RESETS, delivery.PROBE_AFTER) == (
        RESET_CONTEXT, RESET_KEYS, SIGNATURE, 3, 3600, 2, 8, 60)
    # the window fits the receiver's bitmap and stays below the ratchet's skip limit
    assert WINDOW <= BITS and WINDOW < ratchet.MAX_SKIP
    # a data record of MAX_PAYLOAD is the largest session plaintext (envelope ciphertext - tag)
    assert 13 + MAX_PAYLOAD == 4096


if __name__ == "__main__":
    VECTORS.write_text(published_vectors())
