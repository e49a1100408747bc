# The new device's side of QR linking (docs/linking.md) on the device, driven one command per stdin
# line by tests/linking/test_linking.py (which carries the rendezvous messages, as the device's
# network stack would). Its identity is the one enroll_device.py keeps in FLASH.
#   micropython link_new_device.py <flash dir> <storage key hex>
#   offer <device_id> <fleet>   -> payload <QR text> <rendezvous hex>
#   answer <offer-slot hex>     -> code <6 digits> <primary hello JSON hex> <sealed answer hex>
#                                  | refused <ErrorClass>
# The answer carries the device's consent: its IS signature over linking.consent_message(owner,
# primary, its fingerprint), with the owner and primary the offer named (docs/linking.md §2).
import json
import sys
from binascii import b2a_base64, hexlify, unhexlify

from e2ee.protocol import linking
from e2ee.protocol.keys import KeyStore
from e2ee.protocol.store import RecordStore

store = RecordStore(sys.argv[1] + "/keys", "keys", unhexlify(sys.argv[2]))
keystore = KeyStore.from_bytes(store.get("keystore"))
fingerprint = keystore.fingerprint()
offer = None
print("ready")
while True:
    line = sys.stdin.readline()
    if not line:
        break
    words = line.split()
    if words[0] == "offer":
        offer = linking.Offer.new(words[1], words[2], fingerprint)
        print("payload", offer.payload(), offer.rendezvous())
    elif words[0] == "answer":
        data = unhexlify(words[1])
        try:
            channel = offer.channel(data[:32])
            hello = channel.open_offer(data[32:])
        except linking.LinkError as e:
            print("refused", type(e).__name__)
            continue
        named = json.loads(hello.decode())
        consent = keystore.sign(linking.consent_message(named["owner"], named["primary"], fingerprint))
        sealed = channel.seal_answer(json.dumps({"accept": True, "device_id": offer.device_id,
                                                 "consent": b2a_base64(consent).strip().decode()}).encode())
        print("code", channel.check_code, hexlify(hello).decode(), hexlify(sealed).decode())
