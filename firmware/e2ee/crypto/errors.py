# Typed errors of the crypto layer. Messages carry lengths and names, never key bytes.


class CryptoError(ValueError):
    pass


# An argument of the wrong type or length (key, nonce, scalar, signature).
class InvalidLength(CryptoError):
    pass


# AEAD authentication failed: wrong key, nonce, AD, tag or tampered ciphertext (RFC 8439 §2.8).
class InvalidTag(CryptoError):
    pass


# Ed25519 signature rejected (RFC 8032 §5.1.7): bad encoding, non-canonical S or wrong equation.
class InvalidSignature(CryptoError):
    pass


# X25519 produced the all-zero shared secret: the peer key has small order (RFC 7748 §6.1).
class WeakSharedSecret(CryptoError):
    pass


# A backend name that is unknown or not available on this runtime.
class BackendUnavailable(CryptoError):
    pass
