# One check per vector kind, shared by the CPython tests and the MicroPython runner.
# A check returns None when the record passes, or a short reason (ids and sizes, no key bytes).
from e2ee.crypto.errors import InvalidLength, InvalidSignature, InvalidTag, WeakSharedSecret
from vectorfile import as_int

SKIP = "skip"  # a check's answer for a record it deliberately does not run


def _valid(rec):
    return rec.get("result", "valid") != "invalid"


# RFC 7748 §5.2 / Wycheproof XdhComp. An all-zero expected secret must be refused (§6.1).
# Records with `iterations` are the §5.2 iterated vectors.
def x25519(c, rec):
    if "iterations" in rec:
        return x25519_iter(c, rec)
    if not any(rec["shared"]):
        try:
            c.x25519(rec["scalar"], rec["u"])
        except WeakSharedSecret:
            return None
        return "all-zero shared secret accepted"
    if bytes(c.x25519(rec["scalar"], rec["u"])) != rec["shared"]:
        return "shared secret differs"
    return None


# RFC 7748 §5.2 iterated: k, u <- X25519(k, u), k. The million-iteration record is listed
# but skipped (about 20 minutes even with the C module); bench/ can run it on demand.
MAX_ITERATIONS = 1000


def x25519_iter(c, rec):
    n = as_int(rec["iterations"])
    if n > MAX_ITERATIONS:
        return SKIP
    k = u = b"\x09" + bytes(31)
    for _ in range(n):
        k, u = bytes(c.x25519(k, u)), k
    return None if k == rec["k"] else "iterated result differs"


def x25519_base(c, rec):
    return None if bytes(c.x25519_base(rec["scalar"])) == rec["public"] else "public key differs"


# RFC 8032 §7.1: public key, signature and self-verification from the seed, with the message
# whole and in parts.
def ed25519_sign(c, rec):
    if bytes(c.ed25519_public_key(rec["seed"])) != rec["public"]:
        return "public key differs"
    if bytes(c.ed25519_sign(rec["seed"], rec["msg"])) != rec["sig"]:
        return "signature differs"
    c.ed25519_verify(rec["public"], rec["msg"], rec["sig"])
    c.ed25519_verify(rec["public"], _parts(rec["msg"]), rec["sig"])
    return None


# The message as a tuple of parts (crypto.ed25519_verify hashes them one after the other): an
# empty part, a split in the middle and a memoryview tail.
def _parts(msg):
    mid = len(msg) // 2
    return (b"", msg[:mid], memoryview(msg)[mid:])


def _verifies(c, public, msg, sig):
    try:
        c.ed25519_verify(public, msg, sig)
    except (InvalidSignature, InvalidLength):
        return False
    return True


# Wycheproof EddsaVerify: valid must verify, invalid must raise InvalidSignature; the message in
# parts must get the same answer as the message whole.
def ed25519_verify(c, rec):
    whole = _verifies(c, rec["public"], rec["msg"], rec["sig"])
    if _verifies(c, rec["public"], _parts(rec["msg"]), rec["sig"]) != whole:
        return "message in parts verifies differently"
    if whole != _valid(rec):
        return "valid signature rejected" if _valid(rec) else "invalid signature accepted"
    return None


# RFC 8439 §2.8 / Wycheproof AeadTest: seal must reproduce ct||tag, open must return msg;
# invalid records must be refused with InvalidTag (or InvalidLength for a bad key/nonce size).
def aead(c, rec):
    key, nonce, aad = rec["key"], rec["nonce"], rec["aad"]
    sealed = rec["ct"] + rec["tag"]
    if not _valid(rec):
        try:
            c.aead_decrypt(key, nonce, sealed, aad)
        except (InvalidTag, InvalidLength):
            return None
        return "invalid ciphertext accepted"
    if bytes(c.aead_encrypt(key, nonce, rec["msg"], aad)) != sealed:
        return "ciphertext or tag differs"
    if bytes(c.aead_decrypt(key, nonce, sealed, aad)) != rec["msg"]:
        return "plaintext differs"
    return None


# RFC 8439 §2.4.2 / §A.2: the ChaCha20 stream cipher building block.
def chacha20(c, rec):
    out = bytearray(len(rec["msg"]))
    c.hazmat("chacha20_xor")(rec["key"], rec["nonce"], as_int(rec["counter"]), rec["msg"], out)
    return None if bytes(out) == rec["ct"] else "ciphertext differs"


# RFC 8439 §2.5.2 / §A.3: the Poly1305 one-time authenticator building block.
def poly1305(c, rec):
    out = bytearray(16)
    c.hazmat("poly1305_into")(rec["key"], rec["msg"], out)
    return None if bytes(out) == rec["tag"] else "tag differs"


# RFC 5869 / Wycheproof HkdfTest: lengths over 255*HashLen must raise InvalidLength.
def hkdf(c, rec):
    length = as_int(rec["length"])
    try:
        okm = c.hkdf_sha256(rec["ikm"], rec["salt"], rec["info"], length)
    except InvalidLength:
        return "valid length refused" if _valid(rec) else None
    if not _valid(rec):
        return "invalid length accepted"
    return None if bytes(okm) == rec["okm"] else "okm differs"


# RFC 4231 / Wycheproof MacTest: tags may be truncated; compare the prefix in constant time.
def hmac(c, rec):
    tag = rec["tag"]
    ok = c.ct_equal(c.hmac_sha256(rec["key"], rec["msg"])[: len(tag)], tag)
    if ok == _valid(rec):
        return None
    return "valid tag rejected" if ok is False else "invalid tag accepted"


# FIPS 180-4 / CAVP SHA512ShortMsg, one-shot and incremental in uneven pieces. `repeat`/`count`
# encode long messages (a million 'a'), fed incrementally so they never sit in RAM whole.
def sha512(c, rec):
    msg = rec.get("msg")
    if msg is None:
        hasher = c.sha512_hasher()
        chunk = bytes(rec["repeat"]) * 1000
        count = as_int(rec["count"])
        for _ in range(count // 1000):
            hasher.update(chunk)
        hasher.update(chunk[: count % 1000])
        return None if bytes(hasher.digest()) == rec["md"] else "streamed digest differs"
    if bytes(c.sha512(msg)) != rec["md"]:
        return "digest differs"
    hasher = c.sha512_hasher(msg[:1])
    step = 1
    i = 1
    while i < len(msg):
        hasher.update(memoryview(msg)[i : i + step])
        i += step
        step = step * 3 % 131 + 1
    return None if bytes(hasher.digest()) == rec["md"] else "incremental digest differs"


KINDS = {
    "x25519": x25519,
    "x25519_iter": x25519_iter,
    "x25519_base": x25519_base,
    "ed25519_sign": ed25519_sign,
    "ed25519_verify": ed25519_verify,
    "aead": aead,
    "chacha20": chacha20,
    "poly1305": poly1305,
    "hkdf": hkdf,
    "hmac": hmac,
    "sha512": sha512,
}


# Runs every record of `path` through check `kind`; returns (checked, skipped, failures).
def run(c, kind, path):
    import gc
    import sys

    from vectorfile import records

    # A small heap fragments: collect between records on MicroPython (CPython needs no help).
    collect = gc.collect if sys.implementation.name == "micropython" else lambda: None
    check = KINDS[kind]
    checked = skipped = 0
    failures = []
    for rec in records(path):
        collect()
        try:
            reason = check(c, rec)
        except Exception as e:  # any other exception is a failure of this record
            reason = "raised %s: %s" % (type(e).__name__, e)
        if reason == SKIP:
            skipped += 1
            continue
        checked += 1
        if reason is not None:
            failures.append("%s: %s" % (rec.get("id", checked), reason))
    return checked, skipped, failures
