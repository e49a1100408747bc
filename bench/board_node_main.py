# main.py of scripts/bench-board (bench/board_node.py): a node's first message, timed and sized on
# the board. First power-on with a claim: enrolls, prints "bench enrolled <ms> <sent> <received>"
# (topics + payloads of the enrollment channel) and restarts, as Node.open does. Then: "bench
# opened <alloc> <free>" after importing and opening the node, one message to node.json's "peer",
# "bench delivered <ms since main.py started> <sent> <received>" when its receipt is back (the
# service channel's bytes: the bundle request and answer) and "bench session <alloc> <free>"; then
# it keeps the node running (receipts, upkeep) until it stops.
import gc
import time

t0 = time.ticks_ms()
from e2ee import board  # noqa: E402
from e2ee.node import CLAIM_FILE, Node, load_config, tls_options  # noqa: E402

if board.exists(CLAIM_FILE):
    import sys

    from e2ee import enroll
    from e2ee.transport.mqtt import MQTTClient
    enroll.by_claim(MQTTClient, **tls_options(load_config()))
    print("bench enrolled", time.ticks_diff(time.ticks_ms(), t0), enroll.wire[0], enroll.wire[1])
    time.sleep_ms(200)  # the line out before the soft reset
    sys.exit()
node = Node.open()
gc.collect()
print("bench opened", gc.mem_alloc(), gc.mem_free())
done = []
node.on_status(lambda peer, mid, status, reason: done.append(status) if status == "delivered" else None)
node.send(node.config["peer"], b"first reading")
while not done:
    node.step()
    node.wait(10)
print("bench delivered", time.ticks_diff(time.ticks_ms(), t0), node.service.sent_bytes, node.service.received_bytes)
gc.collect()
print("bench session", gc.mem_alloc(), gc.mem_free())
while not node.stopped:
    node.step()
    node.wait(50)
