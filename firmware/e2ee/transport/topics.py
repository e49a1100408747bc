# The MQTT topic layout (docs/broker.md), shared by devices, hosts and the broker's ACLs. Ids and
# fleets use only A-Z a-z 0-9 . _ - (docs/provisioning.md), so they never contain / + #.
#   e2ee/v1/<fleet>/d/<device_id>/inbox   the device's inbox: it alone reads, fleet members write
#   e2ee/v1/<fleet>/g/<group>             a group topic: members read and write
#   e2ee/v1/<fleet>/crl                   the signed revocation list, retained; the service writes
#   e2ee/v1/<fleet>/svc/<device_id>/req   the service channel: the device's signed requests, only
#   e2ee/v1/<fleet>/svc/<device_id>/resp  it writes req and reads resp; the service the other way
#   e2ee/v1/<fleet>/enroll/<claim>/req    zero-touch enrollment by claim: the claim's holder writes
#   e2ee/v1/<fleet>/enroll/<claim>/resp   req and reads resp (<claim>: the claim's id, decimal)
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


def service_request(fleet, device_id):
    return "%s%s/svc/%s/req" % (PREFIX, fleet, device_id)


def service_response(fleet, device_id):
    return "%s%s/svc/%s/resp" % (PREFIX, fleet, device_id)


def enroll_request(fleet, claim):
    return "%s%s/enroll/%s/req" % (PREFIX, fleet, claim)


def enroll_response(fleet, claim):
    return "%s%s/enroll/%s/resp" % (PREFIX, fleet, claim)


# The broker username of a claim's credential: "claim:" is outside the device-id alphabet, so no
# device can enroll under a claim's name or the other way round.
def claim_user(claim):
    return "claim:%s" % claim


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
