# Canonical public key encodings (docs/protocol.md §4 "Canonical keys", audit finding 7), on their
# own so that modules needing only these checks (keys, x3dh) do not load the envelope codec.
# X25519 ignores bit 255 of a public key and reduces it mod p = 2^255 - 19 (RFC 7748 §5), so one
# key has several 32-byte encodings; a duplicate check on bytes (a PreKeyMessage's base key, §6)
# then passes for the same key in another encoding. Only the canonical encoding is accepted
# anywhere a peer's key enters: u < p, bit 255 clear. For Ed25519 (RFC 8032 §5.1.3) y < p, and no
# sign bit on x = 0 (y = 1 or y = p - 1). Equal keys then have equal bytes.


# True when the 255-bit little-endian value of key (bit 255 ignored) is below p = 2^255 - 19.
def _below_p(key):
    if key[31] & 0x7F != 0x7F or key[0] < 0xED:
        return True
    for i in range(1, 31):
        if key[i] != 0xFF:
            return True
    return False


# True when key (32 bytes) is the canonical encoding of an X25519 public key.
def canonical_x25519(key):
    return len(key) == 32 and not key[31] & 0x80 and _below_p(key)


# True when key (32 bytes) is a canonical Ed25519 point encoding (whether it is on the curve is
# the verifier's business).
def canonical_ed25519(key):
    if len(key) != 32 or not _below_p(key):
        return False
    if not key[31] & 0x80:
        return True
    # the sign bit on y = 1 (01 00..00 00) or y = p - 1 (ec ff..ff 7f): x = 0 has no sign
    if key[0] == 1:
        fill = 0
    elif key[0] == 0xEC:
        fill = 0xFF
    else:
        return True
    if key[31] & 0x7F != fill & 0x7F:
        return True
    for i in range(1, 31):
        if key[i] != fill:
            return True
    return False
