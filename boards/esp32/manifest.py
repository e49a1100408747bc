# Freeze manifest of ESP32 firmware with the e2ee-iot SDK (boards/README.md, "Building firmware"):
# the port's own modules, the MQTT client from micropython-lib, and the SDK as frozen bytecode
# (its code stays in flash, so the 120 KB heap is left to sessions and the application).
#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=<repo>/boards/esp32/manifest.py \
#       USER_C_MODULES=<repo>/firmware/cmodules/micropython.cmake
include("$(PORT_DIR)/boards/manifest.py")
require("umqtt.simple")
package("e2ee", base_path="../../firmware")
