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
from service_support import OPERATOR_KEY

from e2ee.protocol.keys import KeyStore
from e2ee.protocol.session import SessionManager
from e2ee_host import backup
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


def _enrolled(tmp_path: Path, url: str, name: str) -> Install:
    with OperatorClient(url, OPERATOR_KEY) as op:
        token = op.create_claims("plant-north").tokens[0]
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
    fetched = service.fetch_backup("alice-1", backup.auth_token(salt, kdf, PASSPHRASE))
    new_root, new_key = tmp_path / "alice-1-new", os.urandom(32)
    count = backup.import_state(backup.open_blob(fetched, PASSPHRASE), new_root, new_key)
    assert count >= 2
    restored = SessionManager.open(str(new_root), new_key)
    assert restored.keystore.ik_pub == a.client.keystore.ik_pub and restored.peers() == ["bob-1"]
    a2 = Install(new_root, live_server.url, "alice-1", restored.keystore)
    a2.storage_key, a2.sessions = new_key, restored
    _converse(a2, b, 3)  # the conversation goes on, both ways
    with pytest.raises(backup.BackupError):  # never restore over an install that has records
        backup.import_state(archive, new_root, new_key)


def test_wrong_passphrase_is_clear_and_attempts_are_limited(live_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = _enrolled(tmp_path, live_server.url, "alice-2")
    blob, auth = backup.seal(backup.export_state(a.root, a.storage_key), PASSPHRASE, FAST)
    a.client.put_backup(blob, auth)
    with pytest.raises(backup.WrongPassphrase, match="wrong passphrase"):
        backup.open_blob(blob, PASSPHRASE + "x")
    tampered = bytearray(blob)
    tampered[20] ^= 1  # a header byte (Argon2id parameters): authenticated as associated data
    with pytest.raises(backup.BackupError):
        backup.open_blob(bytes(tampered), PASSPHRASE)
    settings = live_server.app.state.settings
    salt, kdf = backup.read_params(blob)
    wrong = backup.auth_token(salt, kdf, "not the passphrase")
    for left in range(settings.backup_fetch_attempts - 1, -1, -1):
        with pytest.raises(ApiError) as e:
            a.client.fetch_backup("alice-2", wrong)
        assert e.value.status == 403 and "%d attempts left" % left in e.value.detail
    with pytest.raises(ApiError) as e:  # locked: even the right token waits for an operator
        a.client.fetch_backup("alice-2", auth)
    assert e.value.status == 423
    r = httpx.delete(live_server.url + "/backups/alice-2/lock", headers={"X-API-Key": OPERATOR_KEY})
    assert r.status_code == 204
    assert a.client.fetch_backup("alice-2", auth) == blob


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
    a = _enrolled(tmp_path, live_server.url, "alice-4")
    a.client.set_registration_lock("2468-1357")
    with OperatorClient(live_server.url, OPERATOR_KEY) as op:
        token = op.create_claims("plant-north", quota=3).tokens[0]
    thief = DeviceClient(live_server.url, "alice-4", "plant-north", KeyStore.generate())
    with pytest.raises(ApiError) as e:
        thief.enroll(token)
    assert e.value.status == 423
    # the owner's restored install re-enrolls with its own keys (a renewal) and with new keys + PIN
    assert a.client.enroll(token).cert.device_id == "alice-4"
    assert thief.enroll(token, registration_lock_pin="2468-1357").cert.device_id == "alice-4"


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
