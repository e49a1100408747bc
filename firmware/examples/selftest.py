# On-board power-on self test of the crypto suite (FIPS 140-style known answers): the board runs
# it at boot (as main.py on a fresh board, or imported by an application) and refuses to go on if
# any primitive disagrees with its RFC. Prints one line per check and "E2EE SELFTEST PASS <backend>"
# or "E2EE SELFTEST FAIL <check>", the line the Wokwi scenarios and the HIL rig wait for.
from binascii import unhexlify as h
import hashlib

from e2ee import crypto

# name -> (function computing bytes, expected bytes); values from tests/vectors/ (the RFC texts)
CHECKS = (
    # RFC 7748 §6.1: Alice's and Bob's shared secret
    ("x25519", lambda: crypto.x25519(h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"),
                                     h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")),
     "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"),
    # RFC 8032 §7.1 TEST 1: signature of the empty message
    ("ed25519", lambda: crypto.ed25519_sign(h("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"), b""),
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    # RFC 5869 A.1
    ("hkdf_sha256", lambda: crypto.hkdf_sha256(h("0b" * 22), h("000102030405060708090a0b0c"), h("f0f1f2f3f4f5f6f7f8f9"),
                                               42),
     "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
    # FIPS 180-4 / NIST example: SHA-512("abc")
    ("sha512", lambda: crypto.sha512(b"abc"),
     "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"),
    # RFC 8439 §2.8.2: SHA-256 of ciphertext || tag of the AEAD example
    ("chacha20poly1305", lambda: hashlib.sha256(crypto.aead_encrypt(
        h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"), h("070000004041424344454647"),
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
        b"sunscreen would be it.", h("50515253c0c1c2c3c4c5c6c7"))).digest(),
     "4e54427e462f3beb69677d39865c5da8d57f603a85f7bf71368dce8ec9b9933c"),
)


def run():
    for name, compute, expected in CHECKS:
        if bytes(compute()) != h(expected):
            print("E2EE SELFTEST FAIL", name)
            return False
        print("selftest", name, "ok")
    print("E2EE SELFTEST PASS", crypto.default.name)
    return True


run()
