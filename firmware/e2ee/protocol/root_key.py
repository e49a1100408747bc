# Root-key ratchet of the Double Ratchet (docs/protocol.md §3; Signal Double Ratchet spec §3.3,
# §5.2): KDF_RK mixes one DH output into the root key and starts a new sending or receiving chain.
from e2ee import crypto

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# HKDF info of KDF_RK (§3): binds the output to this protocol and version.
RATCHET_INFO = b"e2ee-iot ratchet v1"
ROOT_KEY_SIZE = const(32)  # new root key, bytes 0..31 of the HKDF output (§3)
_OUTPUT_SIZE = const(64)  # root key || chain key (§3)


# KDF_RK (§3): HKDF(ikm = dh_out, salt = rk, info = RATCHET_INFO, L = 64); returns
# (new root key, chain key).
def advance(rk, dh_out):
    okm = crypto.hkdf_sha256(dh_out, rk, RATCHET_INFO, _OUTPUT_SIZE)
    return bytes(okm[:ROOT_KEY_SIZE]), bytes(okm[ROOT_KEY_SIZE:])
