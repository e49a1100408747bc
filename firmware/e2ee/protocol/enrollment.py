# Enrollment and signed requests: the exact bytes a device signs or MACs when it enrolls with the
# provisioning service and when it calls the key directory (docs/provisioning.md, "Enrollment").
# The service builds the same bytes with this module, so device and service cannot disagree.
#
#   proof of possession   Ed25519(IS, proof_message(...)) over a fresh 32-byte server challenge
#   hardware evidence     HMAC-SHA256(board_key, evidence_message(...)), board_key derived from a
#                         factory key and the board's unique id (key diversification)
#   signed request        Ed25519(IS, request_message(...)) in the X-E2EE-* headers
import hashlib

from e2ee import crypto

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

CHALLENGE_SIZE = const(32)
MAX_BOARD_UID = const(32)  # machine.unique_id(): 6 bytes on ESP32 (MAC), 8 on RP2040 (flash id)
MAX_NAME = const(64)  # device ids and fleets, as in certificates

PROOF_LABEL = b"e2ee-iot enroll v1"
EVIDENCE_LABEL = b"e2ee-iot hw v1"
BOARD_KEY_LABEL = b"e2ee-iot board key v1"
REQUEST_LABEL = b"e2ee-iot request v1"

_NAME_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"


class EnrollmentError(ValueError):
    pass


def _check(what, value, low, high):
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise EnrollmentError("%s must be bytes" % what)
    if not low <= len(value) <= high:
        raise EnrollmentError("%s must be %d..%d bytes, got %d" % (what, low, high, len(value)))


def _name(what, value):
    data = value.encode() if isinstance(value, str) else value
    _check(what, data, 1, MAX_NAME)
    for c in data:
        if c not in _NAME_CHARS:
            raise EnrollmentError("%s may use only A-Z a-z 0-9 . _ -" % what)
    return data


# SHA-256 of the claim token's ASCII: binds the proof to the claim it spends without signing
# the bearer secret itself.
def claim_hash(token):
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


# label || 0 || challenge(32) || claim_hash(32) || len || device_id || len || fleet
#   || IK.pub(32) || IS.pub(32) || len || board_uid   (len: one byte; board_uid may be empty)
def proof_message(challenge, claim_digest, device_id, fleet, ik_pub, is_pub, board_uid=b""):
    _check("challenge", challenge, CHALLENGE_SIZE, CHALLENGE_SIZE)
    _check("claim hash", claim_digest, 32, 32)
    device_id = _name("device id", device_id)
    fleet = _name("fleet", fleet)
    _check("IK.pub", ik_pub, 32, 32)
    _check("IS.pub", is_pub, 32, 32)
    _check("board uid", board_uid, 0, MAX_BOARD_UID)
    return b"".join((PROOF_LABEL, b"\x00", challenge, claim_digest, bytes((len(device_id),)), device_id,
                     bytes((len(fleet),)), fleet, ik_pub, is_pub, bytes((len(board_uid),)), board_uid))


# The key a board is personalised with at the factory: HMAC-SHA256(factory key, label || uid).
# The service recomputes it from the factory key; a board's key reveals nothing of another's.
def board_key(factory_key, board_uid):
    _check("factory key", factory_key, 32, 64)
    _check("board uid", board_uid, 1, MAX_BOARD_UID)
    return crypto.hmac_sha256(factory_key, BOARD_KEY_LABEL + bytes(board_uid))


# label || 0 || challenge || IS.pub || len || board_uid: evidence is fresh (challenge) and bound
# to the identity being enrolled (IS.pub), so it cannot be replayed for another key.
def evidence_message(challenge, is_pub, board_uid):
    _check("challenge", challenge, CHALLENGE_SIZE, CHALLENGE_SIZE)
    _check("IS.pub", is_pub, 32, 32)
    _check("board uid", board_uid, 1, MAX_BOARD_UID)
    return b"".join((EVIDENCE_LABEL, b"\x00", challenge, is_pub, bytes((len(board_uid),)), board_uid))


def hardware_evidence(key, challenge, is_pub, board_uid):
    return crypto.hmac_sha256(key, evidence_message(challenge, is_pub, board_uid))


# What a device sends to POST /enroll, as raw fields (the caller encodes them: base64 in JSON).
# keystore: e2ee.protocol.keys.KeyStore; board_key: None on boards without hardware binding.
def enrollment_fields(keystore, challenge, token, device_id, fleet, board_uid=b"", key=None):
    digest = claim_hash(token)
    message = proof_message(challenge, digest, device_id, fleet, keystore.ik_pub, keystore.is_pub, board_uid)
    fields = {"ik_pub": keystore.ik_pub, "is_pub": keystore.is_pub, "proof": keystore.sign(message)}
    if key is not None:
        fields["board_uid"] = bytes(board_uid)
        fields["evidence"] = hardware_evidence(key, challenge, keystore.is_pub, board_uid)
    return fields


# label || 0 || METHOD || 0 || path || 0 || decimal timestamp || 0 || device_id || 0 || body
def request_message(method, path, timestamp, device_id, body):
    return b"\x00".join((REQUEST_LABEL, method.upper().encode(), path.encode(), b"%d" % timestamp,
                         device_id.encode(), body))
