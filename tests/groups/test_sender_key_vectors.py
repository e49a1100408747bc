"""Sender Keys known answers (docs/protocol.md §7): docs/vectors/sender_key.txt.

The file is written by `published_vectors()` below from a reference written from §7 on top of
`cryptography` (HKDF, Ed25519, ChaCha20-Poly1305), `hmac` and the protobuf runtime
(`group_pb2`, proto/e2ee/v1/group.proto), not with the firmware: chain and message keys, AD,
signatures and wire bytes of two senders' messages, distributions, what receivers make of
messages in and out of order (skipped keys, their bounds, replays, forgeries, malformed input)
and the stored chains. `E2EE_UPDATE_VECTORS=1` (or `python tests/groups/test_sender_key_vectors.py`)
rewrites it. The firmware reproduces every record on MicroPython and CPython
(tests/device/check_sender_key.py).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.message import DecodeError

ROOT = Path(__file__).resolve().parents[2]
DEVICE_TESTS = ROOT / "tests" / "device"
sys.path.insert(0, str(DEVICE_TESTS))
sys.path.insert(0, str(ROOT / "host"))
SCRIPT = DEVICE_TESTS / "check_sender_key.py"
VECTORS = ROOT / "docs" / "vectors" / "sender_key.txt"

import vectorfile  # noqa: E402

from e2ee_host.proto.e2ee.v1 import group_pb2 as pb  # noqa: E402

# §7 labels and limits, written out here rather than imported from the firmware.
SIGN_LABEL = b"e2ee-iot sender key v1"
MESSAGE_INFO = b"e2ee-iot group message v1"
AD_LABEL = b"e2ee-iot group v1"
MAX_SKIP, MAX_STORED, MAX_PLAINTEXT, LAST = 32, 16, 4096, 0xFFFFFFFF


def h(label: str) -> bytes:
    return hashlib.sha256(b"e2ee-iot sender key vectors " + label.encode()).digest()


def be32(n: int) -> bytes:
    return struct.pack(">I", n)


def kdf_ck(ck: bytes) -> tuple[bytes, bytes]:
    return hmac.digest(ck, b"\x02", "sha256"), hmac.digest(ck, b"\x01", "sha256")


def expand(mk: bytes) -> tuple[bytes, bytes]:
    out = HKDF(hashes.SHA256(), 44, b"\x00" * 32, MESSAGE_INFO).derive(mk)
    return out[:32], out[32:]


def ad(group: str, sender: str, key_id: int, iteration: int) -> bytes:
    g, s = group.encode(), sender.encode()
    return AD_LABEL + bytes((len(g),)) + g + bytes((len(s),)) + s + be32(key_id) + be32(iteration)


def serialize(msg) -> bytes:  # type: ignore[no-untyped-def]
    return msg.SerializeToString(deterministic=True)  # type: ignore[no-any-return]


def seal(seed: bytes, key_id: int, iteration: int, ct: bytes) -> tuple[bytes, bytes, bytes]:
    """(SenderKeyMessage, signature, SignedSenderKeyMessage) of a ciphertext."""
    message = serialize(pb.SenderKeyMessage(key_id=key_id, iteration=iteration, ciphertext=ct))
    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(SIGN_LABEL + message)
    return message, signature, serialize(pb.SignedSenderKeyMessage(message=message, signature=signature))


def pub(seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


class Sender:
    def __init__(self, group: str, sender: str, key_id: int, iteration: int, ck: bytes, seed: bytes) -> None:
        self.group, self.sender, self.key_id, self.iteration, self.ck, self.seed = (
            group, sender, key_id, iteration, ck, seed)

    def distribution(self) -> bytes:
        return serialize(pb.SenderKeyDistribution(version=1, group_id=self.group, key_id=self.key_id,
                                                  iteration=self.iteration, chain_key=self.ck,
                                                  signing_key=pub(self.seed)))

    def send(self, iteration: int, pt: bytes) -> dict:
        while self.iteration < iteration:  # iterations not published
            self.ck = kdf_ck(self.ck)[0]
            self.iteration += 1
        assert self.iteration < LAST
        ck = self.ck
        self.ck, mk = kdf_ck(ck)
        key, nonce = expand(mk)
        a = ad(self.group, self.sender, self.key_id, iteration)
        ct = ChaCha20Poly1305(key).encrypt(nonce, pt, a)
        message, signature, wire = seal(self.seed, self.key_id, iteration, ct)
        self.iteration += 1
        return {"iteration": be32(iteration), "ck": ck, "mk": mk, "key": key, "nonce": nonce, "pt": pt,
                "ad": a, "message": message, "signature": signature, "wire": wire}

    def state(self) -> bytes:
        return (bytes((0x51, 1)) + be32(self.key_id) + be32(self.iteration) + b"\x00" + self.ck
                + pub(self.seed) + self.seed)


class Refused(Exception):
    """The §7 error a receiver raises, by name."""


def strict(data: bytes, wiretypes: tuple[int, ...]) -> None:
    """The §4 reading rules the protobuf runtime does not apply (§7 reads with them): a known
    field with another wire type, a repeated known field, field number 0 and a uint32 varint
    over 5 bytes or 32 bits are Malformed. The runtime then reads the values."""

    def varint(pos: int, limit: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            if pos >= len(data) or shift >= 7 * limit:
                raise Refused("Malformed")
            value |= (data[pos] & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if data[pos - 1] < 0x80:
                return value, pos

    seen, pos = set(), 0
    while pos < len(data):
        key, pos = varint(pos, 5)
        field, wt = key >> 3, key & 7
        known = 0 < field <= len(wiretypes)
        if field == 0 or key >= 1 << 32 or (known and (wt != wiretypes[field - 1] or field in seen)):
            raise Refused("Malformed")
        seen.add(field)
        if wt == 0:
            value, pos = varint(pos, 5 if known else 10)
            if known and value >= 1 << 32:
                raise Refused("Malformed")
        elif wt == 2:
            size, pos = varint(pos, 5)
            pos += size
        elif wt in (1, 5):
            pos += 8 if wt == 1 else 4
        else:
            raise Refused("Malformed")
    if pos > len(data):
        raise Refused("Malformed")


class Receiver:
    """A member's copy of one sender's chain, following §7 step by step."""

    def __init__(self, distribution: bytes, group: str) -> None:
        strict(distribution, (0, 2, 0, 0, 2, 2))
        try:
            d = pb.SenderKeyDistribution.FromString(distribution)
        except DecodeError:
            raise Refused("Malformed") from None
        if d.version != 1 or d.group_id != group or len(d.chain_key) != 32 or len(d.signing_key) != 32:
            raise Refused("Malformed")
        if d.iteration == LAST:
            raise Refused("Malformed")
        self.key_id, self.iteration, self.ck, self.signing = d.key_id, d.iteration, d.chain_key, d.signing_key
        self.skipped: list[tuple[int, bytes]] = []

    def state(self) -> bytes:
        return (bytes((0x51, 0)) + be32(self.key_id) + be32(self.iteration) + bytes((len(self.skipped),))
                + self.ck + self.signing + b"".join(be32(i) + mk for i, mk in self.skipped))

    def decrypt(self, group: str, sender: str, wire: bytes) -> bytes:
        strict(wire, (2, 2))
        strict(pb.SignedSenderKeyMessage.FromString(wire).message, (0, 0, 2))
        try:
            outer = pb.SignedSenderKeyMessage.FromString(wire)
            inner = pb.SenderKeyMessage.FromString(outer.message)
        except DecodeError:
            raise Refused("Malformed") from None
        if not 16 <= len(inner.ciphertext) <= MAX_PLAINTEXT + 16 or len(outer.signature) != 64:
            raise Refused("Malformed")
        if inner.iteration == LAST:
            raise Refused("Malformed")
        if inner.key_id != self.key_id:
            raise Refused("UnknownChain")
        try:
            signing = Ed25519PublicKey.from_public_bytes(self.signing)
            signing.verify(outer.signature, SIGN_LABEL + outer.message)
        except InvalidSignature:
            raise Refused("BadSignature") from None
        a, it = ad(group, sender, inner.key_id, inner.iteration), inner.iteration
        if it < self.iteration:
            for i, (stored, mk) in enumerate(self.skipped):
                if stored == it:
                    pt = self.open(mk, a, inner.ciphertext)
                    del self.skipped[i]
                    return pt
            raise Refused("Duplicate")
        if it - self.iteration > MAX_SKIP:
            raise Refused("TooFarAhead")
        ck, skipped = self.ck, []
        for i in range(self.iteration, it):
            ck, mk = kdf_ck(ck)
            skipped.append((i, mk))
        ck, mk = kdf_ck(ck)
        pt = self.open(mk, a, inner.ciphertext)
        self.ck, self.iteration, self.skipped = ck, it + 1, (self.skipped + skipped)[-MAX_STORED:]
        return pt

    @staticmethod
    def open(mk: bytes, a: bytes, ct: bytes) -> bytes:
        key, nonce = expand(mk)
        try:
            return ChaCha20Poly1305(key).decrypt(nonce, ct, a)
        except InvalidTag:
            raise Refused("BadSignature") from None


GROUP = "line-3"
HEADER = """Sender Keys known answers (docs/protocol.md §7), e2ee-iot protocol version 1.
Written by tests/groups/test_sender_key_vectors.py published_vectors() from a reference over
`cryptography` (HKDF, Ed25519, ChaCha20-Poly1305), `hmac` and the protobuf runtime (%s,
SerializeToString(deterministic=True)), not the firmware. Private inputs are SHA-256 of
"e2ee-iot sender key vectors <label>". Records are processed in file order. License: CC0.
kdf_ck: KDF_CK(ck) -> next_ck, mk. message_key: mk -> AEAD key, nonce (info "e2ee-iot group message v1").
sender-X: sender X's own chain: group, sender (ASCII), key_id, iteration (be32), chain_key,
signing_seed (Ed25519 seed), signing_pub.
install-RX: the distribution of sender X at this point (X's own chain must write exactly these
bytes); receiver RX installs it.
send-X: X encrypts pt at iteration (unpublished iterations in between are used up);
ck (chain key used), mk, key, nonce, ad, message (SenderKeyMessage), signature, wire are exact.
recv-RX: receiver RX decrypts wire (as from X's sender id, or from `sender` when given) to pt;
msg is the iteration of a published send. <Error>/recv-RX-<what>, result=invalid: it raises
the error named before '/' and RX's chain stays as it was.
state-X, state-RX: the stored chain (format 0x51) after all the records above.
<Error>/distribution-<what>, <Error>/state-<what>: decoding (for group line-3) raises that error."""


def _signed_at(sender: Sender, iteration: int, ck: bytes, group: str | None = None,
               key_id: int | None = None) -> bytes:
    """A correctly signed message at `iteration` whose ciphertext opens with the chain key `ck`
    (for group `group`, key id `key_id` when given)."""
    kid = sender.key_id if key_id is None else key_id
    key, nonce = expand(kdf_ck(ck)[1])
    a = ad(group or sender.group, sender.sender, kid, iteration)
    ct = ChaCha20Poly1305(key).encrypt(nonce, b"crafted", a)
    return seal(sender.seed, kid, iteration, ct)[2]


def _ck_at(ck: bytes, steps: int) -> bytes:
    for _ in range(steps):
        ck = kdf_ck(ck)[0]
    return ck


def reference_records() -> list[dict]:
    recs: list[dict] = []
    ck_in, mk_in = h("ck"), h("mk")
    next_ck, mk = kdf_ck(ck_in)
    key, nonce = expand(mk_in)
    recs.append({"id": "kdf_ck", "ck": ck_in, "next_ck": next_ck, "mk": mk})
    recs.append({"id": "message_key", "mk": mk_in, "key": key, "nonce": nonce})

    def sender_record(name: str, s: Sender) -> None:
        recs.append({"id": "sender-" + name, "group": s.group.encode(), "sender": s.sender.encode(),
                     "key_id": be32(s.key_id), "iteration": be32(s.iteration), "chain_key": s.ck,
                     "signing_seed": s.seed, "signing_pub": pub(s.seed)})

    receivers: dict[str, tuple[Receiver, Sender]] = {}

    def install(name: str, s: Sender) -> None:
        dist = s.distribution()
        receivers[name] = (Receiver(dist, GROUP), s)
        recs.append({"id": "install-" + name, "distribution": dist})

    a = Sender(GROUP, "pump-2", struct.unpack(">I", h("key id a")[:4])[0], 0, h("chain key a"),
               h("signing seed a"))
    ck_a0 = a.ck
    sender_record("a", a)
    install("ra", a)
    sent: dict[int, dict] = {}
    for it in (0, 1, 2, 3, 4, 5, 21, 22, 38, 39):
        if it == 3:
            install("ja", a)  # a member who joins after three messages
        sent[it] = a.send(it, b"" if it == 4 else b"group message %d of pump-2" % it)
        recs.append({"id": "send-a", **sent[it]})
    b = Sender(GROUP, "pump-7", struct.unpack(">I", h("key id b")[:4])[0], LAST - 1, h("chain key b"),
               h("signing seed b"))
    sender_record("b", b)
    install("rb", b)
    b_last = b.send(LAST - 1, b"the last message of a chain")
    recs.append({"id": "send-b", **b_last})

    def recv(name: str, what: str, wire: bytes, msg: int | None = None, sender: str | None = None) -> None:
        receiver, s = receivers[name]
        rec: dict = {"id": "recv-" + name}
        if msg is not None:
            rec["msg"] = be32(msg)
        if sender is not None:
            rec["sender"] = sender.encode()
        rec["wire"] = wire
        before = receiver.state()
        try:
            pt = receiver.decrypt(GROUP, sender or s.sender, wire)
        except Refused as e:
            assert what and receiver.state() == before, "%s %s: refused (%s)" % (name, what, e)
            rec["id"] = "%s/recv-%s-%s" % (e, name, what)
            rec["result"] = "invalid"
        else:
            assert not what, "%s: expected a refusal" % what
            rec["result"], rec["pt"] = "valid", pt
        recs.append(rec)

    w2 = sent[2]["wire"]
    outer = pb.SignedSenderKeyMessage.FromString(w2)
    recv("ra", "truncated", w2[:-1])
    recv("ra", "no-signature", serialize(pb.SignedSenderKeyMessage(message=outer.message)))
    recv("ra", "signature-63",
         serialize(pb.SignedSenderKeyMessage(message=outer.message, signature=outer.signature[:63])))
    recv("ra", "short-ciphertext", seal(a.seed, a.key_id, 0, bytes(15))[2])
    # key_id (field 1) as a length-delimited field, signed: a codec error, before the signature
    message = b"\x0a\x01\x07" + serialize(pb.SenderKeyMessage(ciphertext=bytes(16)))
    signature = Ed25519PrivateKey.from_private_bytes(a.seed).sign(SIGN_LABEL + message)
    recv("ra", "key-id-wire-type", serialize(pb.SignedSenderKeyMessage(message=message, signature=signature)))
    recv("ra", "iteration-max", _signed_at(a, LAST, ck_a0))
    recv("ra", "other-key-id", _signed_at(a, 0, ck_a0, key_id=a.key_id ^ 1))
    flipped = bytearray(w2)
    flipped[len(w2) - 64] ^= 0x01  # the signature's first byte
    recv("ra", "flipped-signature", bytes(flipped))
    recv("ra", "other-sender", w2, 2, sender="pump-9")  # the AD names the sender
    recv("ra", "ad-other-group", _signed_at(a, 0, ck_a0, group="line-4"))
    for it, what in ((2, ""), (0, ""), (0, "replay"), (1, ""), (2, "replay"), (5, ""), (3, ""),
                     (39, "gap-33"), (38, ""), (4, "dropped"), (21, "dropped"), (22, ""), (39, "")):
        recv("ra", what, sent[it]["wire"], it)
    for it, what in ((2, "before-join"), (4, ""), (3, ""), (3, "replay")):
        recv("ja", what, sent[it]["wire"], it)
    wrap = _signed_at(b, LAST, _ck_at(h("chain key b"), 1))
    recv("rb", "iteration-max", wrap)
    recv("rb", "", b_last["wire"], LAST - 1)
    recv("rb", "iteration-max", wrap)  # the chain is at 0xFFFFFFFF now
    recv("rb", "replay", b_last["wire"], LAST - 1)

    recs.append({"id": "state-a", "state": a.state()})
    recs.append({"id": "state-b", "state": b.state()})
    for name in ("ra", "ja", "rb"):
        recs.append({"id": "state-" + name, "state": receivers[name][0].state()})

    def bad_distribution(what: str, data: bytes) -> None:
        try:
            Receiver(data, GROUP)
        except Refused as e:
            recs.append({"id": "%s/distribution-%s" % (e, what), "result": "invalid", "distribution": data})
        else:
            raise AssertionError("distribution %s was accepted" % what)

    d = pb.SenderKeyDistribution.FromString(a.distribution())
    changes: tuple[tuple[str, dict], ...] = (
        ("version-2", {"version": 2}), ("version-missing", {"version": 0}),
        ("other-group", {"group_id": "line-4"}), ("chain-key-31", {"chain_key": d.chain_key[:31]}), ("signing-key-missing", {"signing_key": b""}),
        ("iteration-max", {"iteration": LAST}))
    for what, change in changes:
        changed = pb.SenderKeyDistribution()
        changed.CopyFrom(d)
        for field, value in change.items():
            setattr(changed, field, value)
        bad_distribution(what, serialize(changed))
    bad_distribution("truncated", a.distribution()[:-1])

    ra_state = receivers["ra"][0].state()
    for what, data in (("truncated", ra_state[:-1]), ("extra-byte", ra_state + b"\x00"),
                       ("format", b"\x50" + ra_state[1:]), ("flags-2", ra_state[:1] + b"\x02" + ra_state[2:]),
                       ("count", ra_state[:10] + bytes((ra_state[10] + 1,)) + ra_state[11:]),
                       ("own-without-seed", ra_state[:1] + b"\x01" + ra_state[2:])):
        recs.append({"id": "Malformed/state-" + what, "result": "invalid", "state": data})
    return recs


def published_vectors() -> str:
    from google.protobuf import __version__ as protobuf_version

    path = Path(os.environ.get("TMPDIR", "/tmp")) / ("sender-key-vectors-%d.txt" % os.getpid())
    header = HEADER % ("protobuf %s.x" % protobuf_version.split(".")[0])
    vectorfile.write(str(path), header, reference_records())
    text = path.read_text()
    path.unlink()
    return text


def test_published_vectors_are_current() -> None:
    text = published_vectors()
    if os.environ.get("E2EE_UPDATE_VECTORS"):
        VECTORS.write_text(text)
    assert VECTORS.read_text() == text, "docs/vectors/sender_key.txt is stale: E2EE_UPDATE_VECTORS=1"


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_firmware_matches_sender_key_vectors(runtime, request) -> None:  # type: ignore[no-untyped-def]
    records = sum(1 for line in VECTORS.read_text().splitlines() if line and not line.startswith("#"))
    if runtime == "micropython":
        out = request.getfixturevalue("micropython").run(SCRIPT, "vectors", str(VECTORS))
    else:
        env = dict(os.environ, PYTHONPATH="%s:%s" % (ROOT / "firmware", DEVICE_TESTS))
        proc = subprocess.run([sys.executable, str(SCRIPT), "vectors", str(VECTORS)], capture_output=True,
                              text=True, cwd=ROOT, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout
    assert out.strip() == "ok sender_key vectors=%d" % records, out


def test_vectors_cover_every_refusal() -> None:
    ids = [rec["id"] for rec in vectorfile.records(str(VECTORS))]
    errors = {i.split("/")[0] for i in ids if "/" in i}
    assert errors == {"Malformed", "UnknownChain", "BadSignature", "Duplicate", "TooFarAhead"}
    assert sum(1 for i in ids if i.startswith("recv-")) == 11  # decrypted, in and out of order


def test_reference_rejects_tampering() -> None:
    # The reference is a real receiver (its signature and AEAD checks can fail), not a recorder.
    s = Sender(GROUP, "pump-2", 7, 0, h("t ck"), h("t seed"))
    r = Receiver(s.distribution(), GROUP)
    wire = s.send(0, b"x")["wire"]
    with pytest.raises(Refused, match="BadSignature"):
        r.decrypt(GROUP, "pump-2", wire[:-1] + bytes((wire[-1] ^ 1,)))
    with pytest.raises(Refused, match="BadSignature"):
        r.decrypt(GROUP, "pump-3", wire)
    assert r.decrypt(GROUP, "pump-2", wire) == b"x"


def test_limits_pinned() -> None:
    from e2ee.protocol import sender_key

    assert (sender_key.MAX_SKIP, sender_key.MAX_STORED, sender_key.MAX_NAME, sender_key.MAX_PLAINTEXT) == (
        MAX_SKIP, MAX_STORED, 64, MAX_PLAINTEXT)
    assert (sender_key.SIGN_LABEL, sender_key.MESSAGE_INFO, sender_key._AD_LABEL) == (
        SIGN_LABEL, MESSAGE_INFO, AD_LABEL)


if __name__ == "__main__":
    VECTORS.write_text(published_vectors())
