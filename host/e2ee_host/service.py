"""Runs the provisioning service as a child process (`python -m e2ee_provisioning`) on a free
local port, for the demo, the load benchmark and end-to-end tests: settings go in as E2EE_PROV_*
variables, the log goes to a file, and stop() ends it (SIGTERM, then SIGKILL)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

__all__ = ["ServiceError", "ServiceProcess", "free_port"]


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """settings: E2EE_PROV_* names without the prefix, lower case (data_dir, database_url, ...)."""

    def __init__(self, log_file: str | os.PathLike[str], log_level: str = "info", port: int | None = None,
                 workers: int = 1, **settings: object) -> None:
        self.port = port or free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.log_file = Path(log_file)
        self.log_level = log_level
        self.workers = workers  # uvicorn worker processes (python -m e2ee_provisioning --workers)
        self.settings = settings
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:  # settings may hold keys: never shown
        return "<ServiceProcess %s>" % self.url

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("E2EE_PROV_")}
        env.update({"E2EE_PROV_" + k.upper(): str(v) for k, v in self.settings.items()})
        log = open(self.log_file, "ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "e2ee_provisioning", "--port", str(self.port), "--log-level", self.log_level,
             "--workers", str(self.workers)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise ServiceError("provisioning service exited with %d; log: %s" % (self._proc.returncode,
                                                                                  self.log_file))
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError("provisioning service did not answer within %.0f s; log: %s" % (
                    timeout, self.log_file))
            time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash (nothing flushed, no broker DISCONNECT); start() runs it again."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
