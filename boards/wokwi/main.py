# Frozen main of the Wokwi builds (boards/<board>/manifest_wokwi.py; docs/boards.md, "Examples"):
# the crypto self test, then the network (Wokwi's open Wi-Fi, skipped where there is no `network`
# module, as on the virtual board), then the sensor application (firmware/examples/sensor_node.py)
# when the board holds a claim or an enrollment; a fresh simulated board has neither and idles.
import json

import selftest  # noqa: F401  (runs on import and prints E2EE SELFTEST PASS/FAIL)
from e2ee import board, net
from e2ee.node import CLAIM_FILE, load_config

config = load_config()
config.setdefault("wifi", {"ssid": "Wokwi-GUEST", "password": ""})
try:
    print("E2EE NET", net.up(config))
except Exception as e:  # no Wi-Fi: the self test's verdict stands, the node cannot run
    print("E2EE NET down", type(e).__name__, e)
ready = board.exists(CLAIM_FILE)
if not ready:
    from e2ee.provision import status
    ready = json.loads(status())["enrolled"]
if ready:
    import sensor_node  # noqa: F401  (runs the node until it stops)
else:
    print("E2EE NODE idle: no claim file and no enrollment (flash e2ee_data/claim.json and node.json)")
