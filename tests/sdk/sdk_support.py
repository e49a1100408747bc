"""Support of the host SDK tests (e2ee_host.sdk.Client): the project's Mosquitto (dynamic
security, persistence, own port) and the provisioning service on SQLite driving it, shared by a
module's tests; each test enrolls installs of its own."""
from __future__ import annotations

from pathlib import Path

from e2ee_host.broker import MosquittoProcess
from e2ee_host.client import OperatorClient
from e2ee_host.sdk import Client
from e2ee_host.service import ServiceProcess

FLEET = "plant-north"
OPERATOR_KEY = "sdk-tests-operator-key-3b8e"


class System:
    def __init__(self, broker: MosquittoProcess, service: ServiceProcess) -> None:
        self.broker, self.service = broker, service
        self.op = OperatorClient(service.url, OPERATOR_KEY)

    def enroll(self, directory: Path, device_id: str, **kw: object) -> Client:
        """A new install, enrolled with a fresh claim, its mailbox open at the broker, opened."""
        return Client.enroll(directory, self.service.url, device_id, FLEET, self.op.create_claims(FLEET).tokens[0],
                             **kw)  # type: ignore[arg-type]
