# A sensor board on its own (docs/boards.md, "Examples"): flashed as main.py with the SDK, and for
# its first boot e2ee_data/claim.json and e2ee_data/node.json ({"wifi": {"ssid": ..., "password":
# ...}, "ca": "e2ee_data/broker-ca.der", "peer": "gateway", "every_ms": 10000, "count": 0 = no end}).
# ESP32 and Pico W alike; where there is no `network` module (the virtual board) Wi-Fi is skipped.
import time
from e2ee import net
from e2ee.node import Node, load_config

net.up(load_config())                           # Wi-Fi, then the clock from NTP
node = Node.open()                              # enrolls by claim at first boot; TLS to the broker
node.on_message(lambda peer, data: print("got", peer, data.decode()))
get = node.config.get                           # node.json's application entries
peer, every, count = get("peer", "gateway"), get("every_ms", 10000), get("count", 0)
sent, due = 0, time.ticks_ms()
while not node.stopped:
    node.step()                                 # receive, deliver, receipts, upkeep: never sleeps
    if time.ticks_diff(time.ticks_ms(), due) >= 0 and node.pending(peer) < 16 and sent != count:
        sent += 1                               # a real sensor's value goes here
        node.send(peer, b"reading %d t=%d" % (sent, time.ticks_ms() % 100000))
        due = time.ticks_add(time.ticks_ms(), every)
    node.wait(20)
print("stopped:", node.stopped)
