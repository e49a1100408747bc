"""The Wokwi firmware's main.py (boards/wokwi/main.py, frozen there with selftest.py and
sensor_node.py by boards/<board>/manifest_wokwi.py) runs on the virtual board as well: flashed with
the SDK and those two modules, it passes the crypto self test, skips the network (the unix port has
no `network` module) and, with no claim file and no enrollment, says it idles."""
from __future__ import annotations

import time
from pathlib import Path

import serial  # pyserial, what mpremote uses

from e2ee_host.board_link import flash
from e2ee_host.virtual_board import VirtualBoard

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "firmware" / "examples"


def test_the_wokwi_main_runs_on_the_virtual_board_without_network(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with VirtualBoard(tmp_path / "flash", "esp32") as board:
        flash(board.port, ROOT / "boards" / "wokwi" / "main.py",
              files=[(EXAMPLES / "selftest.py", "selftest.py"), (EXAMPLES / "sensor_node.py", "sensor_node.py")])
        with serial.Serial(board.port, timeout=0.2) as port:
            board.reboot()
            out = b""
            deadline = time.monotonic() + 60
            while b"E2EE NODE" not in out and b"Traceback" not in out and time.monotonic() < deadline:
                out += port.read(256)
        text = out.decode(errors="replace")
        assert "E2EE SELFTEST PASS" in text, text
        assert "E2EE NET None" in text, text  # no `network`: net.up skipped
        assert "E2EE NODE idle: no claim file and no enrollment" in text, text
