# The decoder bugs the fuzz targets found in device code (tests/fuzz, test_fuzzfound_*), checked on
# MicroPython and CPython: each input now gets its module's typed error. Run from the repository
# root; prints "ok fuzzfound".
from checks import raises
from e2ee.protocol import linking
from e2ee.transport import topics


def payload(device_id, fleet=b"plant.north", key=None):
    raw = bytes((linking.VERSION, len(device_id))) + device_id + bytes((len(fleet),)) + fleet
    raw += bytes(32) + (key if key is not None else bytes(range(1, 33)))
    return linking.PREFIX + linking._b32encode(raw)


def main():
    # inbox frames: a sender name that is not UTF-8 (UnicodeError escaped)
    raises(topics.BadFrame, topics.unframe, b"\x01\x02\xc3\x28" + bytes(8))
    assert topics.unframe(topics.frame("pump-7", b"e"))[0] == "pump-7"
    # link payloads: ids outside the id alphabet; keys X25519 cannot use
    for bad in (b"../claims", b"pump 7", b"a/b", b"\xc3\xa9"):
        raises(linking.BadPayload, linking.Offer.parse, payload(bad))
        raises(linking.BadPayload, linking.Offer.parse, payload(b"pump-7", bad))
    assert linking.Offer.parse(payload(b"Pump_7.a-b")).device_id == "Pump_7.a-b"
    offer = linking.Offer("pump-7", "plant.north", bytes(16), bytes(16), bytes(range(1, 33)), bytes(32))
    for key in (b"", bytes(31), bytes(32)):
        raises(linking.ChannelError, offer.channel, key)
    small_order = linking.Offer.parse(payload(b"pump-7", key=bytes(32)))
    raises(linking.ChannelError, linking.Channel.for_primary, small_order)
    print("ok fuzzfound")


main()
