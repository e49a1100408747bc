"""A host client's install: one directory holding its storage key (mode 0600) and its encrypted
record stores (keys/, sessions/, config/, trust/: the same layout a board keeps, docs/boards.md),
so the `e2ee client` commands, backups and the SDK all find the identity in one place.

    inst = HostInstall.init(dir, url, "gw-1", "plant-north", claim_token)   # keys made here, enrolled
    inst = HostInstall.open(dir)
    inst.client        # DeviceClient: signed requests to the service
    inst.trust         # TrustStore: pinned Fleet CA keys, own certificate, newest revocation list
    inst.sessions      # SessionManager: X3DH + Double Ratchet with peers, certified (docs/protocol.md)
    inst.link()        # HostLink to the broker with the install's own MQTT credentials
    inst.groups        # GroupSessions: own and members' sender keys per group (groups/, docs/groups.md)

Messaging from the command line (`e2ee client send/receive`) is described in docs/host-client.md.
"""
from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e2ee.protocol import certificate
from e2ee.protocol.delivery import Delivery, Undeliverable
from e2ee.protocol.group import GroupSessions, NotMember
from e2ee.protocol.keys import KeyStore
from e2ee.protocol.sender_key import Duplicate, SenderChain, SenderKeyError, UnknownChain
from e2ee.protocol.session import SessionManager
from e2ee.protocol.store import MAX_RECORD, NotFound, RecordStore
from e2ee.protocol.trust import TrustStore
from e2ee_host.client import ApiError, DeviceClient, Enrolled, NoBroker

if TYPE_CHECKING:
    from e2ee_host.transport import HostLink

__all__ = ["DISTRIBUTION_PREFIX", "MAX_OUTBOX", "HostInstall", "InstallError", "NoBrokerCredentials", "NotGroupMember"]

KEY_FILE = "storage.key"
# Messages kept per peer until its receipt: the offline promise (docs/broker.md), a message a
# minute for a peer away 7 days. Beyond it send() raises OutboxFull: nothing is dropped unseen.
MAX_OUTBOX = 10_080
_SETTINGS = "settings"
_SPOOL = "spool"  # store of envelopes the broker delivered that were not handled yet (not backed up)
_FROM = "-from"
# A spooled group message keeps "\x00g/" + its group where a pairwise one keeps its sender's id
# (device ids are [A-Za-z0-9._-], docs/provisioning.md, so the two never meet).
_GROUP_SPOOL = "\x00g/"
# A pairwise message that carries a sender key distribution (docs/groups.md, "Chains"): these bytes,
# len || group id, then the SenderKeyDistribution. Receivers install it and do not show it; no
# text typed on a command line starts with a NUL byte.
DISTRIBUTION_PREFIX = b"\x00e2ee-skd\x01"


class InstallError(RuntimeError):
    pass


class NoBrokerCredentials(InstallError):
    """The install holds no MQTT credentials, so it cannot reach the broker."""


class NotGroupMember(InstallError):
    """The broker refused the group's topic: the operator has not added this install (or removed it)."""


def _write_key(path: Path) -> bytes:
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def _remove_new(root: Path, made: bool, before: set[str]) -> None:
    """Removes what a failed init() created in `root` (all of it when init made the directory)."""
    import shutil
    if made:
        shutil.rmtree(root, ignore_errors=True)
        return
    for name in set(os.listdir(root)) - before:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _read_key(path: Path) -> bytes:
    if not path.exists():
        raise InstallError("%s is not an e2ee-iot install (no %s)" % (path.parent, KEY_FILE))
    if path.stat().st_mode & 0o077:
        raise InstallError("%s is readable by others: chmod 600 it" % path)
    key = path.read_bytes()
    if len(key) != 32:
        raise InstallError("%s is damaged" % path)
    return key


class HostInstall:
    def __init__(self, directory: Path, storage_key: bytes, settings: dict[str, Any], keystore: KeyStore) -> None:
        self.directory = directory
        self.storage_key = storage_key
        self.settings = settings
        self.trust = TrustStore(str(directory), storage_key)
        self.sessions = SessionManager(str(directory), storage_key, keystore, trust=self.trust)
        self.client = DeviceClient(settings["url"], settings["device_id"], settings["fleet"], keystore)
        self.groups = GroupSessions(str(directory), storage_key, settings["device_id"])
        self.client.uploaded_opk_ids = set(settings.get("uploaded_opks", []))
        # signed writes must carry strictly newer timestamps, also across processes
        self.client.last_timestamp = int(settings.get("last_timestamp", 0))

    def __repr__(self) -> str:
        return "<HostInstall %s at %s>" % (self.settings.get("device_id"), self.directory)

    @property
    def device_id(self) -> str:
        return str(self.settings["device_id"])

    def _config(self) -> RecordStore:
        return RecordStore(str(self.directory / "config"), "config", self.storage_key)

    def save(self) -> None:
        """Writes the key store and the settings (published prekeys and MQTT credentials included)."""
        self.sessions.save_keys()
        self.settings["uploaded_opks"] = sorted(self.client.uploaded_opk_ids)
        self.settings["last_timestamp"] = self.client.last_timestamp
        self._config().put(_SETTINGS, json.dumps(self.settings).encode())

    @classmethod
    def init(cls, directory: str | os.PathLike[str], url: str, device_id: str, fleet: str, token: str,
             one_time: int = 20, trusted_keys: list[bytes] | None = None, require_broker: bool = True) -> HostInstall:
        """A new identity made here, enrolled with the claim, its prekeys published. The trust
        store pins the CA keys (`trusted_keys`, default the ones the enrollment answer carries)
        and keeps the certificate and the revocation list; the settings keep the broker
        credentials the service issued. A service that gives none is refused before the claim
        is used (NoBrokerCredentials; require_broker=False accepts it: an install for the relay
        or linking only). Whatever fails, nothing is left behind in `directory`."""
        root = Path(directory)
        if (root / KEY_FILE).exists():
            raise InstallError("%s already holds an install" % root)
        made = not root.exists()
        before = set() if made else set(os.listdir(root))
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            key = _write_key(root / KEY_FILE)
            inst = cls(root, key, {"url": url, "device_id": device_id, "fleet": fleet}, KeyStore.generate(one_time))
            try:
                enrolled = inst.client.enroll(token, trusted_keys=trusted_keys, require_broker=require_broker)
            except NoBroker as e:
                raise NoBrokerCredentials(
                    "%s: nothing was created and the claim is still unused. Point --url at a service that drives "
                    "a broker: `e2ee dev up` starts a development broker and service wired together "
                    "(docs/host-client.md), production settings are in docs/provisioning.md" % e) from None
            pinned = list(trusted_keys or enrolled.ca_keys)
            inst.trust.set_ca_keys(pinned)
            inst.settings.update(ca_keys=[k.hex() for k in pinned], owner="")
            inst._store_enrollment(enrolled)
            inst.client.upload_prekeys()
            inst.save()
        except BaseException:
            _remove_new(root, made, before)
            raise
        return inst

    def renew(self, token: str) -> Enrolled:
        """Re-enrolls this identity (same keys) with a new claim: a new certificate and new MQTT
        credentials from the service, verified with the pinned CA keys. What an install without
        stored MQTT credentials needs (NoBrokerCredentials says so)."""
        enrolled = self.client.enroll(token, trusted_keys=self.trusted_keys())
        self._store_enrollment(enrolled)
        return enrolled

    def _store_enrollment(self, enrolled: Enrolled) -> None:
        try:
            self.trust.update_revocation_list(enrolled.revocation_list)
        except certificate.RolledBack:
            pass  # the stored list is as new or newer
        self.trust.set_certificate(enrolled.certificate, int(time.time()), self._identity())
        # a service that drives no broker (any more) leaves the credentials the install has
        mqtt = enrolled.mqtt or self.settings.get("mqtt")
        self.settings.update(serial=enrolled.cert.serial.hex(), mqtt=mqtt)
        self.save()

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> HostInstall:
        root = Path(directory)
        key = _read_key(root / KEY_FILE)
        try:
            settings = json.loads(RecordStore(str(root / "config"), "config", key).get(_SETTINGS))
            keystore = SessionManager.open(str(root), key).keystore
        except NotFound:
            raise InstallError("%s has no enrolled identity" % root) from None
        inst = cls(root, key, settings, keystore)
        if not inst.trust.ca_keys():  # an install (or backup) made before installs kept a trust store
            inst.trust.set_ca_keys(inst.trusted_keys())
        return inst

    @classmethod
    def restore(cls, directory: str | os.PathLike[str], archive: bytes) -> HostInstall:
        """A new install from a backup archive (e2ee_host.backup.open_blob), under a new storage key."""
        from e2ee_host.backup import import_state
        root = Path(directory)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (root / KEY_FILE).exists():
            raise InstallError("%s already holds an install: restore into a new directory" % root)
        key = _write_key(root / KEY_FILE)
        import_state(archive, root, key)
        return cls.open(root)

    def trusted_keys(self) -> list[bytes]:
        return [bytes.fromhex(k) for k in self.settings["ca_keys"]]

    def _identity(self) -> tuple[bytes, bytes]:
        return self.client.keystore.ik_pub, self.client.keystore.is_pub

    # --- certified sessions (docs/protocol.md, "Certified sessions") ---

    def refresh_revocation_list(self) -> int:
        """Fetches the service's signed revocation list, verifies it with the pinned CA keys and
        stores it when it is newer than the stored one (an older one is ignored: no rollback).
        Returns the stored version. Raises ApiError (status 0 when the service is unreachable)
        or a certificate.CertificateError when the list does not verify."""
        info = self.client.revocation_list(self.trust.ca_keys(), 0)
        if info.crl.version > self.trust.version:
            self.trust.update_revocation_list(info.data)
        return int(self.trust.version)

    def ensure_certificate(self) -> None:
        """Makes sure the trust store holds this install's certificate (PreKeyMessages carry it);
        an install from before trust stores fetches its newest one from the service."""
        if self.trust.certificate is None:
            ident = self.client.signed("GET", "/identities/%s" % self.device_id)
            data = base64.b64decode(ident["certificate"])
            self.trust.set_certificate(data, int(time.time()), self._identity())

    def needs_session(self, peer: str) -> bool:
        """True when there is no session with `peer`, or only one started without a certificate."""
        return not self.sessions.has_session(peer) or self.sessions.peer_certificate(peer) is None

    def delivery(self, on_status: Any = None) -> Delivery:
        """This install's end-to-end delivery (docs/protocol.md §8): its outbox (at most
        MAX_OUTBOX messages per peer, encrypted at rest under the install), receipts, exactly-once
        by message id, session resets. Sessions it needs start from the service's bundles
        (start_session); a peer the service says is gone or revoked fails its queued messages."""
        return Delivery(self.sessions, str(self.directory), self.storage_key, self.device_id,
                        starter=self._start_for_delivery, on_status=on_status, max_outbox=MAX_OUTBOX,
                        max_peers=1024)

    def _start_for_delivery(self, peer: str) -> None:
        from e2ee.protocol.session import PeerRefused
        try:
            self.ensure_certificate()
            self.start_session(peer)
        except ApiError as e:
            if e.status in (403, 404, 410):  # no such device (in this fleet), revoked
                raise Undeliverable("the service refused %s's bundle: %s" % (peer, e)) from None
            raise
        except (certificate.CertificateError, PeerRefused) as e:
            raise Undeliverable("%s: %s" % (type(e).__name__, e)) from None

    def start_session(self, peer: str) -> None:
        """X3DH with the peer's prekey bundle, its certificate verified against the pinned CA keys
        and the stored revocation list first. Raises ApiError (410: the peer is revoked, 404: no
        such device) or a certificate.CertificateError."""
        bundle = self.client.bundle(peer)
        ident = self.client.signed("GET", "/identities/%s" % peer)
        self.sessions.start(peer, bundle, base64.b64decode(ident["certificate"]), int(time.time()))

    # --- the broker ---

    def broker_credentials(self) -> dict[str, Any]:
        """The MQTT credentials issued at enrollment; NoBrokerCredentials when there are none."""
        mqtt = self.settings.get("mqtt")
        if not mqtt or not mqtt.get("password"):
            raise NoBrokerCredentials(
                "%s has no MQTT credentials (made before installs kept them, restored from such a backup, or "
                "enrolled by a service that drives no broker): re-enroll it with a new claim from the "
                "operator: e2ee client renew --dir %s --claim TOKEN" % (self.directory, self.directory))
        return dict(mqtt)

    def broker_address(self, broker: str | None = None) -> tuple[str, int]:
        """(host, port) of the broker: `broker` ("HOST:PORT") when given, else the address the
        service gave with the credentials. NoBrokerCredentials / InstallError when there is none."""
        mqtt = self.broker_credentials()
        host, port = str(mqtt.get("host") or ""), int(mqtt.get("port") or 0)
        if broker:
            host, _, given = broker.rpartition(":")
            if not host or not given.isdigit():
                raise InstallError("--broker must be HOST:PORT, got %r" % broker)
            port = int(given)
        if not host or not port:
            raise InstallError("the service gave no broker address: pass --broker HOST:PORT")
        return host, port

    def link(self, broker: str | None = None, timeout: float = 10.0, tls_ca: str | None = None) -> HostLink:
        """A HostLink (not connected yet) with this install's credentials and persistent session
        (client id = device id), to broker_address(broker); over TLS trusting `tls_ca` when given."""
        from e2ee_host.transport import HostLink
        host, port = self.broker_address(broker)
        password = self.broker_credentials()["password"]
        return HostLink(host, port, self.settings["fleet"], self.device_id, password, timeout=timeout,
                        tls_ca=tls_ca or None)

    def open_mailbox(self, link: HostLink, timeout: float = 30.0) -> int:
        """Makes sure the broker keeps this install's inbox while it is offline: on the connected
        `link` (persistent session) it sends itself an empty probe and waits for it, which proves
        the subscription is in place. Messages that arrive meanwhile are spooled (handled by the
        next receive), not lost. Returns how many were spooled; TransportError on timeout."""
        link.send(self.device_id, b"")
        deadline = time.monotonic() + timeout
        others: list[tuple[str, bytes]] = []
        try:
            while True:
                sender, envelope = link.receive(timeout=max(0.0, deadline - time.monotonic()))
                if self.is_probe(sender, envelope):
                    return len(others)
                others.append((sender, bytes(envelope)))
        finally:
            self.spool(others)

    def spool_rest(self, link: HostLink) -> list[tuple[str, bytes]]:
        """After link.close(): spools what the link received but nobody took (the broker counts
        it delivered), pairwise and group messages. Returns the messages too large to keep, as
        spool() does."""
        from e2ee_host.transport import TransportError
        rest = []
        while True:
            try:
                sender, envelope = link.receive(timeout=0.05)
            except TransportError:
                break
            rest.append((sender, bytes(envelope)))
        while not link.group_messages.empty():
            group, wire = link.group_messages.get_nowait()
            rest.append((self.group_spool_sender(group), bytes(wire)))
        return self.spool(rest)

    @staticmethod
    def group_spool_sender(group: str) -> str:
        """What the spool keeps as the sender of a message of `group` (see spooled_group)."""
        return _GROUP_SPOOL + group

    @staticmethod
    def spooled_group(sender: str) -> str | None:
        """The group of a spooled group message (its sender as group_spool_sender made it), else None."""
        return sender[len(_GROUP_SPOOL):] if sender.startswith(_GROUP_SPOOL) else None

    def is_probe(self, sender: str, envelope: bytes) -> bool:
        """The empty message open_mailbox() sends itself (skipped by receivers)."""
        return sender == self.device_id and not len(envelope)

    # --- groups (docs/groups.md): sender keys in groups/, what is known of each group in the settings ---

    def _group(self, group: str) -> dict[str, list[str]]:
        state: dict[str, list[str]] = self.settings.setdefault("groups", {}).setdefault(group, {})
        for key in ("members", "distributed", "senders"):
            state.setdefault(key, [])
        return state

    def known_groups(self) -> list[str]:
        """The groups this install joined, sent to, or received a sender key for."""
        return sorted(self.settings.get("groups", {}))

    def remember_group(self, group: str) -> None:
        self._group(group)

    def group_members(self, group: str) -> list[str]:
        """The members this install distributes its sender key to (as last given to set_group_members)."""
        return list(self._group(group)["members"])

    def set_group_members(self, group: str, members: list[str]) -> list[str]:
        """Sets the other members of `group` and returns those that still need this install's
        current sender key. The first time, and whenever a member left, a **new** own chain is
        made (docs/groups.md, "Membership": what follows is unreadable with the old one) and the
        chains of members who left are deleted; a member who joined gets the current one."""
        state = self._group(group)
        others = sorted(set(members) - {self.device_id})
        left = set(state["members"]) - set(others)
        for member in left:
            self.groups.remove_member(group, member)
        self.groups.set_members(group, others)  # only they may hand this install a sender key
        state["senders"] = [s for s in state["senders"] if s not in left]
        try:
            self.groups.distribution(group)
            rotate = bool(left)
        except NotMember:
            rotate = True
        if rotate:
            self.groups.create(group)
            state["distributed"] = []
        state["members"] = others
        return [m for m in others if m not in state["distributed"]]

    def distribution_message(self, group: str) -> bytes:
        """The pairwise plaintext that carries this install's current sender key for `group`."""
        name = group.encode()
        return DISTRIBUTION_PREFIX + bytes((len(name),)) + name + self.groups.distribution(group)

    def distributed(self, group: str, member: str) -> None:
        """`member` has this install's current sender key (it was sent in their pairwise session)."""
        state = self._group(group)
        if member not in state["distributed"]:
            state["distributed"].append(member)

    def accept_distribution(self, sender: str, plaintext: bytes) -> str | None:
        """When the decrypted pairwise `plaintext` from `sender` is a sender key distribution,
        installs it as `sender`'s chain and returns its group (None for any other message).
        Raises sender_key.Malformed when it is damaged or names another group, group.NotMember
        when `sender` is not a current member of that group (set_group_members; nothing stored)."""
        if not plaintext.startswith(DISTRIBUTION_PREFIX):
            return None
        from e2ee.protocol.sender_key import Malformed
        rest = plaintext[len(DISTRIBUTION_PREFIX):]
        if not rest or len(rest) < 1 + rest[0]:
            raise Malformed("sender key distribution of %d bytes is truncated" % len(plaintext))
        try:
            group = rest[1:1 + rest[0]].decode()
        except UnicodeDecodeError:
            raise Malformed("sender key distribution names no valid group") from None
        self.groups.add_member(group, sender, rest[1 + rest[0]:])
        state = self._group(group)
        if sender not in state["senders"]:
            state["senders"].append(sender)
        return group

    def decrypt_group(self, group: str, wire: bytes) -> tuple[str, bytes] | None:
        """(sender, plaintext) of a group message; None for this install's own message (the
        broker sends it back). The sender is the member whose chain has the message's key id.
        Raises the sender_key errors (UnknownChain: no distribution from its sender arrived;
        BadSignature, Duplicate, TooFarAhead, Malformed); a refusal changes nothing stored."""
        refused: SenderKeyError | None = None
        for sender in self._group(group)["senders"]:
            try:
                return sender, bytes(self.groups.decrypt(group, sender, wire))
            except UnknownChain:
                continue
            except SenderKeyError as e:  # a key id that matched by chance: the others may hold it
                refused = refused or e
        if refused is not None:
            raise refused
        try:  # a public copy of the own chain verifies the signature of what this install sent
            SenderChain.from_distribution(self.groups.distribution(group), group).decrypt(group, self.device_id, wire)
        except (NotMember, UnknownChain):
            pass
        except Duplicate:
            return None
        raise UnknownChain("no sender key in group %s opens the message (its sender's distribution has not "
                           "arrived)" % group)

    # --- the spool: delivered (and acknowledged) but not yet handled envelopes ---

    def _spool(self) -> RecordStore:
        return RecordStore(str(self.directory / _SPOOL), _SPOOL, self.storage_key)

    def spool(self, messages: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """Keeps (sender, envelope) pairs the broker delivered but nobody handled, in arrival
        order, encrypted at rest. Returns the ones too large to keep (no valid envelope is)."""
        store = self._spool()
        seq = max([int(n) for n in store.names() if n.isdigit()] or [0])
        refused = []
        for sender, envelope in messages:
            if len(envelope) > MAX_RECORD:
                refused.append((sender, envelope))
                continue
            seq += 1
            store.put("%010d" % seq, envelope)
            store.put("%010d%s" % (seq, _FROM), sender.encode())  # written last: the entry's commit
        return refused

    def spooled(self) -> list[tuple[int, str, bytes]]:
        """The spooled (seq, sender, envelope) entries, oldest first."""
        store = self._spool()
        names = set(store.names())
        out = []
        for name in sorted(names):
            if not name.isdigit():
                continue
            if name + _FROM not in names:  # a write cut short before its commit record
                store.delete(name)
                continue
            out.append((int(name), bytes(store.get(name + _FROM)).decode(), bytes(store.get(name))))
        return out

    def unspool(self, seq: int) -> None:
        store = self._spool()
        store.delete("%010d%s" % (seq, _FROM))
        store.delete("%010d" % seq)
