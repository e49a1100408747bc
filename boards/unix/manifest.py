# Freeze manifest of the virtual board (MicroPython unix port): the device SDK as frozen bytecode,
# so its code and constants stay out of the heap as on ESP32/RP2040 builds (docs/decisions.md D12).
# Build (local check, docs/performance.md):
#   make -C ports/unix FROZEN_MANIFEST=<repo>/boards/unix/manifest.py MPY_CROSS_FLAGS=-march=x64
metadata(description="e2ee-iot device SDK, frozen for the unix virtual board", version="0.1.0")
# The whole package, every backend: this build runs the device tests, which check each backend
# (a board's image, firmware/manifest.py, has one).
package("e2ee", base_path="../../firmware")
