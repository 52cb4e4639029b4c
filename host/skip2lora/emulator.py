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
import struct
import subprocess
import sys
import tempfile
import threading
import tty

from .mpyrun import BOARD_HEAP, FIRMWARE, REPO, _node, unix_command, unix_env

RUNTIMES = ("micropython", "cpython", "micropython-unix")
SERVE_CPYTHON = """
import struct, sys
from s2l.protocol import Core
core = Core(sys.argv[1])
stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
while True:
    head = stdin.read(5)
    if len(head) < 5:
        break
    n = struct.unpack("<I", head[1:])[0]
    out = core.feed(stdin.read(n)) if head[:1] == b"F" else core.work()
    stdout.write(struct.pack("<BI", core.busy, len(out)) + out)
    stdout.flush()
"""


class BoardProcess:
    """The protocol core in a child process: feed(bytes) and work() -> reply bytes; .busy."""

    def __init__(self, runtime="micropython"):
        if runtime not in ("micropython", "cpython"):
            raise ValueError("a BoardProcess runs micropython or cpython, not %r" % runtime)
        self.flash = tempfile.TemporaryDirectory(prefix="s2l-flash-")
        if runtime == "micropython":
            cmd = [_node(), str(REPO / "tools" / "mpy_serve.mjs"), str(FIRMWARE)]
        else:
            cmd = [sys.executable, "-c", SERVE_CPYTHON, self.flash.name]
        env = dict(os.environ, PYTHONPATH=str(FIRMWARE))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.busy = False

    def _call(self, kind, data=b""):
        self.proc.stdin.write(kind + struct.pack("<I", len(data)) + data)
        self.proc.stdin.flush()
        head = self.proc.stdout.read(5)
        if len(head) < 5:
            raise RuntimeError("the emulated board exited (code %s)" % self.proc.poll())
        self.busy = bool(head[0])
        n = struct.unpack("<I", head[1:])[0]
        return self.proc.stdout.read(n) if n else b""

    def feed(self, data):
        return self._call(b"F", data)

    def work(self):
        return self._call(b"W")

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
        self.proc = subprocess.Popen(unix_command(heap) + [str(FIRMWARE / "main.py")], stdin=master, stdout=master,
                                     stderr=self.log, cwd=self.flash.name, env=env)

    def close(self):
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()
        self.flash.cleanup()
        self.build.cleanup()


class Emulator:
    """A board behind a pty: `port` is the path to open. heap: the unix port's GC heap."""

    def __init__(self, runtime="micropython", heap=BOARD_HEAP):
        if runtime not in RUNTIMES:
            raise ValueError("unknown runtime %r (one of %s)" % (runtime, ", ".join(RUNTIMES)))
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
        self.board = BoardProcess(runtime)
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
                reply = self.board.work()
            else:
                continue
            if reply:
                os.write(self.master, reply)
                self.bytes_out += len(reply)

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
