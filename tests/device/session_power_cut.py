# Power-cut sender: reopens the device from flash and encrypts to "host" in a loop, printing
# "<plaintext hex> <envelope hex>" after each encrypt() returned (the session is on flash by
# then). The test SIGKILLs it at random instants, also inside the session write.
# Usage: session_power_cut.py <dir> <storage key hex> <label>
import sys
from binascii import hexlify, unhexlify

from e2ee.protocol.session import SessionManager


def main(directory, key, label):
    manager = SessionManager.open(directory, unhexlify(key))
    i = 0
    while True:
        plaintext = b"%s %d" % (label.encode(), i)
        envelope = manager.encrypt("host", plaintext)
        print(hexlify(plaintext).decode(), hexlify(envelope).decode())
        i += 1


main(*sys.argv[1:])
