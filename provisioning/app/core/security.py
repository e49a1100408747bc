"""Request authentication: operator API keys and device-signed requests.

A device signs each key-directory request with its identity signing key IS (Ed25519,
docs/protocol.md §1) over `signed_request_message(...)`, sent in three headers:
X-E2EE-Device (its device id), X-E2EE-Timestamp (unix seconds, decimal) and X-E2EE-Signature
(base64 of the 64-byte signature). The message binds method, path, time, device and body, so a
signature is good for exactly one request; writes additionally need a timestamp newer than the
device's last accepted one (replay refused).
"""
from __future__ import annotations

import hmac

from e2ee_provisioning.core.config import hash_api_key

__all__ = ["REQUEST_LABEL", "operator_key_matches", "signed_request_message"]

# Domain separation of request signatures from prekey signatures (which start "e2ee-iot SPK v1").
REQUEST_LABEL = b"e2ee-iot request v1"


def signed_request_message(method: str, path: str, timestamp: int, device_id: str, body: bytes) -> bytes:
    """label || 0 || METHOD || 0 || path || 0 || decimal timestamp || 0 || device_id || 0 || body."""
    return b"\x00".join((REQUEST_LABEL, method.upper().encode(), path.encode(), b"%d" % timestamp,
                         device_id.encode(), body))


def operator_key_matches(presented: str, accepted_hashes: frozenset[str]) -> bool:
    """True when SHA-256(presented) is one of the accepted hashes; constant-time per comparison
    and every hash is compared, so timing does not tell which one (or whether any) matched."""
    digest = hash_api_key(presented)
    match = False
    for accepted in accepted_hashes:
        match |= hmac.compare_digest(digest, accepted)
    return match
