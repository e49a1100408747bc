"""Host-assisted backup of a board (docs/backup.md): `e2ee board backup` reads a provisioned
virtual board's records over mpremote and seals them on the host; `e2ee board restore` puts them
on a fresh replacement board under its own storage key, which then is the same device."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from e2ee_host.board_link import BoardLink, flash, provision
from e2ee_host.client import OperatorClient
from e2ee_host.service import ServiceProcess
from e2ee_host.virtual_board import VirtualBoard

E2EE = str(Path(sys.executable).parent / "e2ee")
OPERATOR_KEY = "board-backup-operator-key-1b7e"


def test_backup_a_board_and_restore_it_onto_a_replacement(tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "passphrase"
    secret.write_text("the valve's long backup passphrase\n")
    with ServiceProcess(tmp_path / "service.log", data_dir=tmp_path / "svc", operator_api_key=OPERATOR_KEY) as service:
        with VirtualBoard(tmp_path / "old", "esp32") as old:
            flash(old.port)
            token = OperatorClient(service.url, OPERATOR_KEY).create_claims("plant-north").tokens[0]
            done = provision(old.port, service.url, token, "valve-9", "plant-north", one_time=3)
            with BoardLink(old.port) as link:
                keystore = bytes.fromhex(link.call("__import__('e2ee.provision').provision.record('keys', 'keystore')"))
            r = subprocess.run([E2EE, "--url", service.url, "board", "backup", "--port", old.port,
                                "--passphrase-file", str(secret)], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            assert "backup of the board stored" in r.stdout
        blob = next((tmp_path / "svc" / "backups").glob("*.bin")).read_bytes()
        for i in range(1, len(keystore) - 32, 32):  # no 32-byte run of the key store (private keys) in the blob
            assert keystore[i:i + 32] not in blob
        with VirtualBoard(tmp_path / "new", "esp32") as new:
            flash(new.port)
            r = subprocess.run([E2EE, "--url", service.url, "--json", "board", "restore", "--port", new.port,
                                "--device-id", "valve-9", "--passphrase-file", str(secret)],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            assert '"fingerprint": "%s"' % done["fingerprint"] in r.stdout and '"enrolled": true' in r.stdout
            r = subprocess.run([E2EE, "--url", service.url, "board", "restore", "--port", new.port,
                                "--device-id", "valve-9", "--passphrase-file", str(secret)],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 3 and "already has an identity" in r.stderr


def test_a_board_as_the_owners_primary(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A provisioned virtual board approves a new device from its QR payload: the fingerprint
    check, the channel, the check code and the approval signature happen on the board."""
    import threading

    from e2ee.protocol.keys import KeyStore
    from e2ee_host.board_link import approve_link_from_board
    from e2ee_host.client import DeviceClient
    from e2ee_host.linking import NewDeviceLink
    with ServiceProcess(tmp_path / "service.log", data_dir=tmp_path / "svc", operator_api_key=OPERATOR_KEY) as service:
        op = OperatorClient(service.url, OPERATOR_KEY)
        tablet = DeviceClient(service.url, "acme-tablet", "plant-north", KeyStore.generate(2))
        tablet.enroll(op.create_claims("plant-north").tokens[0])
        with VirtualBoard(tmp_path / "hub", "esp32") as hub:
            flash(hub.port)
            provision(hub.port, service.url, op.create_claims("plant-north", owner="acme").tokens[0], "acme-hub",
                      "plant-north", one_time=2)
            link = NewDeviceLink(tablet)
            codes: list[str] = []
            waiter = threading.Thread(target=lambda: (codes.append(link.wait(60)), link.accept()))
            waiter.start()

            def confirm(code: str) -> bool:
                while not codes:  # the tablet's screen
                    waiter.join(0.1)
                return code == codes[0]

            result = approve_link_from_board(hub.port, service.url, link.offer.payload(), "acme", confirm=confirm)
            waiter.join(30)
        assert result["device_id"] == "acme-tablet" and result["check_code"] == codes[0]
        assert link.hello["primary"] == "acme-hub"
        devices = {d["device_id"]: d["primary"] for d in tablet.signed("GET", "/owners/acme/devices")}
        assert devices == {"acme-hub": None, "acme-tablet": "acme-hub"}


_SESSION_NAMES = ("from e2ee import board\nfrom e2ee.protocol.store import RecordStore\n"
                  "print(RecordStore(board.DATA_DIR + '/sessions', 'sessions', board.storage_key()).names())")


def test_finding3_board_restore_never_reuses_message_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A board's backup carries its identity and settings, never its sessions (ratchet state a
    restored board would send with again: the same message keys and nonces); the replacement
    board refuses session records, so an old archive's sessions never reach it."""
    import pytest

    from e2ee_host import backup
    from e2ee_host.board_link import BoardFailed, backup_board, restore_board
    fast = backup.KdfParams(8 * 1024, 1, 1)  # tests only: boards' backups are sealed with backup.HOST_PARAMS
    passphrase = "the valve's long backup passphrase"
    with ServiceProcess(tmp_path / "service.log", data_dir=tmp_path / "svc", operator_api_key=OPERATOR_KEY) as service:
        with VirtualBoard(tmp_path / "old", "esp32") as old:
            flash(old.port)
            token = OperatorClient(service.url, OPERATOR_KEY).create_claims("plant-north").tokens[0]
            done = provision(old.port, service.url, token, "valve-3", "plant-north", one_time=3)
            with BoardLink(old.port) as link:  # a real session on the board, which has sent a message
                link.exec("from e2ee import board\nfrom e2ee.protocol.keys import KeyStore\n"
                          "from e2ee.protocol.session import SessionManager\n"
                          "m = SessionManager.open(board.DATA_DIR, board.storage_key())\n"
                          "m.start('gw-1', KeyStore.generate(1).bundle())\nm.encrypt('gw-1', b'open')\n", timeout=120)
                assert link.exec(_SESSION_NAMES).strip() != "[]"
            backup_board(old.port, service.url, passphrase, params=fast)
        blob = next((tmp_path / "svc" / "backups").glob("*.bin")).read_bytes()
        records = backup.records_of(backup.open_blob(blob, passphrase, fast))
        assert {kind for kind, _, _ in records} == {"keys", "config"}  # no session state in the backup
        with VirtualBoard(tmp_path / "new", "esp32") as new:
            flash(new.port)
            status = restore_board(new.port, service.url, "valve-3", passphrase, floor=fast)
            assert status["fingerprint"] == done["fingerprint"] and status["enrolled"]
            with BoardLink(new.port) as link:
                assert link.exec(_SESSION_NAMES).strip() == "[]"
                # an old archive's session record is refused on the board itself
                link.put(records[0][2], "e2ee_data/transfer.bin")
                with pytest.raises(BoardFailed, match="ProvisionError"):
                    link.call("__import__('e2ee.provision').provision.put_record('sessions', 'gw-1', "
                              "'e2ee_data/transfer.bin')")
            # the weak parameters of this test's backup are refused with the host's floor (finding 8)
            with pytest.raises(backup.WeakKdfParams):
                restore_board(new.port, service.url, "valve-3", passphrase)
