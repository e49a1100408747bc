"""The host examples (examples/), run as a user runs them (python examples/X.py --dir D) against
the project's broker and service: the gateway forwards readings to a local HTTP endpoint and
acknowledges each only after the endpoint took it (an endpoint that is down at first, a gateway
stopped and started meanwhile: every reading arrives, each once); the agent answers commands."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sdk_support import System

from e2ee_host.service import free_port

ROOT = Path(__file__).resolve().parents[2]


class Endpoint:
    """The local service: records the JSON bodies POSTed to it; answers 503 while `down`."""

    def __init__(self, port: int) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.refused = 0
        self.down = True
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                if endpoint.down:
                    endpoint.refused += 1
                    self.send_response(503)
                else:
                    endpoint.bodies.append(json.loads(data))
                    self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:%d/readings" % port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint(free_port())
    yield e
    e.close()


def _start(script: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "gateway gw-1: forwarding ..." / "agent ...: ready" once connected
    assert line, proc.stderr.read() if proc.stderr else ""
    return proc


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return err


def _until(done: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert done()


def test_gateway_acknowledges_only_what_the_endpoint_took(system: System, tmp_path: Path,
                                                           endpoint: Endpoint) -> None:
    with system.enroll(tmp_path / "sensor", "ex-sensor-3") as sensor:
        system.enroll(tmp_path / "gw", "ex-gw-1").close()
        gateway = _start("gateway_bridge.py", "--dir", str(tmp_path / "gw"), "--post", endpoint.url)
        outs = [sensor.send("ex-gw-1", b"%.1f C" % (20 + i / 10)) for i in range(10)]
        sensor.send("ex-gw-1", b"\xff\x00raw")
        _until(lambda: endpoint.refused >= 2)  # the endpoint is down: retried, nothing acknowledged
        err = _stop(gateway)  # stopped while the readings wait unacknowledged in its inbox
        assert "HTTP 503" in err
        assert endpoint.bodies == []
        endpoint.down = False
        gateway = _start("gateway_bridge.py", "--dir", str(tmp_path / "gw"), "--post", endpoint.url)
        _until(lambda: len(endpoint.bodies) >= 11)
        inbox = tmp_path / "gw" / "inbox"
        _until(lambda: not any(inbox.iterdir()))  # the last one acknowledged after its POST, then stopped
        _stop(gateway)
        assert [b.get("text") for b in endpoint.bodies[:10]] == ["%.1f C" % (20 + i / 10) for i in range(10)]
        assert endpoint.bodies[10]["hex"] == "ff00726177" and len(endpoint.bodies) == 11
        assert {b["from"] for b in endpoint.bodies} == {"ex-sensor-3"}
        assert all(o.wait(30) == "delivered" for o in outs)  # receipted when they reached the inbox
    # nothing left unacknowledged: a third start forwards nothing
    gateway = _start("gateway_bridge.py", "--dir", str(tmp_path / "gw"), "--post", endpoint.url)
    time.sleep(1)
    _stop(gateway)
    assert len(endpoint.bodies) == 11


def test_agent_answers_commands(system: System, tmp_path: Path) -> None:
    system.enroll(tmp_path / "agent", "ex-agent-1").close()
    agent = _start("command_agent.py", "--dir", str(tmp_path / "agent"))
    try:
        with system.enroll(tmp_path / "pump", "ex-pump-1") as pump:
            commands = [b"ping", b"echo valve 7 open", b"sum 1 2 3.5", b"reboot"]
            for c in commands:
                pump.send("ex-agent-1", c)
            answers = []
            for msg in pump.receive(timeout=30):
                answers.append((msg.sender, msg.data))
                msg.ack()
                if len(answers) == len(commands):
                    break
    finally:
        _stop(agent)
    assert answers == [("ex-agent-1", b"pong"), ("ex-agent-1", b"valve 7 open"), ("ex-agent-1", b"6.5"),
                       ("ex-agent-1", b"error: unknown command 'reboot'")]
