"""The virtual board's power cycle (host/e2ee_host/virtual_board.py): it must come back after any
number of power cuts, wherever the cut falls, whether or not a host is reading the port."""
from __future__ import annotations

import random
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
            read = b""
            deadline = time.monotonic() + random.uniform(0.05, 0.3)
            while time.monotonic() < deadline:
                read += port.read(port.in_waiting or 1)
            assert b"x" * 70 in read, "the board did not print (cycle %d)" % cycle
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
