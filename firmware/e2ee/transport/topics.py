# The MQTT topic layout (docs/broker.md), shared by devices, hosts and the broker's ACLs. Ids and
# fleets use only A-Z a-z 0-9 . _ - (docs/provisioning.md), so they never contain / + #.
#   e2ee/v1/<fleet>/d/<device_id>/inbox   the device's inbox: it alone reads, fleet members write
#   e2ee/v1/<fleet>/g/<group>             a group topic: members read and write
#   e2ee/v1/<fleet>/crl                   the signed revocation list, retained; the service writes
# An inbox message is: 0x01 | len | sender device id | envelope (docs/protocol.md §4).
PREFIX = "e2ee/v1/"
FRAME_VERSION = 1


def inbox(fleet, device_id):
    return "%s%s/d/%s/inbox" % (PREFIX, fleet, device_id)


def all_inboxes(fleet):
    return "%s%s/d/+/inbox" % (PREFIX, fleet)


def group(fleet, group_id):
    return "%s%s/g/%s" % (PREFIX, fleet, group_id)


def crl(fleet):
    return "%s%s/crl" % (PREFIX, fleet)


# The sender's id rides in front of the envelope; the session, not this field, proves who wrote it
# (a wrong name only selects a session whose keys then fail the AEAD).
def frame(sender, envelope):
    s = sender.encode() if isinstance(sender, str) else sender
    return bytes((FRAME_VERSION, len(s))) + s + bytes(envelope)


# Not an inbox frame: too short, another version, a sender length past the end, or a sender name
# that is not UTF-8. A ValueError, as callers catch.
class BadFrame(ValueError):
    pass


# (sender, envelope as a memoryview into payload); BadFrame when payload is not a frame.
def unframe(payload):
    if len(payload) < 3 or payload[0] != FRAME_VERSION or 2 + payload[1] > len(payload):
        raise BadFrame("not an e2ee-iot inbox frame")
    n = payload[1]
    try:
        sender = bytes(payload[2:2 + n]).decode()
    except UnicodeError:  # the fuzz target found it: a UnicodeDecodeError escaped
        raise BadFrame("inbox frame sender is not UTF-8")
    return sender, memoryview(payload)[2 + n:]
