# Audit finding 2 (issue 12): session records of ids that are not record names sat under
# "p" + 30 hex digits of SHA-256(id), itself a device id anyone can enroll; no load checked whose
# record it was. Now such ids are stored under "_" + the hash, which no direct id reaches, every
# record holds its peer id and every load checks it. On MicroPython and CPython:
#
#   check_record_alias.py ROOT CASES ALIAS NEW_ALIAS    prints "ok record alias"
#
# ROOT holds the certified device directories board, gateway (device id Gateway.North), mallory
# (enrolled as ALIAS, the old alias of Gateway.North) and mallory2 (enrolled as NEW_ALIAS, the new
# one); CASES <name>.bin: their certificates (board, gateway, mallory, mallory2) and now (be64).
import sys

from checks import raises_in
from e2ee.protocol import ratchet, session
from e2ee.protocol.session import MESSAGE_ERRORS, NoSession, SessionManager, WrongRecord
from e2ee.protocol.trust import TrustStore

raises = raises_in(MESSAGE_ERRORS)
KEY = bytes(range(32))
ROOT, CASES, ALIAS, NEW_ALIAS = sys.argv[1:5]
GATEWAY = "Gateway.North"


def case(name):
    with open(CASES + "/" + name + ".bin", "rb") as f:
        return f.read()


NOW = int.from_bytes(case("now"), "big")


def manager(name):
    directory = ROOT + "/" + name
    return SessionManager.open(directory, KEY, trust=TrustStore(directory, KEY))


board, gateway = manager("board"), manager("gateway")
mallory, mallory2 = manager("mallory"), manager("mallory2")
identity = {m: (m.keystore.ik_pub, m.keystore.is_pub) for m in (gateway, mallory, mallory2)}

# Mallory, a genuine fleet member enrolled as ALIAS, opens a session with the board first. Before
# the fix the board stored it under the record name of Gateway.North.
mallory.start("board", board.bundle(), case("board"), NOW)
hello = mallory.encrypt("board", b"hello from mallory", NOW)
assert bytes(board.decrypt(ALIAS, hello, NOW)) == b"hello from mallory"
# The board's next message for Gateway.North must not go to Mallory's session.
try:
    leaked = board.encrypt(GATEWAY, b"valve 7: open", NOW)
except NoSession:
    leaked = None
if leaked is not None:
    got = mallory.decrypt("board", leaked, NOW)
    raise AssertionError("the board encrypted for %s to %s's session: %r" % (GATEWAY, ALIAS, bytes(got)))
assert board.peer_identity(ALIAS) == identity[mallory]
# Gateway.North gets its own session (before: UntrustedIdentity, the name was taken).
board.start(GATEWAY, gateway.bundle(), case("gateway"), NOW)
first = board.encrypt(GATEWAY, b"valve 7: open", NOW)
assert bytes(gateway.decrypt("board", first, NOW)) == b"valve 7: open"
reply = gateway.encrypt("board", b"opened", NOW)
# Mallory relays the gateway's message under her own id: it is not read as hers.
raises(ratchet.DecryptionFailed, board.decrypt, ALIAS, reply, NOW)
assert bytes(board.decrypt(GATEWAY, reply, NOW)) == b"opened"
assert board.peer_identity(GATEWAY) == identity[gateway]

# Mallory2, enrolled as NEW_ALIAS ("_" + the hash of Gateway.North): her id starts with "_", so it
# is hashed itself, and Gateway.North's session is untouched.
mallory2.start("board", board.bundle(), case("board"), NOW)
assert bytes(board.decrypt(NEW_ALIAS, mallory2.encrypt("board", b"hi", NOW), NOW)) == b"hi"
assert board.peer_identity(NEW_ALIAS) == identity[mallory2]
assert board.peer_identity(GATEWAY) == identity[gateway]
assert bytes(gateway.decrypt("board", board.encrypt(GATEWAY, b"still yours", NOW), NOW)) == b"still yours"
assert board.peers() == sorted([ALIAS, GATEWAY, NEW_ALIAS]), board.peers()
assert not board.has_session("gateway.north") and board.has_session(GATEWAY)

# Every record holds its peer id: Gateway.North's record placed under Mallory2's record name (as
# a hash collision would) is refused on load, whatever the operation, and nothing changes.
stored = board.session_bytes(GATEWAY)
assert stored[1] & 8 and bytes(stored[-1 - len(GATEWAY):]) == GATEWAY.encode() + bytes([len(GATEWAY)])
board._sessions.put(board._name(NEW_ALIAS), stored)
raises(WrongRecord, board.encrypt, NEW_ALIAS, b"x", NOW)
raises(WrongRecord, board.decrypt, NEW_ALIAS, mallory2.encrypt("board", b"x", NOW), NOW)
raises(WrongRecord, board.peer_identity, NEW_ALIAS)
assert isinstance(WrongRecord("x"), session.BadRecord) and isinstance(WrongRecord("x"), session.SessionError)
assert bytes(gateway.decrypt("board", board.encrypt(GATEWAY, b"unharmed", NOW), NOW)) == b"unharmed"
assert bytes(mallory.decrypt("board", board.encrypt(ALIAS, b"to mallory", NOW), NOW)) == b"to mallory"


# A record as versions 1-3 wrote it (no peer id): the same bytes without flag 8 and the id.
def old_format(data):
    out = bytearray(data[:len(data) - 1 - data[-1]])
    out[1] &= 0xFF ^ 8
    return bytes(out)


# Records of versions 1-3 after the upgrade: one at a direct name is that id's and is read (and
# written back as version 4); "p" + hash records the old index lists are deleted with it when the
# manager opens (their peers start over: NoSession); one at a hashed name is nobody's.
def old_records(root):
    a = SessionManager.create(root + "/a", KEY, 1)
    b = SessionManager.create(root + "/b", bytes(32), 1)
    for peer in ("plain-id", "Pump.B", "_under"):
        a.start(peer, b.bundle())
    store = a._sessions
    old_alias = "p" + a._name("Pump.B")[1:]  # the same hash, the old prefix
    store.put(old_alias, old_format(a.session_bytes("Pump.B")))
    store.put("peer-index", ('{"%s": "Pump.B"}' % old_alias).encode())
    store.put("plain-id", old_format(a.session_bytes("plain-id")))
    store.put("_under", old_format(a.session_bytes("_under")))
    for name in (a._name("Pump.B"), a._name("_under"), "_peers"):
        store.delete(name)
    a = SessionManager.open(root + "/a", KEY)
    names = a._sessions.names()
    assert old_alias not in names and "peer-index" not in names, names
    assert a.peers() == ["plain-id"], a.peers()
    assert bytes(b.decrypt("A", a.encrypt("plain-id", b"old record, new code"))) == b"old record, new code"
    assert a.session_bytes("plain-id")[1] & 8, "written back as version 4"
    for peer in ("Pump.B", "_under"):
        assert not a.has_session(peer)
        raises(NoSession, a.encrypt, peer, b"x")
    # an old record at the hashed name of Pump.B: not Pump.B's, and a new session replaces it
    store.put(a._name("Pump.B"), old_format(a.session_bytes("plain-id")))
    raises(NoSession, a.encrypt, "Pump.B", b"x")
    a.start("Pump.B", b.bundle())
    assert bytes(b.decrypt("A", a.encrypt("Pump.B", b"anew"))) == b"anew"
    assert a.peers() == ["Pump.B", "plain-id"], a.peers()


old_records(ROOT + "/old")
print("ok record alias")
