# The board's firmware plus the crypto self test as frozen main.py, for the Wokwi simulation
# (wokwi.toml, scenario.yaml): build with FROZEN_MANIFEST=<this file> instead of manifest.py.
include("manifest.py")
module("selftest.py", base_path="../../firmware/examples")
module("main.py", base_path="../wokwi")
