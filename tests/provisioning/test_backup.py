"""Encrypted backup and restore (e2ee_host.backup, api/routes/backups.py), both engines, against
the service under uvicorn; the S3 blob store against a real S3-compatible server process (moto)."""
from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_support import OPERATOR_KEY, metric

from e2ee.protocol.group import GroupSessions, NotMember
from e2ee.protocol.keys import KeyStore
from e2ee.protocol.session import NoSession, SessionManager
from e2ee.protocol.store import RecordStore
from e2ee_host import backup, cli
from e2ee_host.client import ApiError, DeviceClient, OperatorClient

PASSPHRASE = "correct horse battery staple 7"
MARKER = b"BACKUP-PLAINTEXT-MARKER-3f9"
FAST = backup.KdfParams(8 * 1024, 1, 1)  # tests only: the real default is backup.HOST_PARAMS


class Install:
    """A host client's install: a directory of encrypted record stores and its storage key."""

    def __init__(self, root: Path, url: str, device_id: str, keystore: KeyStore | None = None) -> None:
        self.root = root
        self.storage_key = os.urandom(32)
        self.client = DeviceClient(url, device_id, "plant-north", keystore or KeyStore.generate(5))
        self.sessions: SessionManager | None = None

    def open_sessions(self) -> SessionManager:
        self.sessions = SessionManager(str(self.root), self.storage_key, self.client.keystore)
        self.sessions.save_keys()
        return self.sessions


def _enrolled(tmp_path: Path, url: str, name: str, owner: str = "") -> Install:
    with OperatorClient(url, OPERATOR_KEY) as op:
        token = op.create_claims("plant-north", owner=owner).tokens[0]
    inst = Install(tmp_path / name, url, name)
    inst.client.enroll(token)
    inst.client.upload_prekeys()
    inst.open_sessions()
    return inst


def _converse(a: Install, b: Install, n: int) -> None:
    assert a.sessions and b.sessions
    for i in range(n):
        text = MARKER + b" %d" % i
        assert b.sessions.decrypt(a.client.device_id, a.sessions.encrypt(b.client.device_id, text)) == text
        assert a.sessions.decrypt(b.client.device_id, b.sessions.encrypt(a.client.device_id, text)) == text


def test_backup_restore_on_a_new_install_continues_conversations(live_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a, b = _enrolled(tmp_path, live_server.url, "alice-1"), _enrolled(tmp_path, live_server.url, "bob-1")
    assert a.sessions and b.sessions
    a.sessions.start("bob-1", a.client.bundle("bob-1"))
    _converse(a, b, 3)
    archive = backup.export_state(a.root, a.storage_key)
    blob, auth = backup.seal(archive, PASSPHRASE, FAST)
    a.client.put_backup(blob, auth)

    # no plaintext key material or message text in the blob the service holds
    stored = (live_server.app.state.settings.data_dir / "backups").glob("*.bin")
    [stored_blob] = [p.read_bytes() for p in stored]
    assert stored_blob == blob
    keystore_bytes = a.client.keystore.to_bytes()
    for secret in [keystore_bytes[1:33], keystore_bytes[65:97], a.storage_key, MARKER, PASSPHRASE.encode(), auth]:
        assert secret not in blob and base64.b64encode(secret) not in blob

    # the old install is gone; a new one restores with the passphrase
    shutil.rmtree(a.root)
    service = DeviceClient(live_server.url, "alice-1", "plant-north", KeyStore.generate())  # no identity yet
    params = service.backup_params("alice-1")
    salt = base64.b64decode(params["salt"])
    kdf = backup.KdfParams(params["memory_kib"], params["iterations"], params["lanes"])
    fetched = service.fetch_backup("alice-1", backup.auth_token(salt, kdf, PASSPHRASE, FAST))
    new_root, new_key = tmp_path / "alice-1-new", os.urandom(32)
    count = backup.import_state(backup.open_blob(fetched, PASSPHRASE, FAST), new_root, new_key)
    assert count >= 1
    restored = SessionManager.open(str(new_root), new_key)
    # the same identity, but no session state (docs/backup.md, "Never restored"): a new session
    assert restored.keystore.ik_pub == a.client.keystore.ik_pub and restored.peers() == []
    a2 = Install(new_root, live_server.url, "alice-1", restored.keystore)
    a2.storage_key, a2.sessions = new_key, restored
    restored.start("bob-1", a2.client.bundle("bob-1"))
    _converse(a2, b, 3)  # the conversation goes on, both ways, in the new session
    with pytest.raises(backup.BackupError):  # never restore over an install that has records
        backup.import_state(archive, new_root, new_key)


def test_wrong_passphrase_is_clear_and_attempts_are_limited(live_server, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    a = _enrolled(tmp_path, live_server.url, "alice-2")
    blob, auth = backup.seal(backup.export_state(a.root, a.storage_key), PASSPHRASE, FAST)
    a.client.put_backup(blob, auth)
    with pytest.raises(backup.WrongPassphrase, match="wrong passphrase"):
        backup.open_blob(blob, PASSPHRASE + "x", FAST)
    tampered = bytearray(blob)
    tampered[20] ^= 1  # a header byte (Argon2id parameters): authenticated as associated data
    with pytest.raises(backup.BackupError):
        backup.open_blob(bytes(tampered), PASSPHRASE, FAST)
    settings = live_server.app.state.settings
    salt, kdf = backup.read_params(blob)
    wrong = backup.auth_token(salt, kdf, "not the passphrase", FAST)
    for left in range(settings.backup_fetch_attempts - 1, -1, -1):
        with pytest.raises(ApiError) as e:
            a.client.fetch_backup("alice-2", wrong)
        assert e.value.status == 403 and "%d attempts left" % left in e.value.detail
    with pytest.raises(ApiError) as e:  # locked: even the right token waits for an operator
        a.client.fetch_backup("alice-2", auth)
    assert e.value.status == 423
    text = httpx.get(live_server.url + "/metrics").text  # outcomes counted per fleet, the lock as a gauge
    for result, n in (("wrong_passphrase", settings.backup_fetch_attempts), ("locked", 1), ("ok", 0)):
        assert metric(text, "e2ee_backup_fetches_total", fleet="plant-north", result=result) == n
    assert metric(text, "e2ee_backup_lockouts_total", fleet="plant-north") == 1
    assert metric(text, "e2ee_backups_locked", fleet="plant-north") == 1
    assert metric(text, "e2ee_backup_uploads_total", fleet="plant-north") == 1
    # the operator unlocks it with the CLI (DELETE /backups/{device_id}/lock)
    assert cli.main(["devices", "unlock-backup", "alice-2", "--url", live_server.url, "--api-key", OPERATOR_KEY]) == 0
    assert "backup of alice-2 unlocked" in capsys.readouterr().out
    assert a.client.fetch_backup("alice-2", auth) == blob
    text = httpx.get(live_server.url + "/metrics").text
    assert metric(text, "e2ee_backups_locked", fleet="plant-north") == 0
    assert metric(text, "e2ee_backup_fetches_total", fleet="plant-north", result="ok") == 1


def test_backup_uploads_are_checked(live_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a, b = _enrolled(tmp_path, live_server.url, "alice-3"), _enrolled(tmp_path, live_server.url, "bob-3")
    blob, auth = backup.seal(b"E2EEAR1", PASSPHRASE, FAST)
    with pytest.raises(ApiError) as e:  # not a backup
        a.client.put_backup(b"\x00" * 200, auth)
    assert e.value.status == 422
    with pytest.raises(ApiError) as e:  # another device's backup
        a.client.signed("PUT", "/backups/bob-3", b"\x00" * 32 + blob, "application/octet-stream")
    assert e.value.status == 403
    with pytest.raises(ApiError) as e:  # over the size limit
        a.client.put_backup(blob + b"\x00" * (5 * 1024 * 1024), auth)
    assert e.value.status == 413
    with pytest.raises(ApiError) as e:
        a.client.backup_params("alice-3")
    assert e.value.status == 404
    with pytest.raises(ApiError) as e:  # unsigned
        a.client.call("PUT", "/backups/alice-3", content=blob)
    assert e.value.status == 401
    assert b.client.put_backup(blob, auth)["size"] == len(blob)


def test_registration_lock_guards_the_backed_up_identity(live_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = _enrolled(tmp_path, live_server.url, "alice-4", owner="alice")
    a.client.set_registration_lock("2468-1357")
    with OperatorClient(live_server.url, OPERATOR_KEY) as op:
        token = op.create_claims("plant-north", quota=3, owner="alice").tokens[0]
        strangers = op.create_claims("plant-north", owner="mallory").tokens[0]
    thief = DeviceClient(live_server.url, "alice-4", "plant-north", KeyStore.generate())
    with pytest.raises(ApiError) as e:  # another owner's claim (finding 4)
        thief.enroll(strangers, registration_lock_pin="2468-1357")
    assert e.value.status == 403
    with pytest.raises(ApiError) as e:  # the owner's claim without the PIN
        thief.enroll(token)
    assert e.value.status == 423
    # the owner's restored install re-enrolls with its own keys (a renewal) and with new keys + PIN
    assert a.client.enroll(token).cert.device_id == "alice-4"
    assert thief.enroll(token, registration_lock_pin="2468-1357").cert.device_id == "alice-4"


# --- Finding 3: restoring never reuses message keys or nonces ---------------------------------

class _Local:
    """An install without the service: sessions, groups, and the stores export_state reads."""

    def __init__(self, root: Path, name: str, keystore: KeyStore | None = None, storage_key: bytes | None = None) -> None:
        self.root, self.name = root, name
        self.storage_key = storage_key or os.urandom(32)
        if keystore is None:
            self.sessions = SessionManager.create(str(root), self.storage_key, 3)
        else:
            self.sessions = SessionManager(str(root), self.storage_key, keystore)
        self.groups = GroupSessions(str(root), self.storage_key, name)


def _ciphertexts(wire: bytes) -> bytes:
    return bytes(wire[-40:])  # the last body bytes and the tag: equal only for one key, nonce and plaintext


def test_finding3_restore_never_reuses_message_keys_or_nonces(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a, b = _Local(tmp_path / "a", "alice"), _Local(tmp_path / "b", "bob")
    a.sessions.start("bob", b.sessions.bundle())
    assert b.sessions.decrypt("alice", a.sessions.encrypt("bob", b"hello")) == b"hello"
    b.groups.set_members("line-3", ["alice", "bob"])
    b.groups.add_member("line-3", "alice", a.groups.create("line-3"))
    archive = backup.export_state(a.root, a.storage_key)  # the backup, taken here
    # after the backup the old install sends with the chains it has (the broker saw these)
    seen = [a.sessions.encrypt("bob", MARKER), a.groups.encrypt("line-3", MARKER)]
    assert all(kind != "sessions" for kind, _, _ in backup.records_of(archive))  # nor in the blob
    restored_root, key = tmp_path / "a-restored", os.urandom(32)
    backup.import_state(backup.open_blob(backup.seal(archive, PASSPHRASE, FAST)[0], PASSPHRASE, FAST),
                        restored_root, key)
    a2 = _Local(restored_root, "alice", SessionManager.open(str(restored_root), key).keystore, key)
    assert a2.sessions.keystore.ik_pub == a.sessions.keystore.ik_pub  # the same identity
    # no chain state came back: nothing to send with until new chains exist
    assert a2.sessions.peers() == [] and not a2.groups.has_member("line-3", "bob")
    with pytest.raises(NoSession):
        a2.sessions.encrypt("bob", MARKER)
    with pytest.raises(NotMember):
        a2.groups.encrypt("line-3", MARKER)
    # new chains: a new X3DH session and a new own sender key; nothing sent repeats a key or nonce
    a2.sessions.start("bob", b.sessions.bundle())
    sent = [a2.sessions.encrypt("bob", MARKER)]
    assert b.sessions.decrypt("alice", sent[0]) == MARKER
    b.groups.add_member("line-3", "alice", a2.groups.create("line-3"))
    sent.append(a2.groups.encrypt("line-3", MARKER))
    assert b.groups.decrypt("line-3", "alice", sent[1]) == MARKER
    assert {_ciphertexts(w) for w in sent}.isdisjoint({_ciphertexts(w) for w in seen})


def test_finding3_old_archives_with_sessions_restore_without_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a, b = _Local(tmp_path / "a", "alice"), _Local(tmp_path / "b", "bob")
    a.sessions.start("bob", b.sessions.bundle())
    a.groups.set_members("line-3", ["bob"])
    a.groups.add_member("line-3", "bob", b.groups.create("line-3"))
    a.groups.create("line-3")
    # an archive as export_state made it before: every record of every store, sessions included
    old = []
    for kind in backup.STORES:
        if (a.root / kind).is_dir():
            store = RecordStore(str(a.root / kind), kind, a.storage_key)
            old += [(kind, name, bytes(store.get(name))) for name in store.names()]
    assert any(kind == "sessions" for kind, _, _ in old) and sum(kind == "groups" for kind, _, _ in old) == 3
    key = os.urandom(32)
    count = backup.import_state(backup.archive_of(old), tmp_path / "new", key)
    assert count == len(old) - sum(k == "sessions" or (k == "groups" and n[0] in "om") for k, n, _ in old)
    assert not (tmp_path / "new" / "sessions").exists()
    restored = SessionManager.open(str(tmp_path / "new"), key)
    groups = GroupSessions(str(tmp_path / "new"), key, "alice")
    assert restored.peers() == [] and restored.keystore.ik_pub == a.sessions.keystore.ik_pub
    assert groups.members("line-3") == ["bob"] and not groups.has_member("line-3", "bob")
    with pytest.raises(NotMember):
        groups.distribution("line-3")


# --- Finding 8: the Argon2id parameters are never chosen by the service ------------------------

def test_finding8_weak_kdf_parameters_from_the_service_or_a_header_are_refused(live_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = _enrolled(tmp_path, live_server.url, "alice-8")
    blob, auth = backup.seal(backup.export_state(a.root, a.storage_key), PASSPHRASE, FAST)
    a.client.put_backup(blob, auth)
    params = a.client.backup_params("alice-8")  # what a malicious service could also serve
    salt, kdf = base64.b64decode(params["salt"]), backup.KdfParams(params["memory_kib"], params["iterations"],
                                                                    params["lanes"])
    # the floor is this client's own creation parameters (HOST_PARAMS unless told otherwise)
    with pytest.raises(backup.WeakKdfParams, match="below this client"):
        backup.auth_token(salt, kdf, PASSPHRASE)
    with pytest.raises(backup.WeakKdfParams):
        backup.open_blob(blob, PASSPHRASE)
    strong = backup.KdfParams(16 * 1024, 2, 1)
    for weaker in (backup.KdfParams(8 * 1024, 2, 1), backup.KdfParams(16 * 1024, 1, 1)):
        with pytest.raises(backup.WeakKdfParams):
            backup.auth_token(salt, weaker, PASSPHRASE, strong)
    # the blob's own header gives the parameters, not the service: a weak header is refused too
    sealed, _ = backup.seal(b"E2EEAR1", PASSPHRASE, strong)
    assert backup.open_blob(sealed, PASSPHRASE, strong) == b"E2EEAR1"
    with pytest.raises(backup.WeakKdfParams):
        backup.read_params(backup.seal(b"E2EEAR1", PASSPHRASE, FAST)[0], strong)
    # the command line restores with the host's floor: the weak service parameters stop it
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE + "\n")
    r = subprocess.run([str(Path(sys.executable).parent / "e2ee"), "--url", live_server.url, "client", "restore",
                        "--dir", str(tmp_path / "new"), "--device-id", "alice-8", "--passphrase-file", str(passphrase)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "below this client" in r.stderr, r.stderr
    assert PASSPHRASE not in r.stderr + r.stdout and not (tmp_path / "new").exists()


# --- the S3 blob store against a real S3-compatible server ----------------------------------

@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        pytest.fail("moto_server is not installed (pip install 'moto[server]'): the S3 store is tested against it")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("s3") / "moto.log", "wb")
    proc = subprocess.Popen([str(exe), "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = "http://127.0.0.1:%d" % port
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def settings(settings, request, monkeypatch):  # type: ignore[no-untyped-def]
    if "s3" in request.node.name:
        url = request.getfixturevalue("s3_server")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # moto accepts any credentials
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        import boto3
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="e2ee-backups")
        settings.backup_store, settings.s3_bucket, settings.s3_endpoint_url = "s3", "e2ee-backups", url
    return settings


def test_s3_blob_store(live_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import boto3
    a = _enrolled(tmp_path, live_server.url, "alice-5")
    blob, auth = backup.seal(backup.export_state(a.root, a.storage_key), PASSPHRASE, FAST)
    a.client.put_backup(blob, auth)
    s3 = boto3.client("s3", endpoint_url=live_server.app.state.settings.s3_endpoint_url, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="e2ee-backups")["Contents"]]
    assert len(keys) == 1 and keys[0].startswith("backups/")
    assert s3.get_object(Bucket="e2ee-backups", Key=keys[0])["Body"].read() == blob
    assert a.client.fetch_backup("alice-5", auth) == blob
    assert not (Path(live_server.app.state.settings.data_dir) / "backups").exists()
