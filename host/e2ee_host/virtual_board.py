"""A virtual board: the MicroPython unix port behind a pseudo-terminal, reachable by `mpremote`
exactly like a board on a USB serial port (docs/boards.md, "Virtual board").

    with VirtualBoard(flash_dir, profile="esp32") as board:   # power on: boot.py, then main.py
        subprocess.run(["mpremote", "connect", board.port, "resume", "exec", "print(1)"])
        board.power_cut()   # SIGKILL: RAM is gone, the flash directory stays
        board.boot()        # a fresh interpreter on the same flash

Two pty pairs and a relay thread: the interpreter's stdin/stdout/stderr is one pty (so it runs its
interactive REPL, raw REPL included, as on a board's UART), and `port` is the other one, which
stays the same across power cuts (a USB-serial adapter that stays plugged in); bytes sent while
the board is off are lost, as on a real line. The interpreter's working directory is the flash
directory, and `lib/` in it is on sys.path, as on ESP32 and RP2040 boards; the heap is capped at
the board profile's budget.

What a port's main.c does is played here: at power-on boot.py runs, then main.py (in `__main__`,
an exception printed), then the REPL. Ctrl-C interrupts running code (KeyboardInterrupt), as a
board's UART interrupt does. A soft reset (Ctrl-D at an empty REPL line, which is what `mpremote`
without `resume` sends, or SystemExit out of boot.py/main.py) ends the unix interpreter; the relay
prints "MPY: soft reboot" and starts a fresh one on the same flash: RAM is gone, as after a board's
soft reset, and boot.py runs again, then main.py unless the reset came from the raw REPL (a board
keeps the raw REPL across a soft reset and skips main.py there).
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

__all__ = ["BOARD_PROFILES", "BoardProfile", "SerialTap", "VirtualBoard", "VirtualBoardError"]


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

# The start-up of ports/esp32/main.c and ports/rp2/main.c, run by `micropython -i -c`: boot.py,
# then main.py unless the REPL is in raw mode, each in __main__'s globals with an exception printed
# as pyexec prints it. Each step is announced on a pipe to the relay (b: boot.py, m: main.py,
# r: SystemExit, which a board answers with a soft reset); then the unix port's REPL starts.
_STARTUP = """\
def _startup(fd, raw):
    import os, sys, time
    ctl = open('/dev/fd/%%d' %% fd, 'wb')
    for step, name in ((b'b', 'boot.py'),) if raw else ((b'b', 'boot.py'), (b'm', 'main.py')):
        try:
            os.stat(name)
        except OSError:
            continue
        ctl.write(step)  # unbuffered (flush would fsync a pipe: EINVAL)
        try:
            execfile(name)
        except SystemExit:
            ctl.write(b'r')
            while True:
                time.sleep(1)
        except BaseException as e:
            sys.print_exception(e)
    ctl.close()
_startup(%d, %d)
del _startup
"""

_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
_FRIENDLY_BANNER = b'Type "help()" for more information.'
_SOFT_REBOOT = b"MPY: soft reboot\r\n"
_CTRL_C = b"\x03"


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
        # The running interpreter: its pty and its start-up pipe (None while the board is off).
        # Only the relay thread closes retired descriptors, so it never selects on a closed one
        # nor reads one the number of which was reused meanwhile.
        self._board_master: int | None = None
        self._control: int | None = None
        self._retired: list[int] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._powered = False  # on from boot() until power_cut(): soft resets keep it on
        self._lock = threading.Lock()
        # Host bytes held back while the interpreter cannot take them: while it starts (until its
        # REPL prompt or boot.py/main.py runs) and after a Ctrl-C interrupted code (until the
        # prompt that follows): the unix REPL flushes its input when it switches terminal modes.
        self._held: bytearray | None = None
        self._held_until = 0.0
        self._inject = b""  # sent at the next prompt: Ctrl-A after a soft reset from the raw REPL
        self._raw = False  # the REPL mode last seen on the line
        self._tail = b""
        self._ready = threading.Event()
        self._closed = False
        self.host_bytes = 0  # bytes the host sent on the serial line (delivered to the board or not)
        self._wake_r, self._wake_w = os.pipe()
        self._relay = threading.Thread(target=self._pump, name="virtual-board-relay", daemon=True)
        self._relay.start()
        self.boots = 0  # interpreters started: power-ons and soft resets
        self.soft_resets = 0

    def __repr__(self) -> str:
        return "<VirtualBoard %s %s on %s>" % (self.profile.name, "on" if self.running else "off", self.port)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def powered(self) -> bool:
        """On from boot() until power_cut(), stop() or an interpreter crash; a soft reset keeps it on."""
        return self._powered

    def boot(self, timeout: float = 20.0) -> VirtualBoard:
        """Powers the board on: a fresh interpreter on the flash directory runs boot.py and
        main.py; returns once it takes input (its REPL prompt, or boot.py/main.py running)."""
        with self._lock:
            if self.running:
                raise VirtualBoardError("the board is already running")
            self._powered = True
            self._ready.clear()
            self._spawn(raw=False)
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.02):
            if not self._powered:
                proc = self._proc
                raise VirtualBoardError("micropython exited at boot (%s)" % (proc.returncode if proc else "?"))
            if time.monotonic() > deadline:
                raise VirtualBoardError("the virtual board took no input within %.0f s" % timeout)
        return self

    # Starts an interpreter (the lock held): boot.py, main.py unless `raw`, then the REPL.
    def _spawn(self, raw: bool) -> None:
        master, slave = pty.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        control_r, control_w = os.pipe()
        # "./lib" ends in "/lib" as on a board, where `mpremote mip` looks for its target
        env = dict(os.environ, MICROPYPATH="./lib:.frozen")
        startup = _STARTUP % (control_w, int(raw))
        self._proc = subprocess.Popen([self.binary, "-X", "heapsize=" + self.heap, "-i", "-c", startup],
                                      stdin=slave, stdout=slave, stderr=slave, cwd=self.flash, env=env,
                                      start_new_session=True, pass_fds=(control_w,))
        os.close(slave)
        os.close(control_w)
        self._board_master, self._control = master, control_r
        self._held, self._held_until = bytearray(), float("inf")
        self._inject = b"\x01" if raw else b""
        self._raw = False
        self._tail = b""
        self.boots += 1
        os.write(self._wake_w, b"b")

    def power_cut(self) -> None:
        """SIGKILL: whatever was in RAM is lost; files written so far stay on the flash."""
        with self._lock:
            self._powered = False
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
            self._retire()
        os.write(self._wake_w, b"d")

    # Retires the interpreter's descriptors (the lock held).
    def _retire(self) -> None:
        for fd in (self._board_master, self._control):
            if fd is not None:
                self._retired.append(fd)
        self._board_master = self._control = None
        self._held = None

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
    # How long host bytes wait after a Ctrl-C for the prompt of the REPL (code that catches
    # KeyboardInterrupt and runs on gets them then).
    INTERRUPT_HOLD_S = 2.0

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
        while not self._closed:
            self._close_retired()
            with self._lock:
                board, control, held_until = self._board_master, self._control, self._held_until
            # a port nobody has open reads as hung up at once: look again for a host every 50 ms
            host = self._host_has_port()
            if not host:  # what a host wrote just before it let go is still on the line
                self._from_port(board)
            fds = [self._wake_r] + ([self._port_master] if host else [])
            fds += [fd for fd in (board, control) if fd is not None]
            wait = None if host else 0.05
            if self._held is not None and held_until != float("inf"):
                wait = max(0.0, min(wait if wait is not None else 1.0, held_until - time.monotonic()))
            try:
                ready, _, _ = select.select(fds, [], [], wait)
            except (OSError, ValueError):
                if self._closed:
                    return
                continue
            if self._held is not None and time.monotonic() >= self._held_until and board is not None:
                self._release(board)
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
                continue
            if control is not None and control in ready:
                self._from_control(control, board)
            if board is not None and board in ready:
                self._from_board(board)
            if self._port_master in ready:
                self._from_port(board)

    def _from_board(self, board: int) -> None:
        try:
            data = os.read(board, 4096)
        except OSError:  # the interpreter died: its pty reports EIO
            data = b""
        if not data:
            proc = self._proc
            if proc is not None and proc.poll() is not None:
                self._exited(board, proc.returncode)
            return
        seen = self._tail + data  # a marker may arrive split across reads
        raw, friendly = seen.rfind(_RAW_BANNER), seen.rfind(_FRIENDLY_BANNER)
        if raw != friendly:
            self._raw = raw > friendly
        self._tail = seen[-40:]
        self._to_port(data, board)
        # a prompt: the REPL reads its input now (raw REPL ">", friendly ">>> ")
        if seen.endswith(b">>> ") or self._raw and seen.endswith(b">"):
            self._ready.set()
            if self._inject:
                self._write_board(board, self._inject)
                self._inject = b""
            elif self._held is not None:
                self._release(board)

    # The start-up script's steps: boot.py or main.py runs (the board takes input: its code reads
    # stdin, Ctrl-C interrupts it), or a SystemExit asks for a soft reset.
    def _from_control(self, control: int, board: int | None) -> None:
        try:
            steps = os.read(control, 64)
        except OSError:
            steps = b""
        if not steps:
            with self._lock:
                if self._control == control:
                    self._retired.append(control)
                    self._control = None
            return
        if b"r" in steps:
            self._soft_reset(board)
        elif board is not None:
            self._ready.set()
            if self._held is not None and not self._inject:
                self._release(board)

    # The interpreter ended by itself: a soft reset (Ctrl-D at an empty REPL line) exits with 0,
    # and the board starts again; anything else is a crash, and the board stays off.
    def _exited(self, board: int, code: int) -> None:
        with self._lock:
            if self._board_master != board:
                return
            self._retire()
            if code != 0:
                self._powered = False
        if code == 0:
            self._restart()

    # SystemExit out of boot.py or main.py: the start-up script waits to be replaced.
    def _soft_reset(self, board: int | None) -> None:
        proc = self._proc
        if proc is None or board is None:
            return
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        with self._lock:
            if self._board_master != board:
                return
            self._retire()
        self._restart()

    def _restart(self) -> None:
        self._to_port(_SOFT_REBOOT, -1)
        with self._lock:
            if self._powered and not self._closed and self._board_master is None:
                self.soft_resets += 1
                self._spawn(raw=self._raw)

    def _from_port(self, board: int | None) -> None:
        try:
            data = os.read(self._port_master, 4096)
        except OSError:  # nothing yet, or the host let go of the port
            return
        self.host_bytes += len(data)
        if board is not None and data:
            self._deliver(data, board)

    def _deliver(self, data: bytes, board: int) -> None:
        while data:
            if self._held is not None:
                self._held += data
                return
            cut = data.find(_CTRL_C)
            if cut < 0:
                self._write_board(board, data)
                return
            self._write_board(board, data[:cut])
            data = data[cut + 1:]
            if self._interrupt():
                self._held, self._held_until = bytearray(), time.monotonic() + self.INTERRUPT_HOLD_S
            else:
                self._write_board(board, _CTRL_C)  # the REPL reads it: a line or raw input cleared

    def _release(self, board: int) -> None:
        held, self._held = self._held, None
        if held:
            self._deliver(bytes(held), board)

    def _write_board(self, board: int, data: bytes) -> None:
        try:
            os.write(board, data)
        except OSError:
            pass

    # Ctrl-C while code runs: the unix port catches SIGINT (KeyboardInterrupt) only while it
    # executes code, and dies of it at its REPL, where it reads the byte instead. The interpreter
    # is stopped while its handler is looked up, so the handler cannot change before the signal
    # lands. Returns whether it was signalled.
    def _interrupt(self) -> bool:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return False
        pid = proc.pid
        try:
            os.kill(pid, signal.SIGSTOP)
            try:
                deadline = time.monotonic() + 1.0
                while _proc_state(pid) not in ("T", "t", "Z", None) and time.monotonic() < deadline:
                    time.sleep(0.001)
                caught = _catches_sigint(pid)
                if caught:
                    os.kill(pid, signal.SIGINT)
            finally:
                os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            return False
        return caught


def _proc_state(pid: int) -> str | None:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _catches_sigint(pid: int) -> bool:
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    except OSError:
        pass
    return False


class SerialTap:
    """A board's serial line opened for reading only: the lines the board prints, in `lines`
    (a reader thread), while the host sends nothing (a board on its own; VirtualBoard.host_bytes
    stays as it was). Open it before the board prints what is to be read: a virtual board drops
    its output while nobody has the port open."""

    def __init__(self, port: str) -> None:
        self.fd = os.open(port, os.O_RDONLY | os.O_NOCTTY)
        self.lines: list[str] = []
        self._closed = False
        threading.Thread(target=self._read, name="serial-tap", daemon=True).start()

    def _read(self) -> None:
        tail = b""
        while not self._closed:
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                return
            tail += data
            *done, tail = tail.split(b"\n")
            self.lines += [line.decode(errors="replace").rstrip("\r") for line in done]

    def count(self, prefix: str, since: int = 0) -> int:
        """Lines from index `since` on that start with prefix."""
        return sum(1 for line in self.lines[since:] if line.startswith(prefix))

    def words(self, text: str, since: int = 0) -> list[str] | None:
        """The words of the first line from index `since` on that holds text, from text on (the
        first line after a REPL prompt begins with its ">"); None when there is none yet."""
        for line in self.lines[since:]:
            if text in line:
                return line[line.index(text):].split()
        return None

    def close(self) -> None:
        self._closed = True
        os.close(self.fd)
