"""Request authentication (operator API keys, device-signed requests) and registration-lock PINs.

A device signs each key-directory request with its identity signing key IS (Ed25519,
docs/protocol.md §1) over `signed_request_message(...)`, sent in three headers:
X-E2EE-Device (its device id), X-E2EE-Timestamp (Unix time, decimal: milliseconds, or seconds
for older clients; see timestamp_ms) and X-E2EE-Signature
(base64 of the 64-byte signature). The message binds method, path, time, device and body, so a
signature is good for exactly one request; writes additionally need a timestamp newer than the
device's last accepted one (replay refused). The bytes come from the device package
(e2ee.protocol.enrollment.request_message), so device and service build the same message.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os

from e2ee.protocol.enrollment import REQUEST_LABEL, request_message
from e2ee_provisioning.core.config import hash_api_key

__all__ = ["MS_TIMESTAMP_FROM", "REQUEST_LABEL", "hash_pin", "operator_key_matches", "pin_matches",
           "signed_request_message", "timestamp_ms"]

signed_request_message = request_message

# Signed timestamps from this value up are milliseconds (10^11 ms is 1973; 10^11 s is year 5138,
# so no seconds value reaches it): clients sign wall time in ms, unique per request (issue 12,
# finding 11); seconds from older clients and boards stay accepted.
MS_TIMESTAMP_FROM = 10**11


def timestamp_ms(timestamp: int) -> int:
    """A signed request's timestamp in Unix milliseconds."""
    return timestamp if timestamp >= MS_TIMESTAMP_FROM else timestamp * 1000

# Registration-lock PINs are short secrets: scrypt (RFC 7914) with a per-lock salt makes each
# guess of a stolen database cost ~16 MiB and tens of milliseconds; online guessing is limited
# by the attempt counter (docs/provisioning.md, "Registration lock").
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_pin(pin: str) -> str:
    """'scrypt$N$r$p$salt$hash' (base64) of a PIN."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return "scrypt$%d$%d$%d$%s$%s" % (_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, base64.b64encode(salt).decode(),
                                      base64.b64encode(digest).decode())


def pin_matches(pin: str, stored: str) -> bool:
    """True when `pin` hashes to `stored` (constant-time comparison of the digests)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        candidate = hashlib.scrypt(pin.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                   dklen=len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(candidate, expected)


def operator_key_matches(presented: str, accepted_hashes: frozenset[str]) -> bool:
    """True when SHA-256(presented) is one of the accepted hashes; constant-time per comparison
    and every hash is compared, so timing does not tell which one (or whether any) matched."""
    digest = hash_api_key(presented)
    match = False
    for accepted in accepted_hashes:
        match |= hmac.compare_digest(digest, accepted)
    return match
