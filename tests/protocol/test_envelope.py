"""The envelope (docs/protocol.md §4): the device codec on MicroPython and CPython, the protobuf
runtime on the host, and the same bytes between them in both directions.

Published vectors: docs/vectors/envelope.txt is written by `published_vectors()` below (wire bytes
of the valid records from the protobuf runtime); E2EE_UPDATE_VECTORS=1 rewrites it.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import vectorfile
from google.protobuf import __version__ as protobuf_version
from support import DEVICE_TESTS, ROOT, regenerate_protobuf

from e2ee.protocol import envelope as device
from e2ee_host import envelope as host
from e2ee_host.envelope import pb

SCRIPT = DEVICE_TESTS / "check_envelope.py"
VECTORS = ROOT / "docs" / "vectors" / "envelope.txt"
PROTO = ROOT / "proto" / "e2ee" / "v1" / "envelope.proto"
GENERATED = ROOT / "host" / "e2ee_host" / "proto"


def run_cpython(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": "%s:%s" % (ROOT / "firmware", DEVICE_TESTS)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


# ---- the device script: limits, round trips, malformed cases, fuzzing, published vectors -----

def test_device_checks_micropython(micropython):
    out = micropython.run(SCRIPT)
    assert out.startswith("ok envelope"), out
    print(out)


def test_device_checks_cpython():
    out = run_cpython("200")
    assert out.startswith("ok envelope"), out
    print(out)


# ---- generated code ----------------------------------------------------------------------

def test_generated_code_is_current(tmp_path):
    # The checked-in envelope_pb2.py/.pyi must be exactly what protoc makes of the .proto now.
    # grpcio-tools is in the dev extra; without it protoc does not run and this test fails.
    fresh_dir = regenerate_protobuf(PROTO, tmp_path)
    for name in ("envelope_pb2.py", "envelope_pb2.pyi"):
        fresh = (fresh_dir / name).read_bytes()
        assert (GENERATED / "e2ee" / "v1" / name).read_bytes() == fresh, (
            "%s is stale: regenerate it (command in host/e2ee_host/envelope.py)" % name)


def test_enum_values_match_device():
    assert (pb.PREKEY, pb.RATCHET, pb.SENDER_KEY, pb.CONTROL) == (
        device.PREKEY, device.RATCHET, device.SENDER_KEY, device.CONTROL)
    assert pb.TYPE_UNSPECIFIED == 0 and pb.Control.KIND_UNSPECIFIED == 0
    assert pb.Control.SESSION_RESET == device.SESSION_RESET
    assert device.Control.KINDS == tuple(v for v in pb.Control.Kind.values() if v)


# ---- records <-> protobuf messages, for comparing the two implementations ------------------

def to_pb(rec):
    if isinstance(rec, device.Control):
        return pb.Control(kind=rec.kind, payload=bytes(rec.payload))
    if isinstance(rec, device.PreKeyMessage):
        return pb.PreKeyMessage(identity_dh=rec.identity_dh, identity_sign=rec.identity_sign,
                                base_key=rec.base_key, signed_prekey_id=rec.signed_prekey_id,
                                one_time_prekey_id=rec.one_time_prekey_id, message=to_pb(rec.message),
                                sender_certificate=bytes(rec.sender_certificate))
    return pb.RatchetMessage(dh=rec.dh, pn=rec.pn, n=rec.n, ciphertext=bytes(rec.ciphertext))


def pb_fields(msg) -> dict:
    out = {}
    if isinstance(msg, pb.Control):
        return {"type": bytes([pb.CONTROL]), "kind": bytes([msg.kind]), "payload": msg.payload}
    if isinstance(msg, pb.PreKeyMessage):
        out = {"identity_dh": msg.identity_dh, "identity_sign": msg.identity_sign, "base_key": msg.base_key,
               "signed_prekey_id": msg.signed_prekey_id.to_bytes(4, "big"),
               "one_time_prekey_id": msg.one_time_prekey_id.to_bytes(4, "big")}
        if msg.sender_certificate:  # vector records carry the field only when it is set
            out["sender_certificate"] = msg.sender_certificate
        msg_type, msg = pb.PREKEY, msg.message
    else:
        msg_type = pb.RATCHET
    return {"type": bytes([msg_type]), **out, "dh": msg.dh, "pn": msg.pn.to_bytes(4, "big"),
            "n": msg.n.to_bytes(4, "big"), "ciphertext": msg.ciphertext}


def pb_parse(wire: bytes):
    """The protobuf runtime alone, no device-codec validation."""
    env = pb.Envelope.FromString(wire)
    cls = {pb.PREKEY: pb.PreKeyMessage, pb.RATCHET: pb.RatchetMessage, pb.CONTROL: pb.Control}[env.type]
    return cls.FromString(env.body)


def pb_wire(msg) -> bytes:
    msg_type = {pb.PreKeyMessage: pb.PREKEY, pb.RatchetMessage: pb.RATCHET, pb.Control: pb.CONTROL}[type(msg)]
    return pb.Envelope(version=1, type=msg_type, body=msg.SerializeToString(deterministic=True)
                       ).SerializeToString(deterministic=True)


def random_pb(rng: random.Random, largest: bool = True):
    """A random message; largest=False keeps ciphertexts under 320 bytes, so a vector-file line
    stays under 4 KB for the device's line reader (tests/vectors/README.md)."""
    def counter() -> int:
        return rng.choice([0, rng.randrange(128), rng.randrange(1 << 21), rng.getrandbits(32), 0xFFFFFFFF])

    def key() -> bytes:  # a canonical public key (finding 7): bit 255 clear
        return rng.randbytes(31) + bytes([rng.randrange(128)])

    kind = rng.randrange(3)
    if kind == 2:
        payload = rng.randbytes(rng.choice([0, rng.randrange(device.MAX_CONTROL_PAYLOAD + 1)]))
        return pb.Control(kind=pb.Control.SESSION_RESET, payload=payload)
    msg = pb.RatchetMessage(dh=key(), pn=counter(), n=counter(),
                            ciphertext=rng.randbytes(rng.choice([16, 16 + rng.randrange(300)]
                                                                + [device.MAX_CIPHERTEXT] * largest)))
    if kind == 0:
        return msg
    cert = rng.choice([b"", rng.randbytes(rng.randrange(1, device.MAX_SENDER_CERTIFICATE + 1))])
    return pb.PreKeyMessage(identity_dh=key(), identity_sign=key(),
                            base_key=key(), signed_prekey_id=counter(),
                            one_time_prekey_id=counter(), message=msg, sender_certificate=cert)


# ---- protobuf -> device -----------------------------------------------------------------------

def write_protobuf_set(path: Path, count: int) -> None:
    rng = random.Random(20240603)
    recs = []
    for i in range(count):
        msg = random_pb(rng, largest=False)
        recs.append({"id": "protobuf-%d" % i, **pb_fields(msg), "wire": pb_wire(msg)})
    vectorfile.write(str(path), "envelopes serialized by the protobuf runtime", recs)


def test_protobuf_to_device_micropython(micropython, tmp_path):
    path = tmp_path / "from_protobuf.txt"
    write_protobuf_set(path, 300)
    # Decoded on the device to the same fields, and the device re-encodes the identical bytes.
    assert micropython.run(SCRIPT, "decode", str(path)).split() == ["ok", "decode", "300"]


def test_protobuf_to_device_cpython(tmp_path):
    path = tmp_path / "from_protobuf.txt"
    write_protobuf_set(path, 300)
    assert run_cpython("decode", str(path)).split() == ["ok", "decode", "300"]


# ---- device -> protobuf -----------------------------------------------------------------------

def check_device_set(path: Path) -> int:
    n = 0
    for rec in vectorfile.records(str(path)):
        wire = rec.pop("wire")
        del rec["id"]
        msg = pb_parse(wire)
        assert pb_fields(msg) == rec
        assert pb_wire(msg) == wire  # protobuf writes the very same bytes
        assert pb.Envelope.FromString(wire).version == 1
        n += 1
    return n


def test_device_to_protobuf_micropython(micropython, tmp_path):
    path = tmp_path / "from_device.txt"
    assert micropython.run(SCRIPT, "encode", str(path), "300").split() == ["ok", "encode", "300"]
    assert check_device_set(path) == 300


def test_device_to_protobuf_cpython(tmp_path):
    path = tmp_path / "from_device.txt"
    assert run_cpython("encode", str(path), "300").split() == ["ok", "encode", "300"]
    assert check_device_set(path) == 300


# ---- the host helpers -------------------------------------------------------------------------

def test_host_round_trip_and_device_bytes():
    rng = random.Random(7)
    for _ in range(300):
        msg = random_pb(rng)
        wire = host.encode(msg)
        assert wire == pb_wire(msg)
        assert host.decode(wire) == msg
        assert bytes(device.encode(device.decode(wire))) == wire
        assert to_pb(device.decode(wire)) == msg


def test_host_decode_as():
    msg = pb.Control(kind=pb.Control.SESSION_RESET)
    assert host.decode_as(host.encode(msg), pb.Control) == msg
    with pytest.raises(host.WrongType):
        host.decode_as(host.encode(msg), pb.RatchetMessage)


@pytest.mark.parametrize("msg", [
    pb.RatchetMessage(dh=bytes(31), ciphertext=bytes(16)),
    pb.RatchetMessage(dh=bytes(32), ciphertext=bytes(15)),
    pb.RatchetMessage(dh=bytes(32), ciphertext=bytes(device.MAX_CIPHERTEXT + 1)),
    pb.PreKeyMessage(identity_dh=bytes(32), identity_sign=bytes(32), base_key=bytes(32)),  # no message
    pb.PreKeyMessage(identity_dh=bytes(32), identity_sign=bytes(33), base_key=bytes(32),
                     message=pb.RatchetMessage(dh=bytes(32), ciphertext=bytes(16))),
    pb.Control(),
    pb.Control(kind=2),
    pb.PreKeyMessage(identity_dh=bytes(32), identity_sign=bytes(32), base_key=bytes(32),
                     message=pb.RatchetMessage(dh=bytes(32), ciphertext=bytes(16)),
                     sender_certificate=bytes(device.MAX_SENDER_CERTIFICATE + 1)),
    pb.Control(kind=1, payload=bytes(device.MAX_CONTROL_PAYLOAD + 1)),
    pb.Envelope(version=1),
], ids=lambda m: type(m).__name__)
def test_host_encode_rejects_like_device(msg):
    with pytest.raises(host.EncodeError):
        host.encode(msg)


def outcome(fn, wire):
    try:
        return fn(wire)
    except device.DecodeError as e:
        return type(e)


def test_host_and_device_agree_on_mutated_input():
    # Same verdict and error class from host and device; whatever the device accepts, the bare
    # protobuf runtime parses to the same fields (the device never reads bytes differently).
    import check_envelope as cases

    rng, edits = random.Random(99), cases.Stream(b"host mutations")
    accepted = device_only_rejects = 0
    for _ in range(150):
        wire = pb_wire(random_pb(rng))
        for _ in range(40):
            m = bytes(cases.mutate(edits, wire))
            dev, hst = outcome(device.decode, m), outcome(host.decode, m)
            if isinstance(dev, type):
                assert hst is dev, (m.hex(), dev, hst)
                try:
                    pb_parse(m)
                    device_only_rejects += 1
                except Exception:
                    pass
                continue
            accepted += 1
            assert pb_fields(to_pb(dev)) == pb_fields(hst) == pb_fields(pb_parse(m)), m.hex()
    assert accepted > 100  # the mutations also reach the accepting paths
    print("accepted %d, rejected by the device codec but parsed by bare protobuf %d"
          % (accepted, device_only_rejects))


def test_host_rejects_every_malformed_case_like_device():
    # The device script's own case lists, run through the host helpers.
    import check_envelope as cases

    cases.SCRATCH = bytearray(device.MAX_ENVELOPE + 16)
    n = 0
    for error, wire in cases.malformed_cases():
        with pytest.raises(error):
            host.decode(wire)
        n += 1
    assert n == 68
    for rec, wire in cases.tolerated_cases():
        assert pb_fields(host.decode(wire)) == pb_fields(to_pb(rec)) == pb_fields(pb_parse(wire))


# ---- published vectors ------------------------------------------------------------------------

# Counting patterns whose last byte is below 0x80: canonical keys (docs/protocol.md §4); EK was
# 80..9f before finding 7, which set bit 255 and is refused now (decision D17).
IK, IS, EK, DH = (bytes(range(start, start + 32)) for start in (0x40, 0x60, 0x00, 0x20))
# Non-canonical encodings (finding 7): DH with bit 255 set, p = 2^255 - 19 itself, and IS's
# Ed25519 y = 1 with the sign bit (x = 0 has none).
DH_BIT_255 = DH[:31] + bytes([DH[31] | 0x80])
P = (2**255 - 19).to_bytes(32, "little")
IS_Y1_SIGNED = b"\x01" + bytes(30) + b"\x80"
# A stand-in for a SignedCertificate (the envelope carries it as opaque bytes): 300 counting bytes.
CERT = bytes(i & 0xFF for i in range(300))


def ct(size: int) -> bytes:
    return bytes((0xC0 + i) & 0xFF for i in range(size))


def raw_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def raw(field: int, wt: int, value: bytes | int) -> bytes:
    tag = raw_varint(field << 3 | wt)
    if wt == 0:
        return tag + raw_varint(value)
    if wt == 2:
        return tag + raw_varint(len(value)) + value
    return tag + value


def raw_env(msg_type: int, body: bytes, version: int = 1) -> bytes:
    return raw(1, 0, version) + raw(2, 0, msg_type) + raw(3, 2, body)


def published_vectors() -> str:
    valid = [
        ("ratchet-zero-counters", pb.RatchetMessage(dh=DH, pn=0, n=0, ciphertext=ct(16))),
        ("ratchet-small", pb.RatchetMessage(dh=DH, pn=1, n=2, ciphertext=ct(32))),
        ("ratchet-2-byte-varints", pb.RatchetMessage(dh=DH, pn=300, n=16383, ciphertext=ct(127))),
        ("ratchet-5-byte-varints", pb.RatchetMessage(dh=DH, pn=0xFFFFFFFF, n=0x80000000, ciphertext=ct(200))),
        ("prekey-with-one-time-prekey", pb.PreKeyMessage(
            identity_dh=IK, identity_sign=IS, base_key=EK, signed_prekey_id=1, one_time_prekey_id=42,
            message=pb.RatchetMessage(dh=EK, ciphertext=ct(48)))),
        ("prekey-without-one-time-prekey", pb.PreKeyMessage(
            identity_dh=IK, identity_sign=IS, base_key=EK, signed_prekey_id=0x01020304,
            message=pb.RatchetMessage(dh=EK, ciphertext=ct(48)))),
        ("prekey-last-resort", pb.PreKeyMessage(
            identity_dh=IK, identity_sign=IS, base_key=EK, one_time_prekey_id=0xFFFFFFFF,
            message=pb.RatchetMessage(dh=EK, pn=3, n=4, ciphertext=ct(20)))),
        ("prekey-with-sender-certificate", pb.PreKeyMessage(
            identity_dh=IK, identity_sign=IS, base_key=EK, signed_prekey_id=1, one_time_prekey_id=42,
            message=pb.RatchetMessage(dh=EK, ciphertext=ct(48)), sender_certificate=CERT)),
        ("control-session-reset", pb.Control(kind=pb.Control.SESSION_RESET)),
        ("control-session-reset-payload", pb.Control(kind=pb.Control.SESSION_RESET, payload=b"lost session")),
    ]
    small = pb.RatchetMessage(dh=DH, pn=1, n=2, ciphertext=ct(32))
    body = small.SerializeToString(deterministic=True)
    unknown = (raw(15, 0, 7) + raw(9, 0, 2**64 - 1) + raw(10, 1, bytes(8)) + raw(11, 5, bytes(4))
               + raw(12, 2, b"x"))
    tolerated = [  # valid, not what an encoder writes: the reading rules of protobuf
        ("tolerated-field-order", small, raw(3, 2, body) + raw(2, 0, 2) + raw(1, 0, 1)),
        ("tolerated-unknown-fields", small, pb_wire(small) + unknown),
        ("tolerated-unknown-fields-in-body", small, raw_env(2, unknown + body + unknown)),
        ("tolerated-explicit-zero", pb.RatchetMessage(dh=DH, ciphertext=ct(16)),
         raw_env(2, raw(1, 2, DH) + raw(2, 0, 0) + raw(3, 0, 0) + raw(4, 2, ct(16)))),
        ("tolerated-non-minimal-varint", small, b"\x08\x81\x80\x80\x80\x00" + raw(2, 0, 2) + raw(3, 2, body)),
    ]
    invalid = [
        ("UnknownVersion/missing", raw(2, 0, 2) + raw(3, 2, body)),
        ("UnknownVersion/zero", raw_env(2, body, version=0)),
        ("UnknownVersion/two", raw_env(2, body, version=2)),
        ("UnknownType/missing", raw(1, 0, 1) + raw(3, 2, body)),
        ("UnknownType/sender-key-reserved", raw_env(3, body)),
        ("UnknownType/five", raw_env(5, body)),
        ("Truncated/body", pb_wire(small)[:-1]),
        ("Truncated/length-varint", raw(1, 0, 1) + raw(2, 0, 2) + b"\x1a\x80"),
        ("Truncated/inner-ciphertext", raw_env(2, body[:-1])),
        ("Truncated/unknown-fixed64", pb_wire(small) + raw(9, 1, bytes(7))),
        ("VarintOverflow/version-6-bytes", b"\x08\x81\x80\x80\x80\x80\x00" + raw(2, 0, 2) + raw(3, 2, body)),
        ("VarintOverflow/pn-33-bits", raw_env(2, raw(1, 2, DH) + raw(2, 0, 1 << 32) + raw(4, 2, ct(16)))),
        ("VarintOverflow/unknown-varint-11-bytes", pb_wire(small) + b"\x48" + b"\xff" * 10 + b"\x01"),
        ("BadField/dh-31-bytes", raw_env(2, raw(1, 2, DH[:31]) + raw(4, 2, ct(16)))),
        ("BadField/identity-sign-33-bytes", raw_env(1, raw(1, 2, IK) + raw(2, 2, IS + b"\0") + raw(3, 2, EK)
                                                    + raw(6, 2, body))),
        ("BadField/ciphertext-15-bytes", raw_env(2, raw(1, 2, DH) + raw(4, 2, ct(15)))),
        ("BadField/n-twice", raw_env(2, body + raw(3, 0, 3))),
        ("BadField/dh-bit-255", raw_env(2, raw(1, 2, DH_BIT_255) + raw(4, 2, ct(16)))),
        ("BadField/dh-not-below-p", raw_env(2, raw(1, 2, P) + raw(4, 2, ct(16)))),
        ("BadField/base-key-bit-255", raw_env(1, raw(1, 2, IK) + raw(2, 2, IS) + raw(3, 2, DH_BIT_255)
                                              + raw(6, 2, body))),
        ("BadField/identity-dh-not-below-p", raw_env(1, raw(1, 2, P) + raw(2, 2, IS) + raw(3, 2, EK)
                                                     + raw(6, 2, body))),
        ("BadField/identity-sign-non-canonical", raw_env(1, raw(1, 2, IK) + raw(2, 2, IS_Y1_SIGNED)
                                                         + raw(3, 2, EK) + raw(6, 2, body))),
        ("BadField/pn-wire-type", raw_env(2, raw(1, 2, DH) + raw(2, 2, b"\x01") + raw(4, 2, ct(16)))),
        ("BadField/field-number-0", pb_wire(small) + b"\x00\x01"),
        ("BadField/group", pb_wire(small) + raw(9, 3, b"") + raw(9, 4, b"")),
        ("BadField/prekey-without-message", raw_env(1, raw(1, 2, IK) + raw(2, 2, IS) + raw(3, 2, EK))),
        ("BadField/control-kind-0", raw_env(4, raw(2, 2, b"x"))),
        ("BadField/control-kind-2", raw_env(4, raw(1, 0, 2))),
        ("Oversize/control-payload-257", raw_env(4, raw(1, 0, 1) + raw(2, 2, bytes(257)))),
        ("Oversize/sender-certificate-769", raw_env(1, raw(1, 2, IK) + raw(2, 2, IS) + raw(3, 2, EK)
                                                      + raw(6, 2, body) + raw(7, 2, bytes(769)))),
    ]
    recs = []
    for name, msg in valid:
        recs.append({"id": name, "result": "valid", "canonical": b"\x01", **pb_fields(msg),
                     "wire": pb_wire(msg)})
    for name, msg, wire in tolerated:
        assert pb_fields(pb_parse(wire)) == pb_fields(msg)  # the protobuf runtime reads them the same way
        recs.append({"id": name, "result": "valid", "canonical": b"\x00", **pb_fields(msg), "wire": wire})
    for name, wire in invalid:
        recs.append({"id": name, "result": "invalid", "wire": wire})
    header = (
        "e2ee-iot envelope, wire format version 1 (docs/protocol.md §4, proto/e2ee/v1/envelope.proto).\n"
        "Written by tests/protocol/test_envelope.py published_vectors(); wire bytes of the canonical\n"
        "records come from the protobuf Python runtime (%s, SerializeToString(deterministic=True)),\n"
        "the others were built byte by byte. Numbers are 4-byte big-endian, type and kind 1 byte.\n"
        "result=valid: decoding wire gives the fields; canonical=01 also means encoding the fields gives\n"
        "exactly wire (canonical=00: protobuf's reading rules, e.g. unknown fields, field order).\n"
        "result=invalid: decoding raises the DecodeError subclass named before '/' in id.\n"
        "Key and ciphertext bytes are counting patterns, not real keys, but canonical encodings\n"
        "(bit 255 clear, below 2^255 - 19): decoders refuse others. License: Apache-2.0."
    ) % ("protobuf %s.x" % protobuf_version.split(".")[0])
    path = Path(os.environ.get("TMPDIR", "/tmp")) / ("envelope-vectors-%d.txt" % os.getpid())
    vectorfile.write(str(path), header, recs)
    text = path.read_text()
    path.unlink()
    return text


def test_published_vectors_are_current():
    text = published_vectors()
    if os.environ.get("E2EE_UPDATE_VECTORS"):
        VECTORS.write_text(text)
    assert VECTORS.read_text() == text, "docs/vectors/envelope.txt is stale: E2EE_UPDATE_VECTORS=1"


def test_published_vectors_host():
    # The host helpers agree with every record (the device script checks them on both runtimes).
    n = 0
    for rec in vectorfile.records(str(VECTORS)):
        if rec["result"] == "invalid":
            with pytest.raises(getattr(host, rec["id"].split("/")[0])):
                host.decode(rec["wire"])
            continue
        msg = host.decode(rec["wire"])
        expected = {k: v for k, v in rec.items() if k not in ("id", "result", "canonical", "wire")}
        assert pb_fields(msg) == expected
        if rec["canonical"] == b"\x01":
            assert host.encode(msg) == rec["wire"]
        n += 1
    assert n == 15
