"""The virtual board (host/e2ee_host/virtual_board.py): it must come back after any number of power
cuts, wherever the cut falls, whether or not a host is reading the port; at power-on it runs boot.py
and main.py as a board does, Ctrl-C interrupts them, and a soft reset starts a fresh interpreter."""
from __future__ import annotations

import random
import subprocess
import sys
import time

import serial  # pyserial, what mpremote uses

from e2ee_host.board_link import BoardLink
from e2ee_host.virtual_board import VirtualBoard

FLOOD = b"while True:\r\n print('x' * 70)\r\n\r\n"


def test_power_cuts_while_the_board_floods_the_port(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with VirtualBoard(tmp_path / "flash", "unix") as board:
        for cycle in range(8):
            port = serial.Serial(board.port, 115200, timeout=0.05)
            port.write(FLOOD)
            read = _read_until(port, lambda r: b"x" * 70 in r)  # about 50 ms
            assert b"x" * 70 in read, "the board did not print (cycle %d)" % cycle
            deadline = time.monotonic() + random.uniform(0, 0.25)  # then the cut falls anywhere
            while time.monotonic() < deadline:
                read += port.read(port.in_waiting or 1)
            if cycle % 2:  # half the time the host lets go first: the board prints to nobody
                port.close()
                time.sleep(0.3)
            board.power_cut()
            assert not board.running
            if port.is_open:
                port.close()
            board.boot()
        assert board.boots == 9
        with BoardLink(board.port) as link:  # the line is clean for mpremote afterwards
            assert link.exec("print(6 * 7)").strip() == "42"


def test_a_host_that_stops_reading_does_not_stall_the_board(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with VirtualBoard(tmp_path / "flash", "unix") as board:
        port = serial.Serial(board.port, 115200, timeout=0.05)
        port.write(FLOOD)
        port.close()
        time.sleep(1)  # far more than the port's buffer gets printed, to nobody
        port = serial.Serial(board.port, 115200, timeout=0.2)
        read = port.read(4096)  # the board still runs: what it prints now reaches the new host
        port.close()
        assert b"x" * 70 in read
        board.power_cut()  # the relay drops what the dead board left
        board.boot()
        with BoardLink(board.port) as link:
            assert link.exec("print('back')").strip() == "back"


# boot.py and main.py of the power-on tests: each run leaves a line in runs.txt on the flash, so
# what ran is seen without a byte on the serial line; main.py then prints a tick every 50 ms.
BOOT_PY = "with open('runs.txt', 'a') as f:\n    f.write('boot\\n')\n"
MAIN_PY = """\
import time
with open('runs.txt', 'a') as f:
    f.write('main\\n')
ticks = 0
while True:
    ticks += 1
    print('tick', ticks)
    time.sleep(0.05)
"""


def _flash(tmp_path, **files: str):  # type: ignore[no-untyped-def]
    flash = tmp_path / "flash"
    flash.mkdir()
    for name, text in files.items():
        (flash / (name + ".py")).write_text(text)
    return flash


def _runs(flash, count: int, timeout: float = 20.0) -> list[str]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = (flash / "runs.txt").read_text().split() if (flash / "runs.txt").exists() else []
        if len(runs) >= count:
            return runs
        time.sleep(0.05)
    raise AssertionError("%d runs expected, runs.txt has %r" % (count, runs))


def _read_until(port: serial.Serial, done, timeout: float = 10.0) -> bytes:  # type: ignore[no-untyped-def]
    read = b""
    deadline = time.monotonic() + timeout
    while not done(read) and time.monotonic() < deadline:
        read += port.read(256)
    return read


def _mpremote(port: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mpremote", "connect", port, *args], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_power_on_runs_boot_and_main_without_serial_input(tmp_path) -> None:  # type: ignore[no-untyped-def]
    flash = _flash(tmp_path, boot=BOOT_PY, main=MAIN_PY)
    with VirtualBoard(flash, "unix") as board:
        assert _runs(flash, 2) == ["boot", "main"]  # nobody has opened the port
        with serial.Serial(board.port, 115200, timeout=0.1) as port:
            read = _read_until(port, lambda r: b"tick" in r)
        assert b"tick" in read, read  # what main.py prints reaches a host that only listens
        board.reboot()  # a power cycle runs both again
        assert _runs(flash, 4) == ["boot", "main", "boot", "main"]
        assert board.boots == 2 and board.soft_resets == 0


def test_ctrl_c_resume_and_soft_reset(tmp_path) -> None:  # type: ignore[no-untyped-def]
    flash = _flash(tmp_path, boot=BOOT_PY, main=MAIN_PY)
    with VirtualBoard(flash, "unix") as board:
        _runs(flash, 2)
        # mpremote's Ctrl-C interrupts main.py; `resume`: no soft reset, main.py's globals are there
        assert int(_mpremote(board.port, "resume", "exec", "print(ticks)")) > 0
        assert int(_mpremote(board.port, "resume", "exec", "print(ticks)")) > 0
        assert board.soft_resets == 0 and _runs(flash, 2) == ["boot", "main"]
        # without `resume` mpremote soft-resets from the raw REPL: a fresh interpreter (RAM gone)
        # runs boot.py, and not main.py, as a board in raw REPL mode does
        assert _mpremote(board.port, "exec", "print('ticks' in globals())") == "False"
        assert board.soft_resets == 1 and _runs(flash, 3) == ["boot", "main", "boot"]
        # Ctrl-D at the friendly REPL (where mpremote left the board) soft-resets with main.py
        with serial.Serial(board.port, 115200, timeout=0.1) as port:
            port.write(b"\r\x04")
            read = _read_until(port, lambda r: b"tick" in r)
        assert b"MPY: soft reboot\r\n" in read and b"tick" in read, read
        assert board.soft_resets == 2 and _runs(flash, 5) == ["boot", "main", "boot", "boot", "main"]
        # Ctrl-C on the line interrupts main.py: KeyboardInterrupt, then the REPL
        with serial.Serial(board.port, 115200, timeout=0.1) as port:
            port.write(b"\x03")
            read = _read_until(port, lambda r: r.endswith(b">>> "))
            assert b"KeyboardInterrupt" in read, read
            port.write(b"print(ticks > 0)\r\n")
            read = _read_until(port, lambda r: b"True" in r)
            assert b"True" in read, read
        assert board.running and board.soft_resets == 2


def test_sys_exit_in_main_soft_resets(tmp_path) -> None:  # type: ignore[no-untyped-def]
    flash = _flash(tmp_path, main=(  # the first run exits, as an application may on a fatal error
        "import os, sys\nwith open('runs.txt', 'a') as f:\n    f.write('main\\n')\n"
        "if len(open('runs.txt').read().split()) == 1:\n    sys.exit()\n"))
    with VirtualBoard(flash, "unix") as board:
        assert _runs(flash, 2) == ["main", "main"]
        assert board.soft_resets == 1 and board.running
        assert _mpremote(board.port, "resume", "exec", "print(6 * 7)") == "42"
