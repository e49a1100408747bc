"""`e2ee dev up`: the development broker and the provisioning service, wired together on embedded
defaults (docs/host-client.md, "A development system"), so a newcomer follows docs/boards.md and
docs/host-client.md without setting the service's E2EE_PROV_* variables by hand.

    with DevStack("~/.e2ee-dev") as dev:     # Mosquitto (the project's config) + the service (SQLite)
        print(dev.exports())                  # E2EE_URL, E2EE_API_KEY

Everything lives in one directory, kept across runs: the broker's data (dynamic security,
persistence), the service's (SQLite database, Fleet CA), the operator key (`operator.key`, 0600,
made on the first run) and `env`, the lines to source. The broker listens on 127.0.0.1 only
(plain MQTT: the development listener), as does the service.
"""
from __future__ import annotations

import os
import secrets
import shlex
from pathlib import Path
from types import TracebackType

from e2ee_host.broker import MosquittoProcess
from e2ee_host.service import ServiceProcess

__all__ = ["DEFAULT_BROKER_PORT", "DEFAULT_DIR", "DEFAULT_PORT", "DevStack", "wired_service"]

DEFAULT_DIR = "~/.e2ee-dev"
DEFAULT_PORT = 8000  # the e2ee command's default --url is http://127.0.0.1:8000
DEFAULT_BROKER_PORT = 1883  # MQTT's registered port: what boards and examples expect
_KEY_FILE = "operator.key"


def wired_service(broker: MosquittoProcess, log_file: str | os.PathLike[str], data_dir: str | os.PathLike[str],
                  operator_key: str, port: int | None = None, **settings: object) -> ServiceProcess:
    """A ServiceProcess (not started) that drives `broker` (dynamic security with its admin
    account) and gives devices its address with their credentials."""
    service = ServiceProcess(log_file, port=port, data_dir=data_dir, operator_api_key=operator_key,
                             broker_admin_host=broker.host, broker_admin_port=broker.port,
                             broker_admin_user=broker.admin_user, broker_admin_password=broker.admin_password,
                             mqtt_host=broker.host, mqtt_port=broker.port)
    service.settings.update(settings)
    return service


def _operator_key(path: Path) -> str:
    """The development operator key, made once (random: no default key a service would accept)."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


class DevStack:
    """The broker and the service of a development system, in `directory`."""

    def __init__(self, directory: str | os.PathLike[str] = DEFAULT_DIR, port: int = DEFAULT_PORT,
                 broker_port: int = DEFAULT_BROKER_PORT) -> None:
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.operator_key = _operator_key(self.directory / _KEY_FILE)
        self.broker = MosquittoProcess(self.directory / "broker", port=broker_port)
        self.service = wired_service(self.broker, self.directory / "service.log", self.directory / "service",
                                     self.operator_key, port=port, environment="development")

    def __repr__(self) -> str:  # the keys stay out
        return "<DevStack %s: service %s, broker %s:%d>" % (self.directory, self.service.url, self.broker.host,
                                                          self.broker.port)

    def start(self) -> DevStack:
        """Starts the broker, then the service (which provisions devices on it). BrokerError /
        ServiceError when one does not come up (a port in use: see its log)."""
        self.broker.start()
        try:
            self.service.start()
        except BaseException:
            self.broker.stop()
            raise
        (self.directory / "env").write_text(
            "".join("export %s=%s\n" % (k, shlex.quote(v)) for k, v in self.exports().items()))
        os.chmod(self.directory / "env", 0o600)
        return self

    def stop(self) -> None:
        """Stops the service, then the broker (which writes its persistence file)."""
        try:
            self.service.stop()
        finally:
            self.broker.stop()

    def exited(self) -> str | None:
        """Which of the two has exited since start() (None: both run)."""
        for name, proc in (("the broker", self.broker._proc), ("the service", self.service._proc)):
            if proc is not None and proc.poll() is not None:
                return "%s exited with status %d" % (name, proc.returncode)
        return None

    def exports(self) -> dict[str, str]:
        """What the `e2ee` command needs: the service's URL and the operator key."""
        return {"E2EE_URL": self.service.url, "E2EE_API_KEY": self.operator_key}

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
