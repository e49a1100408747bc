# Device side of the main demo (scripts/demo): a device app on the protocol core. Its identity and
# sessions live in encrypted record stores on flash (docs/protocol.md §5, §6); it starts a session
# from a peer's prekey bundle (X3DH) and encrypts and decrypts with the Double Ratchet.
#
#   micropython session_demo.py <flash directory> <storage key hex>
#
# The first boot creates the device identity; every later boot reopens it, and its sessions,
# from flash. Then one command per stdin line (here from the demo host; on a board from the MQTT
# task and the application), one answer line each:
#   start <peer> <bundle hex>     X3DH from the peer's prekey bundle    -> ok
#   send <peer> <text>            encrypt text for the peer             -> wire <envelope hex>
#   recv <peer> <envelope hex>    an envelope from the wire             -> ok | refused <error>
#   size <peer>                   report the stored session             -> ok
# Lines starting with "device:" say what the device sees. Only envelopes go on the wire.
import os
import sys
from binascii import hexlify, unhexlify

from e2ee.protocol.session import SessionManager  # loads the crypto backends first (heap order)
from e2ee import crypto
from e2ee.protocol import envelope, ratchet
from e2ee.protocol.keys import KeyAgreementError, PrekeyBundle, fingerprint
from e2ee.protocol.session import SessionError
from e2ee.protocol.store import NotFound

# What a peer or the network can cause: refused, reported, and the device carries on.
REFUSED = (envelope.DecodeError, ratchet.RatchetError, KeyAgreementError, SessionError)


def hexstr(data):
    return hexlify(data).decode()


def boot(directory, storage_key):
    try:
        manager = SessionManager.open(directory, storage_key)
        print("device: rebooted, identity and sessions reopened from flash:", manager.peers())
    except NotFound:  # no keystore record yet: first boot
        manager = SessionManager.create(directory, storage_key, one_time=5)
        print("device: first boot, new identity stored on flash")
    print("device: crypto backend", crypto.default.name)
    print("device: my fingerprint", hexstr(manager.keystore.fingerprint()))
    return manager


def main():
    directory, storage_key = sys.argv[1], unhexlify(sys.argv[2])
    manager = boot(directory, storage_key)
    print("ready", hexstr(manager.keystore.fingerprint()))
    while True:
        line = sys.stdin.readline()
        if not line:
            return  # the host closed the line: shut down
        cmd, peer, arg = (line.rstrip("\n").split(" ", 2) + [""])[:3]
        if cmd == "start":
            bundle = PrekeyBundle.from_bytes(unhexlify(arg))
            manager.start(peer, bundle)  # checks the signed prekey's signature
            print("device: X3DH with %s from its bundle, fingerprint %s" % (
                peer, hexstr(bundle.fingerprint())))
            print("ok")
        elif cmd == "send":
            print("device: sending to %s: %s" % (peer, arg))
            print("wire", hexstr(manager.encrypt(peer, arg.encode())))
        elif cmd == "recv":
            try:
                plaintext = manager.decrypt(peer, unhexlify(arg))
            except REFUSED as e:
                print("device: refused an envelope from %s: %s" % (peer, type(e).__name__))
                print("refused", type(e).__name__)
                continue
            print("device: decrypted from %s: %s" % (peer, bytes(plaintext).decode()))
            print("ok")
        elif cmd == "size":
            on_flash = os.stat(directory + "/sessions/" + peer)[6]
            print("device: session with %s (fingerprint %s): %d bytes, %d on flash encrypted" % (
                peer, hexstr(fingerprint(*manager.peer_identity(peer))),
                len(manager.session_bytes(peer)), on_flash))
            print("ok")
        else:
            raise ValueError("unknown command " + cmd)


main()
