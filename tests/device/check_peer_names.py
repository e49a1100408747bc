# Peers whose device ids are not record names (capitals, ".", over 32 characters) keep sessions
# under hashed record names ("_" + 30 hex digits) with an index (e2ee.protocol.session); on
# MicroPython and CPython.
#   check_peer_names.py <empty directory>      prints "ok peer names"
import os
import sys

from e2ee.protocol.session import SessionManager

d = sys.argv[1]
a = SessionManager.create(d + "/a", bytes(32), 2)
b = SessionManager.create(d + "/b", bytes(range(32)), 2)
long_id = "Plant-North.Line-3.Pressure-Sensor-0042"
for peer in ("Pump.B", long_id, "plain-id"):
    a.start(peer, b.bundle(None))
    assert bytes(b.decrypt("Sensor.A", a.encrypt(peer, b"to " + peer.encode()))) == b"to " + peer.encode()
assert a.peers() == sorted(["Pump.B", long_id, "plain-id"]), a.peers()
assert a.has_session("Pump.B") and a.has_session(long_id) and not a.has_session("pump.b")
names = sorted(os.listdir(d + "/a/sessions"))
assert "plain-id" in names and "_peers" in names and "Pump.B" not in names, names
assert len([n for n in names if n[0] == "_" and len(n) == 31]) == 2, names
reopened = SessionManager.open(d + "/a", bytes(32))
assert reopened.peers() == a.peers()
assert reopened.peer_identity(long_id) == (b.keystore.ik_pub, b.keystore.is_pub)
print("ok peer names")
