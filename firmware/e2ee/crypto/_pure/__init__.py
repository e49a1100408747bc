# Portable pure-Python backend (MicroPython and CPython): plain ints, big ints on purpose.
