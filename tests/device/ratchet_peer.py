# One party of a Double Ratchet conversation driven over stdin/stdout by
# tests/protocol/test_ratchet.py (the other party is the CPython test process).
# Usage: ratchet_peer.py; the first line is "initiator|responder <sk> <ad> <spk private>" (hex;
# on stdin because the unix port aborts on long command-line arguments). Then commands, one per
# line, answers one line each (hex fields):
#   enc <plaintext>            -> msg <dh> <pn> <n> <ciphertext>
#   dec <dh> <pn> <n> <ct>     -> pt <plaintext> | err <ErrorClass>
#   state                      -> state <serialized session>
#   quit
import sys
from binascii import hexlify, unhexlify

from e2ee import crypto
from e2ee.protocol import ratchet


def hx(data):
    return hexlify(data).decode()


def main():
    role, sk, ad, spk = sys.stdin.readline().split()
    sk, ad, spk = unhexlify(sk), unhexlify(ad), unhexlify(spk)
    spk_pub = crypto.x25519_base(spk)
    if role == "initiator":
        session = ratchet.init_initiator(sk, spk_pub, ad)
    else:
        session = ratchet.init_responder(sk, (spk, spk_pub), ad)
    print("ready", crypto.default.name)
    while True:
        words = sys.stdin.readline().split()
        if not words or words[0] == "quit":
            break
        if words[0] == "enc":
            dh, pn, n, ct = session.encrypt(unhexlify(words[1]) if len(words) > 1 else b"")
            print("msg", hx(dh), pn, n, hx(ct))
        elif words[0] == "dec":
            try:
                plaintext = session.decrypt(unhexlify(words[1]), int(words[2]), int(words[3]),
                                            unhexlify(words[4]) if len(words) > 4 else b"")
                print("pt", hx(plaintext) or "-")
            except ratchet.RatchetError as e:
                print("err", type(e).__name__)
        elif words[0] == "state":
            print("state", hx(session.to_bytes()))
        else:
            raise ValueError("unknown command %s" % words[0])


main()
