# The board's firmware plus boards/wokwi/main.py as frozen main.py (the crypto self test, then the
# sensor node of firmware/examples), for the Wokwi simulation (wokwi.toml, scenario.yaml): build
# with FROZEN_MANIFEST=<this file> instead of manifest.py.
include("manifest.py")
module("selftest.py", base_path="../../firmware/examples")
module("sensor_node.py", base_path="../../firmware/examples")
module("main.py", base_path="../wokwi")
