# e2ee-iot device SDK (MicroPython first; also importable on CPython).
# See docs/ for the protocol specification and the decision log.
__version__ = "0.1.0"
