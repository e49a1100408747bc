# A board's Link over the broker's TLS listener (docs/boards.md, "TLS"; tests/broker/test_node_tls.py):
#   micropython tls_link.py <client: e2ee|umqtt> <host> <port> <fleet> <device id> <password> <CA file (DER)> <peer> [<server name>]
# Connects with a context that verifies (CERT_REQUIRED, the CA loaded, the name checked), prints
# "up", sends "hello over tls" to <peer>'s inbox, waits up to 20 s for one inbox message and
# prints "got <sender> <text>". A refused handshake or CONNACK prints "refused <type> <reason>".
import sys
import time

from e2ee.node import tls_options
from e2ee.transport.link import Link

kind, host, port, fleet, device_id, password, ca, peer = sys.argv[1:9]
settings = {"ca": ca}
if len(sys.argv) > 9:
    settings["server_hostname"] = sys.argv[9]
if kind == "umqtt":
    from umqtt.simple import MQTTClient
else:
    from e2ee.transport.mqtt import MQTTClient
got = []
link = Link(MQTTClient, host, int(port), fleet, device_id, password, lambda sender, data: got.append((sender, data)),
            keepalive=30, timeout=10, **tls_options(settings))
try:
    link.connect()
except Exception as e:
    print("refused", type(e).__name__, e)
    sys.exit(0)
print("up", type(link.client.sock).__name__)
link.send(peer, b"hello over tls")
deadline = time.ticks_add(time.ticks_ms(), 20000)
while not got and time.ticks_diff(deadline, time.ticks_ms()) > 0:
    link.step()
    time.sleep_ms(20)
for sender, data in got:
    print("got", sender, bytes(data).decode())
link.close()
