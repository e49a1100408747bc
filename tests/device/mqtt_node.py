# A device on the broker (docs/broker.md): its identity and sessions from FLASH (as
# enroll_device.py left them), the compact MQTT client under the inbox link, envelopes decrypted
# by the session manager. One command per stdin line, answers on stdout:
#   micropython mqtt_node.py <flash> <storage key hex> <device_id> <fleet> <host> <port> <password>
#   start <peer> <bundle hex>   X3DH from the peer's bundle                 -> ok
#   send <peer> <text>          encrypt and publish to the peer's inbox      -> sent
#   poll <ms>                   handle what arrives for that long            -> got <sender> <text> ... polled <n>
#   drop                        the network goes away (socket closed)        -> dropped
#   connect                     reconnect with backoff (persistent session)  -> connected <n>
import sys
import time
from binascii import unhexlify

from e2ee.protocol.session import SessionManager  # crypto backends load first (heap order)
from e2ee.protocol.keys import PrekeyBundle
from e2ee.protocol import envelope, ratchet
from e2ee.protocol.session import SessionError
from e2ee.protocol.keys import KeyAgreementError
from e2ee.transport.link import Link
from e2ee.transport.mqtt import MQTTClient

REFUSED = (envelope.DecodeError, ratchet.RatchetError, KeyAgreementError, SessionError)
flash, skey, device_id, fleet, host, port, password = sys.argv[1:8]
manager = SessionManager.open(flash, unhexlify(skey))
count = [0]


def on_message(sender, data):
    count[0] += 1
    try:
        print("got", sender, bytes(manager.decrypt(sender, data)).decode())
    except REFUSED as e:
        print("refused", sender, type(e).__name__)


link = Link(MQTTClient, host, int(port), fleet, device_id, password, on_message, keepalive=30)
link.connect_with_backoff()
print("ready")
while True:
    line = sys.stdin.readline()
    if not line:
        break
    cmd, _, rest = line.rstrip("\n").partition(" ")
    if cmd == "start":
        peer, bundle = rest.split(" ")
        manager.start(peer, PrekeyBundle.from_bytes(unhexlify(bundle)))
        print("ok")
    elif cmd == "send":
        peer, text = rest.split(" ", 1)
        link.send(peer, manager.encrypt(peer, text.encode()))
        print("sent")
    elif cmd == "poll":
        count[0] = 0
        deadline = time.time() + int(rest) / 1000
        while time.time() < deadline:
            link.poll()
            time.sleep(0.01)
        print("polled", count[0])
    elif cmd == "drop":
        link.client.sock.close()
        link.client = None
        print("dropped")
    elif cmd == "connect":
        link.connect_with_backoff()
        print("connected", link.connects)
