# Symmetric-key ratchet of the Double Ratchet (docs/protocol.md §3; Signal Double Ratchet
# spec §2.2 and §5.2): KDF_CK turns a chain key into one message key and the next chain key,
# and a message key expands into the ChaCha20-Poly1305 key and nonce of exactly one message.
from e2ee import crypto

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# HMAC inputs of KDF_CK (§3): distinct constants separate the message key from the next
# chain key, as in the Signal spec's recommendation (§5.2).
_MESSAGE_KEY_SEED = b"\x01"
_CHAIN_KEY_SEED = b"\x02"
# HKDF info of the message-key expansion (§3): binds the output to this protocol and version.
MESSAGE_INFO = b"e2ee-iot message v1"
# HKDF salt of the expansion (§3): HashLen zero bytes.
_ZERO_SALT = bytes(32)
CHAIN_KEY_SIZE = const(32)  # HMAC-SHA256 output (§3)
MESSAGE_KEY_SIZE = const(32)  # HMAC-SHA256 output (§3)
AEAD_KEY_SIZE = const(32)  # ChaCha20-Poly1305 key (RFC 8439 §2.8)
AEAD_NONCE_SIZE = const(12)  # ChaCha20-Poly1305 nonce (RFC 8439 §2.8)
_EXPANDED_SIZE = const(44)  # AEAD key || nonce


# KDF_CK (§3): returns (next chain key, message key) for chain key `ck`.
def advance(ck):
    return crypto.hmac_sha256(ck, _CHAIN_KEY_SEED), crypto.hmac_sha256(ck, _MESSAGE_KEY_SEED)


# Message key expansion (§3): returns (AEAD key, nonce). Each message key encrypts exactly one
# message, so a nonce never repeats under one AEAD key. Sender-key chains (§7) expand with their
# own info string.
def expand(mk, info=MESSAGE_INFO):
    okm = memoryview(crypto.hkdf_sha256(mk, _ZERO_SALT, info, _EXPANDED_SIZE))
    return okm[:AEAD_KEY_SIZE], okm[AEAD_KEY_SIZE:]
