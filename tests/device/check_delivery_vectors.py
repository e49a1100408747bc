# Delivery known answers (docs/protocol.md §8, docs/vectors/delivery.txt) on MicroPython and CPython:
# record encoding and decoding, what receipts name, the signed session-reset request and its
# Control envelope, refused requests, and the receiver's window after each seq.
# Usage: check_delivery_vectors.py <vectors file> <empty directory>   (prints "ok delivery vectors=<n>")
import struct
import sys

from checks import raises_in
from e2ee import crypto

crypto.default.resolve()
from e2ee.protocol import delivery, envelope  # noqa: E402
from e2ee.protocol.delivery import DeliveryError, Malformed, ResetRefused  # noqa: E402
from e2ee.protocol.session import SessionManager  # noqa: E402
import vectorfile  # noqa: E402

raises = raises_in(DeliveryError)


def be32(b):
    return struct.unpack(">I", b)[0]


def expect(got, want, what):
    if bytes(got) != bytes(want):
        raise AssertionError("%s differs" % what)


def data(rec):
    seq = be32(rec["seq"])
    expect(delivery.encode_data(rec["stream"], seq, rec["payload"]), rec["record"], "data record")
    kind, stream, got_seq, payload = delivery.decode(rec["record"])
    assert (kind, stream, got_seq) == (delivery.DATA, rec["stream"], seq), "data decoded"
    expect(payload, rec["payload"], "data payload")


def receipt(rec):
    low, bits = be32(rec["low"]), be32(rec["bits"])
    expect(delivery.encode_receipt(rec["stream"], low, bits), rec["record"], "receipt record")
    assert delivery.decode(rec["record"]) == (delivery.RECEIPT, rec["stream"], low, bits), "receipt decoded"
    entry = [rec["stream"], low, bits]
    named = b"".join(struct.pack(">I", s) for s in range(max(1, low - 1), min(low + 32, 0x100000000))
                     if delivery._seen(entry, s))
    expect(named, rec["named"], "seqs the receipt names")


def reset(rec):
    requester, target = rec["requester"].decode(), rec["target"].decode()
    expect(crypto.ed25519_public_key(rec["signing_seed"]), rec["signing_pub"], "signing_pub")
    message = delivery.reset_message(requester, target, rec["dh"])
    expect(message, rec["message"], "reset message")
    expect(crypto.ed25519_sign(rec["signing_seed"], message), rec["signature"], "signature")
    expect(rec["dh"] + rec["signature"], rec["payload"], "payload")
    expect(envelope.encode(envelope.Control(envelope.SESSION_RESET, rec["payload"])), rec["wire"], "wire")
    control = envelope.decode(rec["wire"])
    assert control.kind == envelope.SESSION_RESET, "kind"
    expect(control.payload, rec["payload"], "decoded payload")
    crypto.ed25519_verify(rec["signing_pub"], message, control.payload[len(rec["dh"]):])


# A target's signature check as Delivery makes it: the reset message rebuilt from the frame's
# sender (requester), its own id (target) and the request's dh, verified with the identity held.
def refused_signature(rec):
    control = envelope.decode(rec["wire"])
    payload = bytes(control.payload)
    k = len(payload) // 32 - 2
    assert 0 < k <= 4 and len(payload) == 32 * k + 64, "a request of the right size"
    message = delivery.reset_message(rec["requester"].decode(), rec["target"].decode(), payload[:32 * k])
    try:
        crypto.ed25519_verify(rec["signing_pub"], message, payload[32 * k:])
    except crypto.InvalidSignature:
        return
    raise AssertionError("%s verified" % rec["id"])


def main(path, directory):
    target = None
    windows = {}
    n = 0
    for rec in vectorfile.records(path):
        n += 1
        kind = rec["id"]
        if kind == "data":
            data(rec)
        elif kind == "receipt":
            receipt(rec)
        elif kind.startswith("Malformed/record-"):
            raises(Malformed, delivery.decode, rec["record"])
        elif kind == "reset":
            reset(rec)
        elif kind == "ResetRefused/reset-no-session" or kind.startswith("Malformed/reset-"):
            if target is None:  # a real Delivery of a device that holds no session
                sessions = SessionManager.create(directory + "/target", bytes(32), one_time=1)
                target = delivery.Delivery(sessions, directory + "/target", bytes(32), "alice")
            error = ResetRefused if kind.startswith("ResetRefused") else Malformed
            raises(error, target.handle, rec["requester"].decode(), rec["wire"], None)
            assert target.resets_taken == 0
        elif kind.startswith("ResetRefused/reset-"):
            refused_signature(rec)
        elif kind.startswith("window-"):
            if kind not in windows:
                windows[kind] = [rec["receipt"][1:9], 0, 0]
            entry = windows[kind]
            new = delivery._mark(entry, be32(rec["seq"]))
            assert new == (rec["new"] == b"\x01"), "%s seq %d: new %s" % (kind, be32(rec["seq"]), new)
            assert entry[1:] == [be32(rec["low"]), be32(rec["bits"])], "%s seq %d: %r" % (kind, be32(rec["seq"]), entry[1:])
            expect(delivery.encode_receipt(entry[0], entry[1], entry[2]), rec["receipt"], kind + " receipt")
        else:
            raise AssertionError("unknown record " + kind)
    print("ok delivery vectors=%d" % n)


main(sys.argv[1], sys.argv[2])
