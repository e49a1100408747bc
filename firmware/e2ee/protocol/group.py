# Group sessions on flash (docs/protocol.md §7): the device's own sender chain per group and the
# chains of the other members, one encrypted record each (record store, §5), so a group of 20
# costs 20 small records, not one large one in RAM.
#
#   groups = GroupSessions(directory, storage_key, "pump-1")
#   groups.set_members("line-3", ["pump-2", "pump-9"])   # who may hand this device a sender key
#   dist = groups.create("line-3")              # new own chain; send dist to each member pairwise
#   groups.add_member("line-3", "pump-2", dist_from_pump_2)   # NotMember unless pump-2 is a member
#   wire = groups.encrypt("line-3", b"stop")    # once, for every member (the group topic)
#   text = groups.decrypt("line-3", "pump-2", wire)
#   groups.remove_member("line-3", "pump-9"); dist = groups.create("line-3")   # rotate
import hashlib
import json
from binascii import hexlify

from e2ee.protocol.sender_key import SenderChain, SenderKeyError, UnknownChain
from e2ee.protocol.store import NotFound, RecordStore


class NotMember(SenderKeyError):
    pass


# Record names are hashes (names in the store are [a-z0-9_-], at most 32): "o" + 24 hex digits
# for the own chain of a group, "m" + 24 for a member's, "g" + 24 for the group's member list
# (JSON). Backups restore "g" records only, never chain state (docs/backup.md, "Never restored").
def _record(kind, group_id, member=""):
    digest = hashlib.sha256(("%s\x00%s" % (group_id, member)).encode()).digest()
    return kind + hexlify(digest[:12]).decode()


class GroupSessions:
    def __init__(self, directory, storage_key, self_id, rng=None):
        self._store = RecordStore(directory + "/groups", "groups", storage_key)
        self.self_id = self_id
        self._rng = rng

    def __repr__(self):
        return "<GroupSessions %s>" % self.self_id

    # A new own chain for the group (first use, or rotation after a member left); returns the
    # distribution to send to each member over its pairwise session.
    def create(self, group_id):
        chain = SenderChain.generate(self._rng)
        self._store.put(_record("o", group_id), chain.to_bytes())
        return chain.distribution(group_id)

    # The current own distribution (for a member who joins later).
    def distribution(self, group_id):
        return self._own(group_id).distribution(group_id)

    def _own(self, group_id):
        try:
            return SenderChain.from_bytes(self._store.get(_record("o", group_id)))
        except NotFound:
            raise NotMember("no own sender key for group %s: create it first" % group_id)

    # The current members of a group (the application's membership, docs/groups.md
    # "Membership"): only they may install a sender key here. A member no longer listed loses its
    # chain at once. The caller rotates its own chain after a removal (create()).
    def set_members(self, group_id, members):
        current = set(members)
        current.discard(self.self_id)
        for member in self.members(group_id):
            if member not in current:
                self._forget(group_id, member)
        self._store.put(_record("g", group_id), json.dumps(sorted(current)).encode())

    def members(self, group_id):
        try:
            return json.loads(self._store.get(_record("g", group_id)))
        except NotFound:
            return []

    # A member's distribution, received over the pairwise session with `member`; NotMember (and
    # nothing stored) unless `member` is a current member of the group (docs/groups.md "Membership"): a
    # removed member, or any other pairwise peer, cannot install or re-install a chain.
    def add_member(self, group_id, member, distribution):
        if member == self.self_id or member not in self.members(group_id):
            raise NotMember("%s is not a member of group %s" % (member, group_id))
        chain = SenderChain.from_distribution(distribution, group_id)
        self._store.put(_record("m", group_id, member), chain.to_bytes())

    # Removes `member` from the group: its chain and its place in the member list.
    def remove_member(self, group_id, member):
        members = self.members(group_id)
        if member in members:
            members.remove(member)
            self._store.put(_record("g", group_id), json.dumps(members).encode())
        self._forget(group_id, member)

    def _forget(self, group_id, member):
        name = _record("m", group_id, member)
        if name in self._store.names():
            self._store.delete(name)

    def has_member(self, group_id, member):
        return _record("m", group_id, member) in self._store.names()

    # Encrypts once for the whole group; the advanced chain is on flash before the message exists.
    def encrypt(self, group_id, plaintext):
        chain = self._own(group_id)
        wire = chain.encrypt(group_id, self.self_id, plaintext)
        self._store.put(_record("o", group_id), chain.to_bytes())
        return wire

    def decrypt(self, group_id, member, data):
        name = _record("m", group_id, member)
        try:
            chain = SenderChain.from_bytes(self._store.get(name))
        except NotFound:
            raise UnknownChain("no sender key of %s in group %s" % (member, group_id))
        plaintext = chain.decrypt(group_id, member, data)
        self._store.put(name, chain.to_bytes())
        return plaintext
