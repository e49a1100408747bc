# A device for the interop tests: a SessionManager driven by one command per stdin line, one
# answer per stdout line (payloads in hex). Commands:
#   create <dir> <storage key> [trust]    open <dir> <storage key> [trust]
#       ("trust": with the TrustStore in <dir>, docs/protocol.md §6 "Certified sessions")
#   opk       bundle <opk id>       identity (IK.pub || IS.pub)
#   start <peer> <bundle> [certificate]     enc <peer> <plaintext>      dec <peer> <envelope>
#   ca <CA public keys>      cert <own certificate>      crl <signed revocation list>
#   session <peer> (the stored session record, or "none")
# start, enc, dec, ca, cert and crl answer "err <error class>" for a typed error (dec and enc
# "ok <plaintext>" / the envelope, crl "ok <version>", the others "ok"); anything else crashes.
import sys
from binascii import hexlify, unhexlify

from e2ee.protocol.session import SessionManager  # loads crypto first (heap order)
from e2ee.protocol import envelope, ratchet
from e2ee.protocol.keys import KeyAgreementError, PrekeyBundle
from e2ee.protocol.session import SessionError

TYPED = (envelope.DecodeError, ratchet.RatchetError, KeyAgreementError, SessionError)


def hx(data):
    return hexlify(data).decode()


def open_manager(words):
    key = unhexlify(words[2])
    trust = None
    if len(words) > 3 and words[3] == "trust":
        from e2ee.protocol.trust import TrustStore  # only then: uncertified runs import less
        trust = TrustStore(words[1], key)
    if words[0] == "create":
        return SessionManager.create(words[1], key, one_time=5, trust=trust)
    return SessionManager.open(words[1], key, trust=trust)


def typed():
    if "e2ee.protocol.certificate" in sys.modules:
        return TYPED + (sys.modules["e2ee.protocol.certificate"].CertificateError,)
    return TYPED


def run(manager, words):
    cmd = words[0]
    if cmd == "opk":
        return str(manager.keystore.one_time_prekey_ids()[0])
    if cmd == "bundle":
        return hx(manager.bundle(int(words[1])).to_bytes())
    if cmd == "identity":
        return hx(manager.keystore.ik_pub + manager.keystore.is_pub)
    if cmd == "session":
        return hx(manager.session_bytes(words[1])) if manager.has_session(words[1]) else "none"
    try:
        if cmd == "start":
            cert = unhexlify(words[3]) if len(words) > 3 else None
            manager.start(words[1], PrekeyBundle.from_bytes(unhexlify(words[2])), cert)
            return "ok"
        if cmd == "enc":
            return hx(manager.encrypt(words[1], unhexlify(words[2])))
        if cmd == "dec":
            return "ok " + hx(manager.decrypt(words[1], unhexlify(words[2])))
        if cmd == "ca":
            blob = unhexlify(words[1])
            manager.trust.set_ca_keys([blob[i:i + 32] for i in range(0, len(blob), 32)])
            return "ok"
        if cmd == "cert":
            manager.trust.set_certificate(unhexlify(words[1]), None,
                                          (manager.keystore.ik_pub, manager.keystore.is_pub))
            return "ok"
        if cmd == "crl":
            return "ok %d" % manager.trust.update_revocation_list(unhexlify(words[1]))
    except typed() as e:
        return "err " + type(e).__name__
    raise ValueError("unknown command " + cmd)


def main():
    manager = None
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        words = line.split()
        if words[0] in ("create", "open"):
            manager = open_manager(words)
            print("ok")
        else:
            print(run(manager, words))


main()
