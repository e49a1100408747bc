# Freeze manifest of RP2040 (Pico W) firmware with the e2ee-iot SDK (boards/README.md, "Building
# firmware"): the port's own modules (Pico W: network, the CYW43 driver) and the SDK as frozen
# bytecode with its own MQTT client (umqtt.simple is not frozen: mpremote mip install umqtt.simple
# for an application that injects it).
#   make -C ports/rp2 BOARD=RPI_PICO_W FROZEN_MANIFEST=<repo>/boards/rp2040/manifest.py \
#       USER_C_MODULES=<repo>/firmware/cmodules/micropython.cmake
include("$(BOARD_DIR)/manifest.py")  # the Pico W board manifest: the port's modules + bundle-networking
include("../../firmware/manifest.py")  # the SDK with the viper backend, no host-only module
