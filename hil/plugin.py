"""pytest plugin of the hardware-in-the-loop rig (hil/README.md): one scenario suite against

    --board virtual                  a virtual board (default; MicroPython unix port behind a pty)
    --board serial:/dev/ttyUSB0      a real board on a serial port
    --board wokwi                    a Wokwi simulation (skipped with the reason when it cannot run)

with `--board-profile esp32|rp2040` (heap budget of the virtual board). Power cuts: the virtual
board is SIGKILLed; a real rack sets E2EE_HIL_POWER_OFF and E2EE_HIL_POWER_ON to shell commands
that switch the board's supply (a USB relay), without them the power-cut scenario is skipped.
JUnit XML for a rack's CI: `scripts/hil --junitxml=hil-report.xml`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from e2ee_host.board_link import BoardLink
from e2ee_host.service import ServiceProcess
from e2ee_host.virtual_board import BOARD_PROFILES, VirtualBoard

OPERATOR_KEY = "hil-operator-key-31e7a0"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop rig")
    group.addoption("--board", default="virtual", help="virtual | serial:<port> | wokwi")
    group.addoption("--board-profile", default="esp32", choices=sorted(BOARD_PROFILES),
                    help="board profile (heap budget of the virtual board)")


class Rig:
    """The board under test and how to power it."""

    def __init__(self, kind: str, port: str, virtual: VirtualBoard | None = None) -> None:
        self.kind, self.port, self.virtual = kind, port, virtual

    def __repr__(self) -> str:
        return "<Rig %s %s>" % (self.kind, self.port)

    @property
    def can_power_cut(self) -> bool:
        return self.virtual is not None or bool(os.environ.get("E2EE_HIL_POWER_OFF"))

    def power_cut(self) -> None:
        if self.virtual is not None:
            self.virtual.power_cut()
        elif os.environ.get("E2EE_HIL_POWER_OFF"):
            subprocess.run(os.environ["E2EE_HIL_POWER_OFF"], shell=True, check=True)
        else:
            pytest.skip("power cuts on a real board need E2EE_HIL_POWER_OFF/ON (a relay on the rig)")

    def boot(self) -> None:
        if self.virtual is not None:
            self.virtual.boot()
            return
        subprocess.run(os.environ["E2EE_HIL_POWER_ON"], shell=True, check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # a board re-enumerates its USB serial after power-up
            if os.path.exists(self.port):
                try:
                    with BoardLink(self.port, timeout=5):
                        return
                except Exception:
                    pass
            time.sleep(0.5)
        raise RuntimeError("the board did not come back on %s after power-on" % self.port)


@pytest.fixture(scope="session")
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    board = request.config.getoption("--board")
    if board == "virtual":
        with VirtualBoard(tmp_path_factory.mktemp("board") / "flash",
                          request.config.getoption("--board-profile")) as virtual:
            yield Rig("virtual", virtual.port, virtual)
    elif board.startswith("serial:"):
        port = board.split(":", 1)[1]
        if not os.path.exists(port):
            pytest.fail("no board at %s" % port)
        yield Rig("serial", port)
    elif board == "wokwi":
        if not os.environ.get("WOKWI_CLI_TOKEN"):
            pytest.skip("Wokwi needs WOKWI_CLI_TOKEN (a Wokwi CI token); none here")
        if not shutil.which("wokwi-cli"):
            pytest.skip("Wokwi needs wokwi-cli on PATH (https://docs.wokwi.com/wokwi-ci)")
        pytest.skip("Wokwi runs the self-test scenario (.github/workflows/firmware.yml); its serial port is not "
                    "exposed to mpremote, so the interactive scenarios run on virtual and real boards")
    else:
        raise pytest.UsageError("--board must be virtual, serial:<port> or wokwi, not %r" % board)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The provisioning service on embedded defaults (SQLite) for the rig."""
    d = tmp_path_factory.mktemp("service")
    with ServiceProcess(d / "service.log", data_dir=d / "data", operator_api_key=OPERATOR_KEY) as s:
        yield s


def pytest_report_header(config: pytest.Config) -> str:
    return "hil: board %s, profile %s" % (config.getoption("--board"), config.getoption("--board-profile"))


__all__ = ["OPERATOR_KEY", "Rig"]
