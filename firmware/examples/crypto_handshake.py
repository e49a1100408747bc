# Device side of the crypto demo (scripts/demo): an authenticated X25519 key agreement with the
# host over a line channel (stdin/stdout here; MQTT in the full system), then AEAD messages.
# Lines are "<label> <hex>"; only public keys, signatures and ciphertext cross the channel.
import sys
from binascii import hexlify, unhexlify

from e2ee import crypto

_INFO = b"e2ee-iot demo v1"


def send(label, data):
    print(label, hexlify(data).decode())


def receive(label):
    got, value = sys.stdin.readline().split()
    if got != label:
        raise ValueError("expected %s, got %s" % (label, got))
    return unhexlify(value)


def main():
    print("device: crypto backend", crypto.default.name)
    identity = crypto.random_bytes(32)  # Ed25519 seed; never leaves the device
    ephemeral = crypto.random_bytes(32)  # X25519 private key; never leaves the device
    public = crypto.x25519_base(ephemeral)
    send("identity", crypto.ed25519_public_key(identity))
    send("public", public)
    send("signature", crypto.ed25519_sign(identity, public))
    host_identity = receive("identity")
    host_public = receive("public")
    crypto.ed25519_verify(host_identity, host_public, receive("signature"))
    shared = crypto.x25519(ephemeral, host_public)
    key = crypto.hkdf_sha256(shared, None, _INFO + public + host_public, 32)
    send("ciphertext", crypto.aead_encrypt(key, bytes(12), b"hello from the MicroPython device", public))
    reply = crypto.aead_decrypt(key, b"\x00" * 11 + b"\x01", receive("ciphertext"), host_public)
    print("device: decrypted reply:", bytes(reply).decode())


main()
