# The device SDK as a board freezes it (boards/esp32 and boards/rp2040 include this file): package
# `e2ee` without its CPython-only backend (crypto/_host.py) and with one MicroPython crypto
# backend, the one e2ee flash copies too (e2ee_host.micropython.board_backend):
#   include("<repo>/firmware/manifest.py")                  viper: ports with the native emitter
#   include("<repo>/firmware/manifest.py", backend="pure")  a port built without it
#   include("<repo>/firmware/manifest.py", backend="none")  firmware with the C module _e2ee_crypto
import os

options.defaults(backend="viper")
_SKIP = ["crypto/_host.py"] + ["crypto/_%s/" % b for b in ("viper", "pure") if b != options.backend]
_FILES = []
for _dir, _, _names in os.walk("e2ee"):
    for _name in _names:
        _path = os.path.relpath(os.path.join(_dir, _name), "e2ee").replace(os.sep, "/")
        if _name.endswith(".py") and not [s for s in _SKIP if _path == s or _path.startswith(s)]:
            _FILES.append(_path)
package("e2ee", files=sorted(_FILES))
