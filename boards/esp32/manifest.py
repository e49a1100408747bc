# Freeze manifest of ESP32 firmware with the e2ee-iot SDK (boards/README.md, "Building firmware"):
# the port's own modules and the SDK as frozen bytecode (its code stays in flash, so the 120 KB heap
# is left to sessions and the application). The SDK brings its own MQTT client (e2ee.transport.mqtt),
# so this manifest adds no umqtt.simple (the port's own manifest freezes it with bundle-networking).
#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=<repo>/boards/esp32/manifest.py \
#       USER_C_MODULES=<repo>/firmware/cmodules/micropython.cmake
include("$(PORT_DIR)/boards/manifest.py")
include("../../firmware/manifest.py")  # the SDK with the viper backend, no host-only module
