# The crypto backend interface. Every protocol module calls these functions and never a
# primitive directly. Inputs are checked here once; backends get well-formed arguments.
#
# Backends, best first (docs/decisions.md, "Crypto backend hierarchy"):
#   "c"     the firmware C module `_e2ee_crypto` (boards built with it; see boards/); on CPython
#           its crypto core over ctypes (e2ee_host.cmodule), once scripts/build-cmodule built it
#   "viper" viper/native-accelerated MicroPython, 32-bit-word arithmetic
#   "pure"  portable pure Python, runs on MicroPython and CPython
#   "host"  CPython: `cryptography` (X25519, Ed25519, ChaCha20-Poly1305, HKDF)
# Each primitive comes from the first backend in the chain that provides it, so a C module
# that only has X25519 and the AEAD still gets Ed25519 from viper.
import gc
import os
import sys

from e2ee.crypto import constant_time, kdf
from e2ee.crypto.errors import (
    BackendUnavailable,
    InvalidLength,
    InvalidSignature,
    InvalidTag,
    WeakSharedSecret,
)

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

KEY_SIZE = const(32)  # X25519 scalars and u-coordinates, Ed25519 seeds and keys, AEAD keys
NONCE_SIZE = const(12)  # ChaCha20-Poly1305 IETF nonce (RFC 8439 §2.8)
TAG_SIZE = const(16)  # Poly1305 tag (RFC 8439 §2.5)
SIGNATURE_SIZE = const(64)  # Ed25519 signature R || S (RFC 8032 §5.1.6)

# Primitive name -> (module inside a MicroPython backend package, function name); module None
# means the shared e2ee.crypto.kdf over the firmware's C hashlib.sha256.
# The "c" and "host" backends expose the primitive names directly.
_PRIMITIVES = {
    "sha512": ("sha512", "sha512"),
    "sha512_hasher": ("sha512", "SHA512"),
    "aead_seal_into": ("chacha20poly1305", "seal_into"),
    "aead_open_into": ("chacha20poly1305", "open_into"),
    "x25519": ("x25519", "x25519"),
    "x25519_base": ("x25519", "x25519_base"),
    "ed25519_public_key": ("ed25519", "public_key"),
    "ed25519_sign": ("ed25519", "sign"),
    "ed25519_verify": ("ed25519", "verify"),
    "hmac_sha256": (None, "hmac_sha256"),
    "hkdf_sha256": (None, "hkdf_sha256"),
    # hazmat building blocks, reached only through Suite.hazmat()
    "chacha20_xor": ("chacha20poly1305", "chacha20_xor"),
    "poly1305_into": ("chacha20poly1305", "poly1305_into"),
}
_PACKAGES = {"viper": "e2ee.crypto._viper", "pure": "e2ee.crypto._pure"}
_MODULES = {"c": "_e2ee_crypto", "host": "e2ee.crypto._host"}
# Backends whose ed25519_verify takes the message as a tuple of parts and hashes them one after
# the other; the others (one buffer: the C module, `cryptography`) get the parts joined.
_VERIFY_PARTS = ("viper", "pure")
if sys.implementation.name != "micropython":
    # CPython: the same C core over ctypes, once scripts/build-cmodule has built it (tests, bench)
    _MODULES["c"] = "e2ee_host.cmodule"


# Imports a module by dotted name. On MicroPython a collection first lets the module's long-lived
# objects fill the low, compacted heap instead of gaps between the loader's temporaries, so
# the heap stays unfragmented (large buffers remain allocatable in a 120 KB heap).
def _import(name):
    module = sys.modules.get(name)
    if module is None:
        gc.collect()
        module = __import__(name)  # the top-level package, or a built-in (C) module itself,
        module = sys.modules.get(name, module)  # which MicroPython does not list in sys.modules
    return module


# The function implementing `primitive` in backend `backend`, or None when that backend
# lacks it or cannot load on this runtime (no C module, no viper emitter, no cryptography).
def _find(backend, primitive):
    try:
        module, function = _PRIMITIVES[primitive]
        if backend in _MODULES:
            found = getattr(_import(_MODULES[backend]), primitive, None)
            if found is not None or module is not None:
                return found
        elif module is not None:
            return getattr(_import(_PACKAGES[backend] + "." + module), function)
        # HMAC/HKDF: the shared kdf over the firmware's C hashlib.sha256, for a backend with SHA-512
        return getattr(kdf, function) if _find(backend, "sha512") else None
    except (ImportError, SyntaxError, AttributeError):
        return None


# Backend chain for this runtime, best first; unavailable ones are skipped when resolving.
def _chain():
    if sys.implementation.name == "micropython":
        return ("c", "viper", "pure")
    return ("host", "pure")


# True when `backend` loads on this runtime (imports one module of it, nothing else).
def _loads(backend):
    return _find(backend, "sha512") is not None or _find(backend, "x25519") is not None


# The backends that load on this runtime.
def available():
    return [b for b in _chain() if _loads(b)]


# One set of validated primitives bound to a backend chain. Each primitive is resolved on first
# use, so a device pays (in RAM) only for the backend modules it calls.
class Suite:
    def __init__(self, chain):
        self.chain = chain
        self.provider = {}  # primitive -> backend, filled in as primitives are resolved
        self._fns = {}

    def _fn(self, primitive):
        fn = self._fns.get(primitive)
        if fn is not None:
            return fn
        for backend in self.chain:
            fn = _find(backend, primitive)
            if fn is not None:
                self._fns[primitive] = fn
                self.provider[primitive] = backend
                return fn
        raise BackendUnavailable("no backend in %r provides %s" % (self.chain, primitive))

    # Resolves every primitive now; returns the primitive -> backend map.
    def resolve(self):
        for primitive in _PRIMITIVES:
            self._fn(primitive)
        return self.provider

    # Backends in use, in chain order, e.g. "viper" or "c+viper".
    @property
    def name(self):
        used = self.resolve().values()
        return "+".join([b for b in self.chain if b in used])

    def __repr__(self):
        return "<crypto.Suite %s>" % "/".join(self.chain)

    # A low-level building block of the resolved backend ("chacha20_xor", "poly1305_into"),
    # unchecked, for the RFC 8439 §2.4/§2.5 known-answer tests. Protocol code never calls these.
    def hazmat(self, name):
        return self._fn(name)

    # os.urandom: the OS CSPRNG on hosts, the hardware RNG on ESP32/RP2040 (boards/).
    def random_bytes(self, n):
        return os.urandom(n)

    def ct_equal(self, a, b):
        return constant_time.equal(a, b)

    # FIPS 180-4 §6.4
    def sha512(self, data):
        return self._fn("sha512")(data)

    # FIPS 180-4 §6.4, incremental: an object with update(data) and digest(), for messages
    # that do not fit in RAM at once (firmware images, backups).
    def sha512_hasher(self, data=None):
        hasher = self._fn("sha512_hasher")()
        if data is not None:
            hasher.update(data)
        return hasher

    # RFC 2104
    def hmac_sha256(self, key, data):
        return self._fn("hmac_sha256")(key, data)

    # RFC 5869; salt None means HashLen zero bytes.
    def hkdf_sha256(self, ikm, salt, info, length):
        if not 0 <= length <= kdf.HKDF_MAX_LENGTH:
            raise InvalidLength("HKDF length %d not in 0..%d" % (length, kdf.HKDF_MAX_LENGTH))
        return self._fn("hkdf_sha256")(ikm, salt, info, length)

    # RFC 8439 §2.8 AEAD: returns ciphertext || 16-byte tag. ad None means b"".
    def aead_encrypt(self, key, nonce, plaintext, ad=None):
        out = bytearray(len(plaintext) + TAG_SIZE)
        self.aead_encrypt_into(key, nonce, plaintext, ad, out)
        return out

    # Same, writing into a caller-owned buffer of len(plaintext) + 16 bytes (no allocation).
    def aead_encrypt_into(self, key, nonce, plaintext, ad, out):
        _check_aead(key, nonce)
        if len(out) != len(plaintext) + TAG_SIZE:
            raise InvalidLength("AEAD output buffer must be %d bytes" % (len(plaintext) + TAG_SIZE))
        self._fn("aead_seal_into")(key, nonce, plaintext, b"" if ad is None else ad, out)

    # RFC 8439 §2.8 AEAD open: raises InvalidTag when data fails authentication,
    # including data shorter than a tag. Returns the plaintext.
    def aead_decrypt(self, key, nonce, data, ad=None):
        n = len(data) - TAG_SIZE
        out = bytearray(n if n > 0 else 0)
        self.aead_decrypt_into(key, nonce, data, ad, out)
        return out

    # Same, writing the plaintext into a caller-owned buffer of len(data) - 16 bytes (no
    # allocation); out may be data's own first len(data) - 16 bytes (decryption in place). The
    # tag is checked before anything is written: on InvalidTag out is unchanged.
    def aead_decrypt_into(self, key, nonce, data, ad, out):
        _check_aead(key, nonce)
        n = len(data) - TAG_SIZE
        if n < 0:
            raise InvalidTag("ciphertext of %d bytes is shorter than the tag" % len(data))
        if len(out) != n:
            raise InvalidLength("AEAD output buffer must be %d bytes" % n)
        data = memoryview(data)
        if not self._fn("aead_open_into")(key, nonce, data[:n], data[n:], b"" if ad is None else ad, out):
            raise InvalidTag("ChaCha20-Poly1305 authentication failed")

    # RFC 7748 §5; §6.1: an all-zero shared secret (small-order peer key) is refused.
    def x25519(self, private, public):
        _check_len("X25519 private key", private, KEY_SIZE)
        _check_len("X25519 public key", public, KEY_SIZE)
        shared = self._fn("x25519")(private, public)
        if constant_time.equal(shared, bytes(KEY_SIZE)):
            raise WeakSharedSecret("X25519 shared secret is all zero (small-order public key)")
        return shared

    # RFC 7748 §6.1: public key = X25519(private, 9).
    def x25519_base(self, private):
        _check_len("X25519 private key", private, KEY_SIZE)
        return self._fn("x25519_base")(private)

    # RFC 8032 §5.1.5
    def ed25519_public_key(self, seed):
        _check_len("Ed25519 seed", seed, KEY_SIZE)
        return self._fn("ed25519_public_key")(seed)

    # RFC 8032 §5.1.6. `public` may be passed to skip recomputing it.
    def ed25519_sign(self, seed, message, public=None):
        _check_len("Ed25519 seed", seed, KEY_SIZE)
        if public is None:
            public = self._fn("ed25519_public_key")(seed)
        else:
            _check_len("Ed25519 public key", public, KEY_SIZE)
        return self._fn("ed25519_sign")(seed, public, message)

    # RFC 8032 §5.1.7 (cofactorless, S < L, canonical encodings). Raises InvalidSignature.
    # message: bytes-like, or a tuple of bytes-like parts whose concatenation is the message
    # (a label and a 9 KB revocation list): the viper and pure backends feed them to SHA-512 one
    # after the other, so the message is never copied into one block.
    def ed25519_verify(self, public, message, signature):
        _check_len("Ed25519 public key", public, KEY_SIZE)
        if len(signature) != SIGNATURE_SIZE:
            raise InvalidSignature("Ed25519 signature must be 64 bytes, got %d" % len(signature))
        verify = self._fn("ed25519_verify")
        if type(message) is tuple:
            for part in message:
                if not isinstance(part, _BUFFER_TYPES):
                    raise InvalidLength("Ed25519 message parts must be bytes")
            if self.provider["ed25519_verify"] not in _VERIFY_PARTS:
                message = _join(message)
        if not verify(public, message, signature):
            raise InvalidSignature("Ed25519 signature does not verify")


_BUFFER_TYPES = (bytes, bytearray, memoryview)  # built once: a tuple literal allocates per call


def _check_len(what, value, size):
    if not isinstance(value, _BUFFER_TYPES):
        raise InvalidLength("%s must be bytes" % what)
    if len(value) != size:
        raise InvalidLength("%s must be %d bytes, got %d" % (what, size, len(value)))


# The parts in one new buffer (bytes.join of MicroPython takes no memoryview).
def _join(parts):
    out = bytearray(sum([len(p) for p in parts]))
    pos = 0
    for part in parts:
        out[pos:pos + len(part)] = part
        pos += len(part)
    return out


def _check_aead(key, nonce):
    _check_len("ChaCha20-Poly1305 key", key, KEY_SIZE)
    _check_len("ChaCha20-Poly1305 nonce", nonce, NONCE_SIZE)


# A Suite for one named backend (with "pure" behind it for anything it lacks).
def load(name):
    if name not in _PACKAGES and name not in _MODULES:
        raise BackendUnavailable("unknown crypto backend %r" % name)
    if not _loads(name):
        raise BackendUnavailable("crypto backend %r is not available on this runtime" % name)
    return Suite((name, "pure") if name != "pure" else ("pure",))


# The default suite: the best available backend for each primitive, resolved on first use.
default = Suite(_chain())

random_bytes = default.random_bytes
ct_equal = default.ct_equal
sha512 = default.sha512
sha512_hasher = default.sha512_hasher
hmac_sha256 = default.hmac_sha256
hkdf_sha256 = default.hkdf_sha256
aead_encrypt = default.aead_encrypt
aead_encrypt_into = default.aead_encrypt_into
aead_decrypt = default.aead_decrypt
aead_decrypt_into = default.aead_decrypt_into
x25519 = default.x25519
x25519_base = default.x25519_base
ed25519_public_key = default.ed25519_public_key
ed25519_sign = default.ed25519_sign
ed25519_verify = default.ed25519_verify
