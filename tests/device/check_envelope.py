# Envelope codec checks (docs/protocol.md §4) on MicroPython and CPython: pinned limits, round
# trips, every malformed case with its typed error, deterministic fuzzing, and the published
# vectors docs/vectors/envelope.txt. Run from the repository root.
#
#   check_envelope.py                     all of the above; prints "ok envelope ..."
#   check_envelope.py decode FILE         decodes every record of FILE (wire written by the
#                                         protobuf runtime) and compares the fields
#   check_envelope.py encode FILE COUNT   writes COUNT random records encoded by this codec to
#                                         FILE, for the host to parse with protobuf
# checks first: it is compiled from source at import, and compiling it after the SDK modules
# are loaded fragments the 120 KB heap enough that the large buffers below may not fit.
from checks import raises
import gc
import hashlib
import sys
import time

import vectorfile
from e2ee.protocol import envelope as E

VECTORS = "docs/vectors/envelope.txt"
# One envelope-sized buffer, allocated first: the largest cases are built in it, because the
# heap of a 120 KB device that compiled this script has few free 4 KB blocks.
SCRATCH = None


# Deterministic byte stream (SHA-256 of seed || counter), identical on both runtimes.
class Stream:
    def __init__(self, seed):
        self.seed = seed
        self.counter = 0

    def bytes(self, n):
        out = bytearray()
        while len(out) < n:
            out += hashlib.sha256(self.seed + self.counter.to_bytes(4, "big")).digest()
            self.counter += 1
        return bytes(out[:n])

    def below(self, k):
        return int.from_bytes(self.bytes(4), "big") % k

    # A canonical public key (docs/protocol.md §4, finding 7): bit 255 clear (a value >= p has
    # odds of 2^-250).
    def key(self):
        k = bytearray(self.bytes(32))
        k[31] &= 0x7F
        return bytes(k)

    # A uint32 from one of four ranges, so 1- to 5-byte varints and 0 all occur.
    def counter32(self):
        bucket = self.below(4)
        if bucket == 0:
            return 0
        if bucket == 1:
            return self.below(128)
        if bucket == 2:
            return self.below(1 << 21)
        return int.from_bytes(self.bytes(4), "big")


# ---- raw protobuf writing, independent of the codec under test ------------------------------

def vint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def tag(field, wt):
    return vint((field << 3) | wt)


def uint(field, v):
    return tag(field, 0) + vint(v)


def ld(field, data):
    return tag(field, 2) + vint(len(data)) + data


def env(msg_type, body, version=1):
    return uint(1, version) + uint(2, msg_type) + ld(3, body)


KEY_A = bytes(range(0x20, 0x40))
KEY_B = bytes(range(0x40, 0x60))
KEY_C = bytes(range(0x60, 0x80))
CT = bytes(range(0xC0, 0xE0))


def ratchet_body(dh=KEY_A, pn=1, n=2, ct=CT):
    return ld(1, dh) + uint(2, pn) + uint(3, n) + ld(4, ct)


def prekey_body(message=None, ik=KEY_A, isk=KEY_B, ek=KEY_C, spk=7, opk=9, cert=b""):
    if message is None:
        message = ratchet_body()
    body = ld(1, ik) + ld(2, isk) + ld(3, ek) + uint(4, spk) + uint(5, opk) + ld(6, message)
    return body + ld(7, cert) if cert else body


# ---- helpers --------------------------------------------------------------------------------

# prefix followed by zero bytes up to `total`, in SCRATCH.
def zero_tail(prefix, total):
    SCRATCH[:len(prefix)] = prefix
    for i in range(len(prefix), total):
        SCRATCH[i] = 0
    return memoryview(SCRATCH)[:total]


# An envelope holding RatchetMessage(KEY_A, 1, 2, `size` zero bytes), or a PreKeyMessage around it
# (with a sender certificate of `cert` zero bytes before the message when cert > 0).
def big_ratchet(size, prekey=False, cert=0):
    head = ld(1, KEY_A) + uint(2, 1) + uint(3, 2) + tag(4, 2) + vint(size)
    if prekey:
        head = (ld(1, KEY_A) + ld(2, KEY_B) + ld(3, KEY_C) + uint(4, 7) + uint(5, 9)
                + (ld(7, bytes(cert)) if cert else b"") + tag(6, 2) + vint(len(head) + size) + head)
    prefix = uint(1, 1) + uint(2, 1 if prekey else 2) + tag(3, 2) + vint(len(head) + size) + head
    return zero_tail(prefix, len(prefix) + size)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def random_record(rng):
    kind = rng.below(3)
    if kind == 2:
        size = 0 if rng.below(3) == 0 else rng.below(E.MAX_CONTROL_PAYLOAD + 1)
        return E.Control(E.SESSION_RESET, rng.bytes(size))
    msg = E.RatchetMessage(rng.key(), rng.counter32(), rng.counter32(), rng.bytes(16 + rng.below(200)))
    if kind == 0:
        return msg
    cert = rng.bytes(rng.below(E.MAX_SENDER_CERTIFICATE + 1)) if rng.below(2) else b""
    return E.PreKeyMessage(rng.key(), rng.key(), rng.key(), rng.counter32(), rng.counter32(), msg,
                           cert)


# Vector-file fields of a record (numbers as 4-byte big-endian, type and kind as 1 byte).
def fields_of(rec):
    if isinstance(rec, E.Control):
        return {"type": bytes([E.CONTROL]), "kind": bytes([rec.kind]), "payload": rec.payload}
    out = {}
    msg = rec
    if isinstance(rec, E.PreKeyMessage):
        out = {"identity_dh": rec.identity_dh, "identity_sign": rec.identity_sign, "base_key": rec.base_key,
               "signed_prekey_id": rec.signed_prekey_id.to_bytes(4, "big"),
               "one_time_prekey_id": rec.one_time_prekey_id.to_bytes(4, "big")}
        if len(rec.sender_certificate):  # absent from vector records without one
            out["sender_certificate"] = rec.sender_certificate
        msg = rec.message
    out["type"] = bytes([rec.TYPE])
    out.update({"dh": msg.dh, "pn": msg.pn.to_bytes(4, "big"), "n": msg.n.to_bytes(4, "big"),
                "ciphertext": msg.ciphertext})
    return out


def record_of(v):
    t = v["type"][0]
    if t == E.CONTROL:
        return E.Control(v["kind"][0], v["payload"])
    msg = E.RatchetMessage(v["dh"], vectorfile.as_int(v["pn"]), vectorfile.as_int(v["n"]), v["ciphertext"])
    if t == E.RATCHET:
        return msg
    return E.PreKeyMessage(v["identity_dh"], v["identity_sign"], v["base_key"],
                           vectorfile.as_int(v["signed_prekey_id"]),
                           vectorfile.as_int(v["one_time_prekey_id"]), msg, v.get("sender_certificate", b""))


# ---- checks ---------------------------------------------------------------------------------

def check_limits():
    check(E.VERSION == 1, "VERSION")
    check((E.PREKEY, E.RATCHET, E.SENDER_KEY, E.CONTROL) == (1, 2, 3, 4), "Type values")
    check(E.SESSION_RESET == 1, "Control.Kind")
    check(E.KEY_SIZE == 32 and E.TAG_SIZE == 16 and E.HEADER_SIZE == 40, "sizes")
    check(E.MAX_CIPHERTEXT == 4096 + 16, "MAX_CIPHERTEXT")
    check(E.MAX_ENVELOPE == 5120, "MAX_ENVELOPE")
    check(E.MAX_SENDER_CERTIFICATE == 768, "MAX_SENDER_CERTIFICATE")
    check(E.MAX_CONTROL_PAYLOAD == 256, "MAX_CONTROL_PAYLOAD")
    for cls in (E.Truncated, E.Oversize, E.UnknownVersion, E.UnknownType, E.BadField, E.WrongType):
        check(issubclass(cls, E.DecodeError), cls.__name__)
    check(issubclass(E.VarintOverflow, E.BadField), "VarintOverflow")
    check(issubclass(E.DecodeError, E.EnvelopeError) and issubclass(E.EncodeError, E.EnvelopeError), "bases")
    check(issubclass(E.EnvelopeError, ValueError), "ValueError")


def check_header():
    h = E.header_bytes(KEY_A, 0x01020304, 0xFFFFFFFF)
    check(bytes(h) == KEY_A + b"\x01\x02\x03\x04\xff\xff\xff\xff", "header bytes")
    out = bytearray(50)
    check(E.header_into(out, 5, KEY_A, 1, 2) == 45, "header_into end")
    check(bytes(out[5:45]) == KEY_A + bytes(3) + b"\x01" + bytes(3) + b"\x02", "header_into")
    check(bytes(E.RatchetMessage(KEY_A, 1, 2, CT).header()) == bytes(out[5:45]), "RatchetMessage.header")
    raises(E.EncodeError, E.header_bytes, KEY_A[:31], 0, 0)
    raises(E.EncodeError, E.header_bytes, KEY_A, -1, 0)
    raises(E.EncodeError, E.header_bytes, KEY_A, 0, 1 << 32)


def check_round_trips():
    msg = E.RatchetMessage(KEY_A, 1, 2, CT)
    wire = msg.encode()
    check(bytes(wire) == env(2, ratchet_body()), "ratchet bytes")
    check(E.decode(wire) == msg and E.RatchetMessage.decode(wire) == msg, "ratchet round trip")
    check(msg.size() == len(wire), "size()")
    out = bytearray(len(wire) + 7)
    check(msg.encode_into(out, 3) == 3 + len(wire), "encode_into end")
    check(bytes(out[3:3 + len(wire)]) == bytes(wire), "encode_into")
    raises(E.EncodeError, msg.encode_into, bytearray(len(wire) - 1))
    check(bytes(msg.encode_body()) == ratchet_body(), "encode_body")
    zero = E.RatchetMessage(KEY_A, 0, 0, CT)  # zero counters are left out, as protobuf does
    check(bytes(zero.encode()) == env(2, ld(1, KEY_A) + ld(4, CT)), "defaults omitted")
    top = E.RatchetMessage(KEY_A, 0xFFFFFFFF, 0xFFFFFFFF, CT)
    check(E.decode(top.encode()) == top, "uint32 max")
    pk = E.PreKeyMessage(KEY_A, KEY_B, KEY_C, 7, 9, msg)
    check(bytes(pk.encode()) == env(1, prekey_body()), "prekey bytes")
    check(E.decode(pk.encode()) == pk and E.PreKeyMessage.decode(pk.encode()) == pk, "prekey round trip")
    pk0 = E.PreKeyMessage(KEY_A, KEY_B, KEY_C, 7, 0, msg)
    check(E.decode(pk0.encode()).one_time_prekey_id == 0, "no one-time prekey")
    pkc = E.PreKeyMessage(KEY_A, KEY_B, KEY_C, 7, 9, msg, b"certificate bytes")
    check(bytes(pkc.encode()) == env(1, prekey_body(cert=b"certificate bytes")), "sender certificate bytes")
    check(E.decode(pkc.encode()) == pkc and pkc != pk, "sender certificate round trip")
    check(bytes(E.decode(pkc.encode()).sender_certificate) == b"certificate bytes", "sender certificate")
    check(E.decode(pk.encode()).sender_certificate == b"", "no sender certificate")
    c = E.Control(E.SESSION_RESET)
    check(bytes(c.encode()) == env(4, uint(1, 1)), "control bytes")
    check(E.decode(c.encode()) == c, "control")
    check(E.decode(E.Control(1, b"why").encode()) == E.Control(1, b"why"), "control payload")
    check(E.encode(c) == c.encode(), "module encode")
    check(msg != pk and msg != E.RatchetMessage(KEY_A, 1, 3, CT), "__ne__")
    raises(E.WrongType, E.RatchetMessage.decode, pk.encode())
    raises(E.WrongType, E.Control.decode, wire)
    check(repr(msg) == "RatchetMessage(pn=1, n=2, ciphertext=32 bytes)", "repr shows no bytes")
    # Largest messages: a full ciphertext fits an envelope even inside a PreKeyMessage.
    big = E.RatchetMessage(KEY_A, 0xFFFFFFFF, 0xFFFFFFFF, bytes(E.MAX_CIPHERTEXT))
    bigpk = E.PreKeyMessage(KEY_A, KEY_B, KEY_C, 0xFFFFFFFF, 0xFFFFFFFF, big)
    check(bigpk.size() == 4285, "largest prekey envelope %d" % bigpk.size())
    bigpk.sender_certificate = bytes(E.MAX_SENDER_CERTIFICATE)
    check(bigpk.size() == 5056 <= E.MAX_ENVELOPE, "largest certified prekey envelope %d" % bigpk.size())
    for rec in (big, bigpk):
        end = rec.encode_into(SCRATCH)
        check(E.decode(memoryview(SCRATCH)[:end]) == rec, "largest round trip")
    # Inputs as bytes, bytearray and memoryview.
    for b in (bytes(wire), bytearray(wire), memoryview(bytes(wire))):
        check(E.decode(b) == msg, "input type")


def check_encode_errors():
    ok = E.RatchetMessage(KEY_A, 1, 2, CT)
    bad = [
        E.RatchetMessage(KEY_A[:31], 1, 2, CT), E.RatchetMessage(KEY_A + b"\0", 1, 2, CT),
        E.RatchetMessage(KEY_A, -1, 2, CT), E.RatchetMessage(KEY_A, 1, 1 << 32, CT),
        E.RatchetMessage(KEY_A, 1, "2", CT), E.RatchetMessage(KEY_A, 1, 2, bytes(15)),
        E.RatchetMessage(KEY_A, 1, 2, bytes(E.MAX_CIPHERTEXT + 1)),
        E.PreKeyMessage(KEY_A[:1], KEY_B, KEY_C, 1, 2, ok),
        E.PreKeyMessage(KEY_A, KEY_B, KEY_C[1:], 1, 2, ok),
        E.PreKeyMessage(KEY_A, KEY_B, KEY_C, 1 << 32, 2, ok),
        E.PreKeyMessage(KEY_A, KEY_B, KEY_C, 1, 2, ok.encode()),
        E.PreKeyMessage(KEY_A, KEY_B, KEY_C, 1, 2, E.RatchetMessage(KEY_A, 1, 2, b"")),
        E.PreKeyMessage(KEY_A, KEY_B, KEY_C, 1, 2, ok, bytes(E.MAX_SENDER_CERTIFICATE + 1)),
        E.Control(0), E.Control(2), E.Control(1, bytes(E.MAX_CONTROL_PAYLOAD + 1)),
    ]
    for rec in bad:
        raises(E.EncodeError, rec.encode)
    at_limit = E.Control(1, bytes(E.MAX_CONTROL_PAYLOAD))
    check(len(at_limit.encode()) > E.MAX_CONTROL_PAYLOAD, "payload at limit")


# (expected error, bytes) for every way an envelope can be malformed. A generator: the large
# cases are built one at a time, so the device heap holds one of them at once.
def malformed_cases():
    rb = ratchet_body()
    ok = env(2, rb)
    yield E.Oversize, zero_tail(b"", E.MAX_ENVELOPE + 1)
    filler = E.MAX_ENVELOPE - len(ok) - 3
    yield E.Oversize, zero_tail(ok + tag(15, 2) + vint(filler), E.MAX_ENVELOPE + 1)  # valid fields, too long
    yield E.Oversize, big_ratchet(E.MAX_CIPHERTEXT + 1)
    yield E.Oversize, big_ratchet(E.MAX_CIPHERTEXT + 1, prekey=True)
    yield E.Oversize, big_ratchet(16, prekey=True, cert=E.MAX_SENDER_CERTIFICATE + 1)
    for case in [
        # frame
        (E.UnknownVersion, b""),
        (E.UnknownVersion, uint(2, 2) + ld(3, rb)),
        (E.UnknownVersion, env(2, rb, version=0)),
        (E.UnknownVersion, env(2, rb, version=2)),
        (E.UnknownVersion, env(2, rb, version=0xFFFFFFFF)),
        (E.UnknownType, uint(1, 1) + ld(3, rb)),
        (E.UnknownType, env(0, rb)),
        (E.UnknownType, env(3, rb)),
        (E.UnknownType, env(5, rb)),
        (E.UnknownType, env(0xFFFFFFFF, rb)),
        # truncation
        (E.Truncated, ok[:-1]),
        (E.Truncated, ok[:5]),
        (E.Truncated, b"\x08"),
        (E.Truncated, b"\x08\x81"),
        (E.Truncated, b"\x88"),
        (E.Truncated, ok + tag(9, 1) + bytes(7)),
        (E.Truncated, ok + tag(9, 5) + bytes(3)),
        (E.Truncated, ok + tag(9, 2) + vint(5) + bytes(4)),
        (E.Truncated, ok + tag(9, 0) + b"\xff"),
        (E.Truncated, env(2, ld(1, KEY_A) + tag(4, 2) + vint(40) + CT)),
        (E.Truncated, env(1, prekey_body()[:-3])),  # PreKeyMessage ends inside its message
        (E.Truncated, env(1, prekey_body(message=rb[:-3]))),  # the inner message ends early
        # varints
        (E.VarintOverflow, b"\x88\x80\x80\x80\x80\x00" + b"\x01"),  # 6-byte tag
        (E.VarintOverflow, b"\x08\x81\x80\x80\x80\x80\x00" + uint(2, 2) + ld(3, rb)),  # 6-byte version
        (E.VarintOverflow, b"\x08\x80\x80\x80\x80\x10" + uint(2, 2) + ld(3, rb)),  # 2^32 in 5 bytes
        (E.VarintOverflow, uint(1, 1) + uint(2, 2) + b"\x1a\xff\xff\xff\xff\x7f" + rb),  # length
        (E.VarintOverflow, env(2, ld(1, KEY_A) + b"\x10\xff\xff\xff\xff\xff\x01" + ld(4, CT))),  # pn 64-bit
        (E.VarintOverflow, ok + tag(9, 0) + b"\xff" * 10 + b"\x01"),  # unknown varint of 11 bytes
        # field rules
        (E.BadField, ok + b"\x00\x01"),  # field number 0
        (E.BadField, ok + b"\x02\x00"),  # field 0, wire type 2
        (E.BadField, ld(1, b"\x01") + uint(2, 2) + ld(3, rb)),  # version as bytes
        (E.BadField, uint(1, 1) + uint(2, 2) + uint(3, 5)),  # body as varint
        (E.BadField, uint(1, 1) + ok),  # version twice
        (E.BadField, ok + ld(3, rb)),  # body twice
        (E.BadField, ok + tag(9, 3) + tag(9, 4)),  # group
        (E.BadField, ok + tag(9, 4)),
        (E.BadField, ok + tag(9, 6)),
        (E.BadField, ok + tag(9, 7)),
        (E.BadField, uint(1, 1) + uint(2, 2)),  # no body
        (E.BadField, env(2, ratchet_body(dh=KEY_A[:31]))),
        (E.BadField, env(2, ratchet_body(dh=KEY_A + b"\0"))),
        (E.BadField, env(2, uint(2, 1) + ld(4, CT))),  # no dh
        (E.BadField, env(2, ld(1, KEY_A))),  # no ciphertext
        (E.BadField, env(2, ratchet_body(ct=bytes(15)))),
        (E.BadField, env(2, ratchet_body() + ld(4, CT))),
        (E.BadField, env(2, ratchet_body() + uint(2, 1))),
        (E.BadField, env(2, ld(1, KEY_A) + ld(2, b"\x01") + ld(4, CT))),  # pn as bytes
        (E.BadField, env(2, uint(1, 1) + ld(4, CT))),  # dh as varint
        (E.BadField, env(1, prekey_body()[:-len(rb) - 2])),  # no message
        (E.BadField, env(1, prekey_body(ik=KEY_A[:31]))),
        (E.BadField, env(1, prekey_body(isk=b""))),
        (E.BadField, env(1, prekey_body(ek=KEY_C + KEY_C))),
        (E.BadField, env(1, prekey_body(message=ratchet_body(dh=KEY_B[:16])))),
        (E.BadField, env(1, prekey_body() + uint(4, 1))),
        (E.BadField, env(1, prekey_body() + ld(6, rb))),
        (E.BadField, env(1, prekey_body() + uint(7, 1))),  # sender_certificate as varint
        (E.BadField, env(1, prekey_body(cert=b"c") + ld(7, b"c"))),  # sender_certificate twice
        (E.BadField, env(4, b"")),  # no kind
        (E.BadField, env(4, uint(1, 0))),
        (E.BadField, env(4, uint(1, 2))),
        (E.BadField, env(4, uint(1, 1) + uint(1, 1))),
        (E.BadField, env(4, uint(1, 1) + uint(2, 1))),  # payload as varint
        (E.Oversize, env(4, uint(1, 1) + ld(2, bytes(E.MAX_CONTROL_PAYLOAD + 1)))),
    ]:
        yield case


# Accepted although not canonical: protobuf's reading rules (decoded record, bytes).
def tolerated_cases():
    rb = ratchet_body()
    msg = E.RatchetMessage(KEY_A, 1, 2, CT)
    unknown = (uint(15, 7) + tag(9, 0) + b"\xff" * 9 + b"\x01" + tag(10, 1) + bytes(8)
               + tag(11, 5) + bytes(4) + ld(12, b"x"))
    for case in [
        (msg, ld(3, rb) + uint(2, 2) + uint(1, 1)),  # any field order
        (msg, b"\x08\x81\x80\x00" + uint(2, 2) + ld(3, rb)),  # non-minimal varint
        (msg, b"\x08\x01\x10\x02\x1a" + bytes([len(rb) | 0x80, 0]) + rb),  # 2-byte length of a 72-byte body
        (msg, env(2, rb) + unknown),  # unknown fields of every wire type
        (msg, env(2, unknown + rb + unknown)),
        (msg, env(2, ld(4, CT) + uint(3, 2) + uint(2, 1) + ld(1, KEY_A))),
        (E.RatchetMessage(KEY_A, 0, 0, CT), env(2, ld(1, KEY_A) + uint(2, 0) + uint(3, 0) + ld(4, CT))),
        (E.PreKeyMessage(KEY_A, KEY_B, KEY_C, 7, 9, msg),
         env(1, prekey_body(message=rb + unknown) + unknown)),
        (E.PreKeyMessage(KEY_A, KEY_B, KEY_C, 7, 9, msg), env(1, prekey_body() + ld(7, b""))),  # empty = none
        (E.PreKeyMessage(KEY_A, KEY_B, KEY_C, 7, 9, msg, b"c"), env(1, ld(7, b"c") + prekey_body())),
        (E.Control(1), env(4, uint(1, 1) + ld(2, b""))),
        (E.Control(1, bytes(E.MAX_CONTROL_PAYLOAD)),
         env(4, uint(1, 1) + ld(2, bytes(E.MAX_CONTROL_PAYLOAD)))),
    ]:
        yield case
    yield E.RatchetMessage(KEY_A, 1, 2, bytes(E.MAX_CIPHERTEXT)), big_ratchet(E.MAX_CIPHERTEXT)


def check_malformed():
    n = 0
    for error, wire in malformed_cases():
        try:
            raises(error, E.decode, wire)
        except AssertionError as e:
            raise AssertionError("malformed case %d: %s" % (n, e))
        n += 1
    for i, (rec, wire) in enumerate(tolerated_cases()):
        check(E.decode(wire) == rec, "tolerated case %d" % i)
    return n


# Mutations of valid envelopes decode to a valid record or raise a DecodeError subclass, never
# anything else; every strict prefix raises, Truncated once the body length has begun.
# `wire` with 1 to 3 random edits from rng (a Stream): a flipped bit, a replaced byte, inserted
# random bytes, deleted bytes, an inserted copy of another part, a cut tail. Shared with the host
# differential test (tests/protocol/test_envelope.py).
def mutate(rng, wire):
    m = bytearray(wire)
    for _ in range(1 + rng.below(3)):
        op = rng.below(6)
        at = rng.below(len(m) + 1)
        if op == 0 and at < len(m):
            m[at] ^= 1 << rng.below(8)
        elif op == 1 and at < len(m):
            m[at] = rng.below(256)
        elif op == 2:
            m[at:at] = rng.bytes(1 + rng.below(4))
        elif op == 3:
            m[at:at + 1 + rng.below(4)] = b""
        elif op == 4:
            m[at:at] = m[rng.below(len(m) + 1):][:1 + rng.below(40)]
        else:
            m[at:] = m[at:][:rng.below(8)]
    return m


def check_fuzz(rounds, mutations):
    rng = Stream(b"envelope fuzz")
    decoded = rejected = 0
    for _ in range(rounds):
        rec = random_record(rng)
        wire = bytes(rec.encode())
        check(E.decode(wire) == rec, "random round trip")
        for cut in range(len(wire)):
            raises(E.Truncated if cut >= 5 else E.DecodeError, E.decode, wire[:cut])
        for _ in range(mutations):
            m = mutate(rng, wire)
            try:
                out = E.decode(m)
            except E.DecodeError:
                rejected += 1
                continue
            out.check()  # whatever decodes is a valid record that encodes again
            check(E.decode(out.encode()) == out, "re-encode of a mutated input")
            decoded += 1
    return decoded, rejected


def check_vectors(path):
    valid = invalid = 0
    for v in vectorfile.records(path):
        if v["result"] == "invalid":
            error = getattr(E, v["id"].split("/")[0])
            try:
                raises(error, E.decode, v["wire"])
            except AssertionError as e:
                raise AssertionError("%s: %s" % (v["id"], e))
            invalid += 1
            continue
        rec = record_of(v)
        check(E.decode(v["wire"]) == rec, "%s: decode" % v["id"])
        if v["canonical"] == b"\x01":
            check(bytes(rec.encode()) == v["wire"], "%s: encode" % v["id"])
        valid += 1
    check(valid > 0 and invalid > 0, "vector file has valid and invalid records")
    return valid, invalid


# Heap bytes one decode of a largest RatchetMessage envelope allocates, and its time (MicroPython).
def measure():
    if not hasattr(gc, "mem_alloc"):
        return ""
    wire = big_ratchet(E.MAX_CIPHERTEXT)
    small = bytes(E.RatchetMessage(KEY_A, 5, 6, bytes(64)).encode())
    gc.collect()
    before = gc.mem_alloc()
    E.decode(wire)
    alloc = gc.mem_alloc() - before
    t = time.ticks_us()
    for _ in range(100):
        E.decode(small)
    per = time.ticks_diff(time.ticks_us(), t) // 100
    t = time.ticks_us()
    for _ in range(100):
        E.RatchetMessage(KEY_A, 5, 6, bytes(64)).encode()
    enc = time.ticks_diff(time.ticks_us(), t) // 100
    return " max_decode_alloc=%d decode_us=%d encode_us=%d" % (alloc, per, enc)


# Random records with their encoding, one at a time (written out as they come).
def encoded(count):
    rng = Stream(b"device to host")
    for i in range(count):
        rec = random_record(rng)
        fields = {"id": "device-%d" % i}
        fields.update(fields_of(rec))
        fields["wire"] = bytes(rec.encode())
        yield fields


def main(args):
    global SCRATCH
    gc.collect()
    SCRATCH = bytearray(E.MAX_ENVELOPE + 16)
    if args and args[0] == "decode":
        n = 0
        for v in vectorfile.records(args[1]):
            rec = record_of(v)
            check(E.decode(v["wire"]) == rec, "%s: decode" % v["id"])
            check(bytes(rec.encode()) == v["wire"], "%s: encode" % v["id"])
            n += 1
        print("ok decode", n)
        return
    if args and args[0] == "encode":
        vectorfile.write(args[1], "envelopes encoded by e2ee.protocol.envelope", encoded(int(args[2])))
        print("ok encode", args[2])
        return
    check_limits()
    check_header()
    check_round_trips()
    check_encode_errors()
    malformed = check_malformed()
    decoded, rejected = check_fuzz(int(args[0]) if args else 100, 40)
    valid, invalid = check_vectors(VECTORS)
    print("ok envelope malformed=%d fuzz_decoded=%d fuzz_rejected=%d vectors_valid=%d vectors_invalid=%d%s"
          % (malformed, decoded, rejected, valid, invalid, measure()))


if __name__ == "__main__":
    main(sys.argv[1:])
