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
