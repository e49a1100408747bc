"""A host client's install: one directory holding its storage key (mode 0600) and its encrypted
record stores (keys/, sessions/, config/: the same layout a board keeps, docs/boards.md), so the
`e2ee client` commands, backups and the SDK all find the identity in one place.

    inst = HostInstall.init(dir, url, "gw-1", "plant-north", claim_token)   # keys made here, enrolled
    inst = HostInstall.open(dir)
    inst.client        # DeviceClient: signed requests to the service
    inst.sessions      # SessionManager: X3DH + Double Ratchet with peers
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from e2ee.protocol.keys import KeyStore
from e2ee.protocol.session import SessionManager
from e2ee.protocol.store import NotFound, RecordStore
from e2ee_host.client import DeviceClient

__all__ = ["HostInstall", "InstallError"]

KEY_FILE = "storage.key"
_SETTINGS = "settings"


class InstallError(RuntimeError):
    pass


def _write_key(path: Path) -> bytes:
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


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
        self.sessions = SessionManager(str(directory), storage_key, keystore)
        self.client = DeviceClient(settings["url"], settings["device_id"], settings["fleet"], keystore)
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
        """Writes the key store and the settings (published prekeys included)."""
        self.sessions.save_keys()
        self.settings["uploaded_opks"] = sorted(self.client.uploaded_opk_ids)
        self.settings["last_timestamp"] = self.client.last_timestamp
        self._config().put(_SETTINGS, json.dumps(self.settings).encode())

    @classmethod
    def init(cls, directory: str | os.PathLike[str], url: str, device_id: str, fleet: str, token: str,
             one_time: int = 20, trusted_keys: list[bytes] | None = None) -> HostInstall:
        """A new identity made here, enrolled with the claim, its prekeys published."""
        root = Path(directory)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (root / KEY_FILE).exists():
            raise InstallError("%s already holds an install" % root)
        key = _write_key(root / KEY_FILE)
        inst = cls(root, key, {"url": url, "device_id": device_id, "fleet": fleet}, KeyStore.generate(one_time))
        enrolled = inst.client.enroll(token, trusted_keys=trusted_keys)
        inst.settings.update(ca_keys=[k.hex() for k in (trusted_keys or enrolled.ca_keys)],
                             serial=enrolled.cert.serial.hex(), owner="")
        inst.save()
        inst.client.upload_prekeys()
        inst.save()
        return inst

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> HostInstall:
        root = Path(directory)
        key = _read_key(root / KEY_FILE)
        try:
            settings = json.loads(RecordStore(str(root / "config"), "config", key).get(_SETTINGS))
            keystore = SessionManager.open(str(root), key).keystore
        except NotFound:
            raise InstallError("%s has no enrolled identity" % root) from None
        return cls(root, key, settings, keystore)

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
