"""A virtual board: the MicroPython unix port behind a pseudo-terminal, reachable by `mpremote`
exactly like a board on a USB serial port (docs/boards.md, "Virtual board").

    with VirtualBoard(flash_dir, profile="esp32") as board:
        subprocess.run(["mpremote", "connect", board.port, "resume", "exec", "print(1)"])
        board.power_cut()   # SIGKILL: RAM is gone, the flash directory stays
        board.boot()        # a fresh interpreter on the same flash

Two pty pairs and a relay thread: the interpreter's stdin/stdout/stderr is one pty (so it runs its
interactive REPL, raw REPL included, as on a board's UART), and `port` is the other one, which
stays the same across power cuts (a USB-serial adapter that stays plugged in); bytes sent while
the board is off are lost, as on a real line. The interpreter's working directory is the flash
directory, and `lib/` in it is on sys.path, as on ESP32 and RP2040 boards; the heap is capped at
the board profile's budget. Unlike a board, Ctrl-C does not interrupt running code (the port reads
it only at its REPL; letting the terminal turn it into SIGINT races with the port's own terminal
modes and can kill the interpreter): a board stuck in an application is power-cut.
"""
from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import threading
import time
import tty
from pathlib import Path

from e2ee_host import micropython as e2ee_micropython

__all__ = ["BOARD_PROFILES", "BoardProfile", "VirtualBoard", "VirtualBoardError"]


class VirtualBoardError(RuntimeError):
    pass


class BoardProfile:
    """What the SDK must fit on a board: the MicroPython heap left for it, and the -march of its
    .mpy files (boards/README.md has the sources of these figures)."""

    def __init__(self, name: str, heap: str, arch: str | None, description: str) -> None:
        self.name, self.heap, self.arch, self.description = name, heap, arch, description

    def __repr__(self) -> str:
        return "<BoardProfile %s heap=%s arch=%s>" % (self.name, self.heap, self.arch or "native")


# A board runs the SDK frozen into its firmware: bytecode and viper code stay in flash and cost no
# heap. The stock unix binary cannot freeze it, so a virtual board loads the SDK as .mpy files
# into RAM (about 135 KB for the whole stack, docs/performance.md "size"); it gets this much heap on top
# of the profile's budget, leaving the application what it would have on the board. A binary
# with the SDK frozen (sdk="frozen", docs/performance.md has the recipe) runs at the budget.
MPY_SDK_HEAP_KB = 144

BOARD_PROFILES = {
    # ESP32-WROOM without PSRAM: about 120 KB of MicroPython heap once Wi-Fi is up.
    "esp32": BoardProfile("esp32", "120K", "xtensawin", "ESP32 (no PSRAM), 120 KB heap"),
    # RP2040 Pico W: 264 KB SRAM; about 160 KB of heap with the CYW43 Wi-Fi driver running.
    "rp2040": BoardProfile("rp2040", "160K", "armv6m", "RP2040 Pico W, 160 KB heap"),
    # the unix port itself, no budget to speak of
    "unix": BoardProfile("unix", "1024K", None, "MicroPython unix port, 1 MB heap"),
}


class VirtualBoard:
    def __init__(self, flash_dir: str | os.PathLike[str], profile: str = "esp32",
                 micropython: str | None = None, heap: str | None = None, sdk: str = "mpy") -> None:
        if profile not in BOARD_PROFILES:
            raise VirtualBoardError("unknown board profile %r (one of %s)" % (profile, ", ".join(BOARD_PROFILES)))
        self.profile = BOARD_PROFILES[profile]
        self.flash = Path(flash_dir)
        self.flash.mkdir(parents=True, exist_ok=True)
        if sdk not in ("mpy", "frozen"):
            raise VirtualBoardError("sdk must be 'mpy' (loaded into RAM) or 'frozen' (in the binary)")
        self.sdk = sdk
        self.heap = heap or (self.profile.heap if sdk == "frozen" else
                             "%dK" % (int(self.profile.heap[:-1]) + MPY_SDK_HEAP_KB))
        self.binary = micropython or e2ee_micropython.binary()
        # the serial side mpremote talks to
        self._port_master, slave = pty.openpty()
        tty.setraw(self._port_master)
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        os.close(slave)  # the host opens it; while nobody does, the master reports a hang-up
        self._board_master: int | None = None
        # interpreter ptys the relay must close: only the relay thread closes them, so it never
        # selects on a closed descriptor nor reads one the number of which was reused meanwhile
        self._retired: list[int] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._banner_seen = threading.Event()
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        self._relay = threading.Thread(target=self._pump, name="virtual-board-relay", daemon=True)
        self._relay.start()
        self.boots = 0

    def __repr__(self) -> str:
        return "<VirtualBoard %s %s on %s>" % (self.profile.name, "on" if self.running else "off", self.port)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def boot(self) -> VirtualBoard:
        """Powers the board on: a fresh interpreter on the flash directory."""
        if self.running:
            raise VirtualBoardError("the board is already running")
        master, slave = pty.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        self._banner_seen.clear()
        env = dict(os.environ, MICROPYPATH="lib:.frozen")
        self._proc = subprocess.Popen([self.binary, "-X", "heapsize=" + self.heap], stdin=slave, stdout=slave,
                                      stderr=slave, cwd=self.flash, env=env, start_new_session=True)
        os.close(slave)
        with self._lock:
            self._board_master = master
        os.write(self._wake_w, b"b")
        self.boots += 1
        self._await_prompt()
        return self

    def _await_prompt(self, timeout: float = 20.0) -> None:
        # the REPL banner ends with ">>> "; wait for the process to be up before mpremote talks
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise VirtualBoardError("micropython exited at boot (%s)" % self._proc.returncode  # type: ignore[union-attr]
                                        if self._proc else "micropython did not start")
            if self._banner_seen.is_set():
                return
            time.sleep(0.02)
        raise VirtualBoardError("no REPL prompt from the virtual board within %.0f s" % timeout)

    def power_cut(self) -> None:
        """SIGKILL: whatever was in RAM is lost; files written so far stay on the flash."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._detach()

    def reboot(self) -> VirtualBoard:
        self.power_cut()
        return self.boot()

    def _detach(self, only: int | None = None) -> None:
        with self._lock:
            if only is not None and self._board_master != only:
                return  # that interpreter is already gone and a new one may be up
            master, self._board_master = self._board_master, None
            if master is not None:
                self._retired.append(master)
        os.write(self._wake_w, b"d")

    def _close_retired(self) -> None:
        with self._lock:
            retired, self._retired = self._retired, []
        for fd in retired:
            try:
                os.close(fd)
            except OSError:
                pass

    def stop(self) -> None:
        self.power_cut()
        self._closed = True
        os.write(self._wake_w, b"x")
        self._relay.join(5)
        if not self._relay.is_alive():
            self._close_retired()
        for fd in (self._port_master, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> VirtualBoard:
        return self.boot()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Relay between the serial side and the running interpreter's pty. While the board is off,
    # what the host sends is dropped, as on a powered-down UART. While no host has the port open,
    # what the board prints is dropped, as a USB-serial bridge does; a host that has it open but
    # does not read holds the board back (flow control: a busy host loses nothing) for up to
    # PORT_STALL_S. Output of a board that has been switched off since waits a moment at most.
    PORT_STALL_S = 30.0

    def _host_has_port(self) -> bool:
        poller = select.poll()
        poller.register(self._port_master, select.POLLOUT)
        return not any(ev & select.POLLHUP for _, ev in poller.poll(0))

    def _to_port(self, data: bytes, board: int) -> None:
        view = memoryview(data)
        stalled_since = time.monotonic()
        poller = select.poll()
        poller.register(self._port_master, select.POLLOUT)
        while view:
            events = 0
            for _, ev in poller.poll(50):
                events |= ev
            if events & select.POLLHUP:
                return  # nobody has the port open: the bytes go nowhere
            if not events & select.POLLOUT:
                limit = self.PORT_STALL_S if self._board_master == board else 0.2
                if self._closed or time.monotonic() - stalled_since > limit:
                    return
                continue
            try:
                n = os.write(self._port_master, view)
            except BlockingIOError:
                continue
            except OSError:
                return
            view = view[n:]
            stalled_since = time.monotonic()

    def _pump(self) -> None:
        os.set_blocking(self._port_master, False)
        tail = b""
        while not self._closed:
            self._close_retired()
            with self._lock:
                board = self._board_master
            if board is None:
                tail = b""
            # a port nobody has open reads as hung up at once: look again for a host every 50 ms
            host = self._host_has_port()
            if not host:  # what a host wrote just before it let go is still on the line
                self._from_port(board)
            fds = [self._wake_r] + ([self._port_master] if host else []) + ([board] if board is not None else [])
            try:
                ready, _, _ = select.select(fds, [], [], None if host else 0.05)
            except (OSError, ValueError):
                if self._closed:
                    return
                continue
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
                continue
            if board is not None and board in ready:
                try:
                    data = os.read(board, 4096)
                except OSError:  # the interpreter died: its pty reports EIO
                    data = b""
                if not data:
                    if self._proc is not None and self._proc.poll() is not None:
                        self._detach(only=board)
                    continue
                if b">>> " in tail + data:  # the prompt may arrive split across reads
                    self._banner_seen.set()
                tail = data[-4:]
                self._to_port(data, board)
            if self._port_master in ready:
                self._from_port(board)

    def _from_port(self, board: int | None) -> None:
        try:
            data = os.read(self._port_master, 4096)
        except OSError:  # nothing yet, or the host let go of the port
            return
        if board is not None and data:
            try:
                os.write(board, data)
            except OSError:
                pass
