# The fuzz targets on a board's runtime (tests/fuzz/test_fuzz_device.py, scripts/fuzz): every
# network decoder of the device SDK fed mutations of valid messages from a seeded generator, on
# MicroPython (and CPython). Run from the repository root:
#
#   fuzz_decoders.py CASES SEED ROUNDS
#
# CASES (written by the test): seeds.txt, one valid input per line (vectorfile format, `id` names
# the target), ca-keys.bin, and the device directories trust/, group/, pump-fresh/, gw-pending/,
# pump-after/. Each round mutates one seed (bit flips, byte changes, truncations, deletions,
# insertions, extensions, splices, key windows; one round in 16 keeps it as it is) and hands it
# to its decoder. Allowed outcomes:
# success or the module's typed errors; a refused input must leave the directory it was read
# against byte for byte unchanged. Anything else prints FAIL with the target, round and input
# (hex) and raises, so the test fails with the traceback. Prints how many inputs each target
# accepted, then "ok fuzz ROUNDS".
import gc
import hashlib
from binascii import hexlify
import os
import sys

import vectorfile
from checks import Stream
from e2ee.protocol import certificate, envelope, linking, session
from e2ee.protocol.group import GroupSessions
from e2ee.protocol.keys import KeyFormatError, PrekeyBundle
from e2ee.protocol.sender_key import SenderChain, SenderKeyError
from e2ee.protocol.session import SessionManager
from e2ee.protocol.trust import TrustStore
from e2ee.transport import mqtt, topics
from e2ee.transport.service import BundleStarter, Service

KEY = bytes(range(32))
NOW = 1800000000
GROUP = "line-3"
_B32 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_EDGE = b"\x00\x01\x02\x07\x08\x0a\x10\x12\x1a\x20\x22\x7f\x80\x81\xff"


# xorshift32, seeded: the same rounds on every runtime for one seed.
class Rng:
    def __init__(self, seed):
        self.s = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1

    def next(self):
        x = self.s
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.s = x
        return x

    def below(self, n):
        return self.next() % n if n > 0 else 0

    def bytes(self, n):
        return bytes([self.next() & 0xFF for _ in range(n)])


# One to four edits of `data` (the same kinds as tests/fuzz/fuzzing.py mutated()).
def mutate(rng, data, keys):
    data = bytearray(data)
    for _ in range(1 + rng.below(4)):
        size = len(data)
        op = rng.below(9)
        at = rng.below(size)
        if op == 0 and size:
            data[at] ^= 1 << rng.below(8)
        elif op == 1 and size:
            data[at] = _EDGE[rng.below(len(_EDGE))] if rng.below(2) else rng.below(256)
        elif op == 2:
            data = data[:rng.below(size + 1)]
        elif op == 3 and size:
            data = data[:at] + data[at + 1 + rng.below(64):]
        elif op == 4:
            data = data[:at] + rng.bytes(1 + rng.below(24)) + data[at:]
        elif op == 5:
            data += rng.bytes(1 + rng.below(40))
        elif op == 6 and size:
            piece = data[at:at + 1 + rng.below(80)]
            to = rng.below(size + 1)
            data = data[:to] + piece + data[to:]
        elif op == 7 and size >= 32 and keys:
            start = (0, size - 32, rng.below(size - 31))[rng.below(3)]  # keys often end a message
            data[start:start + 32] = keys[rng.below(len(keys))]
        elif op == 8 and size:
            data[at] = (0x80, 0xFF, 0x7F, 0x00)[rng.below(4)]
    return bytes(data)


def _tree(path, out):
    for name in sorted(os.listdir(path)):
        full = path + "/" + name
        if os.stat(full)[0] & 0x4000:
            _tree(full, out)
        else:
            with open(full, "rb") as f:
                out.append((full, hashlib.sha256(f.read()).digest()))
    return out


# (path, SHA-256) of every file under `path`: records are re-encrypted on every write.
def snapshot(path):
    return _tree(path, [])


# A refused input: the directory must not have changed.
def unchanged(path, before, what):
    if snapshot(path) != before:
        raise AssertionError("%s: a refused input changed %s" % (what, path))


# A link payload around raw bytes (RFC 4648 base32, no padding), built in one bytearray.
def b32(data):
    out = bytearray(linking.PREFIX.encode())
    acc = bits = 0
    for byte in data:
        acc = (acc << 8 | byte) & 0xFFFF
        bits += 8
        while bits >= 5:
            bits -= 5
            out.append(_B32[(acc >> bits) & 31])
    if bits:
        out.append(_B32[(acc << (5 - bits)) & 31])
    return out.decode()


class Targets:
    def __init__(self, cases):
        self.cases = cases
        with open(cases + "/ca-keys.bin", "rb") as f:
            raw = f.read()
        self.ca_keys = [raw[i:i + 32] for i in range(0, len(raw), 32)]
        self.trust = TrustStore(cases + "/trust", KEY)
        self.groups = GroupSessions(cases + "/group", KEY, "pump-1")
        self.svc = Service.for_device("plant-north", "pump-7", None)
        self.starter = BundleStarter(self.svc, lambda peer, bundle, cert: PrekeyBundle.from_bytes(bundle))

    # Each target returns True when the input was accepted, False when it was refused.
    def envelope(self, data):
        try:
            record = envelope.decode(data)
        except envelope.DecodeError:
            return False
        if envelope.decode(envelope.encode(record)) != record:
            raise AssertionError("envelope: a decoded record does not survive a round trip")
        return True

    def certificate(self, data):
        try:
            certificate.decode_certificate_unverified(data)
            certificate.verify_certificate(data, self.ca_keys, NOW, None)
            return True
        except certificate.CertificateError:
            return False

    def crl(self, data):
        path = self.cases + "/trust"
        before, version = snapshot(path), self.trust.version
        try:
            self.trust.update_revocation_list(data)
            return True
        except certificate.CertificateError:
            unchanged(path, before, "crl")
            if self.trust.version != version:
                raise AssertionError("crl: a refused list changed the version")
            return False

    def bundle(self, data):
        try:
            PrekeyBundle.from_bytes(data)
            return True
        except KeyFormatError:
            return False

    def distribution(self, data):
        try:
            SenderChain.from_distribution(data, GROUP)
            return True
        except SenderKeyError:
            return False

    def group(self, data):
        path = self.cases + "/group"
        before = snapshot(path)
        try:
            self.groups.decrypt(GROUP, "pump-2", data)
            return True
        except SenderKeyError:
            unchanged(path, before, "group")
            return False

    def link(self, data):
        try:
            offer = linking.Offer.parse(b32(data))
            linking.Channel.for_primary(offer)
            return True
        except linking.LinkError:
            return False

    def frame(self, data):
        try:
            topics.unframe(data)
            return True
        except topics.BadFrame:
            return False

    # Packets until the stream ends (the broker closing the connection) or one is malformed.
    def mqtt(self, data):
        client = mqtt.MQTTClient("pump-7", "127.0.0.1", 1)
        client._bind(Stream(data))
        client.set_callback(lambda topic, msg: None)
        try:
            for _ in range(len(data) + 1):
                client.wait_msg()
        except mqtt.MQTTException:
            return False
        except OSError as e:
            if e.args[0] != -1:
                raise
        return True

    # An answer of the service channel (e2ee.transport.service) to a bundle request in flight,
    # through the BundleStarter a board's delivery uses: the callback runs (a start or a refusal
    # recorded), nothing raises. Accepted: the answer matched the request and started a session.
    def service(self, data):
        self.starter._refused.clear()
        self.svc._pending["000000000000"] = (lambda status, doc: self.starter._answer("gw-1", status, doc), 0)
        self.svc.handle(self.svc.topic, data)
        return "000000000000" not in self.svc._pending and not self.starter._refused

    # A session manager per round, as a board that reboots between messages (the heap keeps
    # one manager at a time).
    def _session(self, name, peer, data):
        path = self.cases + "/" + name
        manager = SessionManager.open(path, KEY, trust=TrustStore(path, KEY))
        before = snapshot(path)
        try:
            manager.decrypt(peer, data, NOW)
            return True
        except session.MESSAGE_ERRORS:
            unchanged(path, before, name)
            return False

    def prekey(self, data):
        return self._session("pump-fresh", "gw-1", data)

    def answer(self, data):
        return self._session("gw-pending", "pump-7", data)

    def ratchet(self, data):
        return self._session("pump-after", "gw-1", data)


def main(cases, seed, rounds):
    targets = Targets(cases)
    seeds = {}
    keys = []
    for rec in vectorfile.records(cases + "/seeds.txt"):
        if rec["id"] == "key":
            keys.append(rec["data"])
        else:
            seeds.setdefault(rec["id"], []).append(rec["data"])
    names = sorted(seeds)
    rng = Rng(seed)
    gc.collect()
    free = gc.mem_free() if hasattr(gc, "mem_free") else 0
    print("fuzz seed %d rounds %d free %d targets %s" % (seed, rounds, free, ",".join(names)))
    accepted = {}
    for i in range(rounds):
        name = names[i % len(names)]
        pool = seeds[name]
        data = pool[rng.below(len(pool))]
        if rng.below(16):  # one round in 16 the seed as it is: the paths of valid input
            data = mutate(rng, data, keys)
        try:
            if getattr(targets, name)(data):
                accepted[name] = accepted.get(name, 0) + 1
        except Exception:
            print("FAIL %s round %d seed %d input %s" % (name, i, seed, hexlify(data).decode()))
            raise
        if i % 16 == 0:
            gc.collect()
    print("accepted " + " ".join(["%s=%d" % (n, accepted.get(n, 0)) for n in names]))
    print("ok fuzz %d" % rounds)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
