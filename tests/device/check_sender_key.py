# Sender Keys (docs/protocol.md §7) on MicroPython and CPython.
#   check_sender_key.py vectors <file>      every record of docs/vectors/sender_key.txt; prints
#                                           "ok sender_key vectors=<n>"
#   check_sender_key.py last-iteration <dir>  the iteration counter at 0xFFFFFFFF and stored
#                                           chains of the wrong size; prints "ok sender_key last-iteration"
from checks import raises_in
import struct
import sys

from e2ee import crypto

crypto.default.resolve()
from e2ee.protocol import chain_key, sender_key  # noqa: E402
from e2ee.protocol.envelope import _len_size, _put_bytes, _put_uint, _uint_size  # noqa: E402
from e2ee.protocol.sender_key import Malformed, SenderChain, SenderKeyError  # noqa: E402

raises = raises_in(SenderKeyError)
LAST = 0xFFFFFFFF


# --- known answers (docs/vectors/sender_key.txt) ---

def _expect(got, want, what):
    if bytes(got) != want:
        raise AssertionError("%s differs" % what)


def _sender(rec, own):
    name = rec["id"][7:]  # "sender-a"
    it = struct.unpack(">I", rec["iteration"])[0]
    key_id = struct.unpack(">I", rec["key_id"])[0]
    _expect(crypto.ed25519_public_key(rec["signing_seed"]), rec["signing_pub"], "signing_pub")
    own[name] = [SenderChain(key_id, it, rec["chain_key"], rec["signing_pub"], rec["signing_seed"]),
                 rec["group"], rec["sender"]]


def _send(rec, own):
    chain, group, sender = own[rec["id"][5:]]
    it = struct.unpack(">I", rec["iteration"])[0]
    while chain.iteration < it:  # iterations the file does not publish
        chain.encrypt(group, sender, b"")
    _expect(chain_key.advance(rec["ck"])[1], rec["mk"], "mk")
    _expect(sender_key._ad(group, sender, chain.key_id, it), rec["ad"], "ad")
    _expect(chain.encrypt(group, sender, rec["pt"]), rec["wire"], "wire of send %d" % it)
    # the same from the record alone: a chain at that iteration with that chain key
    alone = SenderChain(chain.key_id, it, rec["ck"], chain.signing_pub, chain._seed)
    _expect(alone.encrypt(group, sender, rec["pt"]), rec["wire"], "wire from ck")


def _install(rec, own, peers):
    name = rec["id"][8:]  # "install-ra": receiver ra of sender a
    chain, group, sender = own[name[1:]]
    _expect(chain.distribution(group), rec["distribution"], "distribution " + name)
    peers[name] = [SenderChain.from_distribution(rec["distribution"], group), group, sender]


def _recv(rec, peers):
    error, _, what = rec["id"].rpartition("/")
    chain, group, sender = peers[what.split("-")[1]]
    sender = rec.get("sender", sender)
    if rec["result"] == "valid":
        _expect(chain.decrypt(group, sender, rec["wire"]), rec["pt"], rec["id"])
        return
    before = chain.to_bytes()
    raises(getattr(sender_key, error), chain.decrypt, group, sender, rec["wire"])
    _expect(chain.to_bytes(), before, "state after " + rec["id"])


def vectors(path):
    import vectorfile

    own, peers, group, n = {}, {}, None, 0
    for rec in vectorfile.records(path):
        n += 1
        kind = rec["id"]
        if kind == "kdf_ck":
            next_ck, mk = chain_key.advance(rec["ck"])
            _expect(next_ck, rec["next_ck"], "next_ck")
            _expect(mk, rec["mk"], "mk")
        elif kind == "message_key":
            key, nonce = chain_key.expand(rec["mk"], sender_key.MESSAGE_INFO)
            _expect(key, rec["key"], "key")
            _expect(nonce, rec["nonce"], "nonce")
        elif kind.startswith("sender-"):
            _sender(rec, own)
            group = group or rec["group"]
        elif kind.startswith("send-"):
            _send(rec, own)
        elif kind.startswith("install-"):
            _install(rec, own, peers)
        elif "recv-" in kind:
            _recv(rec, peers)
        elif kind.startswith("state-"):
            name = kind[6:]
            chain = (own[name] if name in own else peers[name])[0]
            _expect(chain.to_bytes(), rec["state"], kind)
            _expect(SenderChain.from_bytes(rec["state"]).to_bytes(), rec["state"], kind + " round trip")
        elif "/distribution-" in kind:
            raises(getattr(sender_key, kind.split("/")[0]), SenderChain.from_distribution,
                   rec["distribution"], group)
        elif "/state-" in kind:
            raises(getattr(sender_key, kind.split("/")[0]), SenderChain.from_bytes, rec["state"])
        else:
            raise AssertionError("unknown record " + kind)
    print("ok sender_key vectors=%d" % n)


# --- the last iteration (0xFFFFFFFF) and stored chains of the wrong size ---

# A SenderKeyMessage at `iteration` with a ciphertext that opens with the chain key `ck` of that
# iteration, signed by the chain's owner: only the iteration is wrong.
def _signed_message(seed, pub, key_id, iteration, ck, group, sender):
    key, nonce = chain_key.expand(chain_key.advance(ck)[1], sender_key.MESSAGE_INFO)
    sealed = crypto.aead_encrypt(key, nonce, b"wrap", sender_key._ad(group, sender, key_id, iteration))
    return _sign(seed, pub, key_id, iteration, sealed)


def _sign(seed, pub, key_id, iteration, sealed):
    msg = bytearray(_uint_size(key_id) + _uint_size(iteration) + _len_size(len(sealed)))
    _put_bytes(msg, _put_uint(msg, _put_uint(msg, 0, 1, key_id), 2, iteration), 3, sealed)
    sig = crypto.ed25519_sign(seed, sender_key.SIGN_LABEL + msg, pub)
    out = bytearray(_len_size(len(msg)) + _len_size(64))
    _put_bytes(out, _put_bytes(out, 0, 1, msg), 2, sig)
    return bytes(out)


def _distribution(key_id, iteration, ck, pub, group):
    g = group.encode()
    out = bytearray(2 + _len_size(len(g)) + _uint_size(key_id) + _uint_size(iteration) + 2 * _len_size(32))
    pos = _put_bytes(out, _put_uint(out, 0, 1, 1), 2, g)
    pos = _put_bytes(out, _put_uint(out, _put_uint(out, pos, 3, key_id), 4, iteration), 5, ck)
    _put_bytes(out, pos, 6, pub)
    return bytes(out)


def last_iteration(directory):
    from e2ee.protocol.group import GroupSessions

    group, sender, key_id = "line-3", "pump-2", 0x01020304
    seed, ck = bytes(range(32)), bytes(range(32, 64))
    pub = crypto.ed25519_public_key(seed)
    own = SenderChain(key_id, LAST - 1, ck, pub, seed)
    dist = own.distribution(group)
    fresh, peer = SenderChain.from_distribution(dist, group), SenderChain.from_distribution(dist, group)
    # the last message a chain sends is iteration 0xFFFFFFFE; the chain is then exhausted
    assert peer.decrypt(group, sender, own.encrypt(group, sender, b"last")) == b"last"
    assert own.iteration == LAST and peer.iteration == LAST
    raises(SenderKeyError, own.encrypt, group, sender, b"one more")
    raises(SenderKeyError, own.distribution, group)
    for chain in (own, peer):
        assert SenderChain.from_bytes(chain.to_bytes()).to_bytes() == chain.to_bytes()
    # a message at iteration 0xFFFFFFFF, correctly signed and encrypted: Malformed, nothing changes
    wrap = _signed_message(seed, pub, key_id, LAST, chain_key.advance(ck)[0], group, sender)
    for chain in (peer, fresh):
        before = chain.to_bytes()
        raises(Malformed, chain.decrypt, group, sender, wrap)
        assert chain.to_bytes() == before
    # ciphertexts of 16..4112 bytes and 64-byte signatures only (the longest is not in the vector
    # file: its 8 KB line does not fit the heap beside the SDK)
    big = SenderChain(key_id, 0, ck, pub, seed)
    reader = SenderChain.from_distribution(big.distribution(group), group)
    assert reader.decrypt(group, sender, big.encrypt(group, sender, bytes(4096))) == bytes(4096)
    raises(Malformed, big.encrypt, group, sender, bytes(4097))
    raises(Malformed, reader.decrypt, group, sender, _sign(seed, pub, key_id, 1, bytes(4113)))
    raises(Malformed, reader.decrypt, group, sender, _sign(seed, pub, key_id, 1, bytes(15)))
    assert reader.iteration == 1
    # a distribution at iteration 0xFFFFFFFF: Malformed
    exhausted = _distribution(key_id, LAST, ck, pub, group)
    assert _distribution(key_id, LAST - 1, ck, pub, group) == dist  # the helper writes the codec's bytes
    raises(Malformed, SenderChain.from_distribution, exhausted, group)
    # the same through GroupSessions on flash: refused, the stored records stay as they were
    groups = GroupSessions(directory, bytes(32), "pump-1")
    groups.set_members(group, [sender, "pump-3"])
    groups.add_member(group, sender, dist)
    store = groups._store

    def records():
        return [(n, store.get(n)) for n in sorted(store.names())]

    before = records()
    raises(Malformed, groups.add_member, group, "pump-3", exhausted)
    raises(Malformed, groups.decrypt, group, sender, wrap)
    assert records() == before and not groups.has_member(group, "pump-3")
    last = _signed_message(seed, pub, key_id, LAST - 1, ck, group, sender)
    assert groups.decrypt(group, sender, last) == b"wrap"
    before = records()  # the member's chain is now at 0xFFFFFFFF
    raises(Malformed, groups.decrypt, group, sender, wrap)
    assert records() == before
    # stored chains: every other length, flags or count is Malformed
    own = SenderChain(key_id, 5, ck, pub, seed, [(1, bytes(32)), (3, bytes(range(32)))])
    record = own.to_bytes()
    assert len(record) == 75 + 32 + 2 * 36
    for cut in range(len(record)):
        raises(Malformed, SenderChain.from_bytes, record[:cut])
    raises(Malformed, SenderChain.from_bytes, record + b"\x00")
    for pos, value in ((0, 0x50), (1, 2), (10, 3), (10, 1), (10, 17)):
        bad = bytearray(record)
        bad[pos] = value
        raises(Malformed, SenderChain.from_bytes, bytes(bad))
    peer_record = SenderChain(key_id, 5, ck, pub).to_bytes()
    raises(Malformed, SenderChain.from_bytes, peer_record[:1] + b"\x01" + peer_record[2:])  # own without seed
    full = SenderChain(key_id, 40, ck, pub, None, [(i, bytes(32)) for i in range(16)]).to_bytes()
    assert SenderChain.from_bytes(full).to_bytes() == full
    bad = bytearray(full + bytes(36))
    bad[10] = 17
    raises(Malformed, SenderChain.from_bytes, bytes(bad))  # more skipped keys than MAX_STORED
    print("ok sender_key last-iteration")


if sys.argv[1] == "vectors":
    vectors(sys.argv[2])
elif sys.argv[1] == "last-iteration":
    last_iteration(sys.argv[2])
else:
    raise SystemExit("usage: check_sender_key.py vectors <file> | last-iteration <dir>")
