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
