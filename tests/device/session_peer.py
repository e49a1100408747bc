# A device for the interop tests: a SessionManager driven by one command per stdin line, one
# answer per stdout line (payloads in hex). Commands:
#   create <dir> <storage key>     open <dir> <storage key>     opk       bundle <opk id>
#   start <peer> <bundle>          enc <peer> <plaintext>       dec <peer> <envelope>
# dec answers "ok <plaintext>" or "err <error class>" for a typed error; anything else crashes.
import sys
from binascii import hexlify, unhexlify

from e2ee.protocol.session import SessionManager  # loads crypto first (heap order)
from e2ee.protocol import envelope, ratchet
from e2ee.protocol.keys import KeyAgreementError, PrekeyBundle
from e2ee.protocol.session import SessionError

TYPED = (envelope.DecodeError, ratchet.RatchetError, KeyAgreementError, SessionError)


def main():
    manager = None
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        words = line.split()
        cmd = words[0]
        if cmd in ("create", "open"):
            key = unhexlify(words[2])
            if cmd == "create":
                manager = SessionManager.create(words[1], key, one_time=5)
            else:
                manager = SessionManager.open(words[1], key)
            print("ok")
        elif cmd == "opk":
            print(manager.keystore.one_time_prekey_ids()[0])
        elif cmd == "bundle":
            print(hexlify(manager.bundle(int(words[1])).to_bytes()).decode())
        elif cmd == "start":
            manager.start(words[1], PrekeyBundle.from_bytes(unhexlify(words[2])))
            print("ok")
        elif cmd == "enc":
            print(hexlify(manager.encrypt(words[1], unhexlify(words[2]))).decode())
        elif cmd == "dec":
            try:
                plaintext = manager.decrypt(words[1], unhexlify(words[2]))
                print("ok", hexlify(plaintext).decode())
            except TYPED as e:
                print("err", type(e).__name__)


main()
