"""The board's serial loop (main.py), run by CPython and by the MicroPython unix port (a board's
heap) on a pseudo-terminal as a board runs it on USB-CDC: frames in, replies out, training epochs
between reads."""
import binascii
import contextlib
import json
import os
import select
import struct
import subprocess
import sys
import time
import tty

import pytest

from s2l import frames as F
from skip2lora.runtimes.mpyrun import FIRMWARE, unix_command, unix_env

from .test_protocol import samples_payload
from .test_tuner import CONFIG, fixed_problem


def exchange(fd, decoder, frame, until, timeout=20.0):
    """Write a frame; read frames until one has type `until`; return all read."""
    os.write(fd, frame)
    got = []
    while not any(f[1] == until for f in got):
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, "main.py went silent; so far %r" % got
        got += [e for e in decoder.feed(os.read(fd, 4096)) if e[0] == "frame"]
    return got


def session(fd, **config):
    """A short session on the board's link: model, config (CONFIG's, with `config`), samples,
    training to DONE."""
    model, _, (X, y), _ = fixed_problem()
    d = F.Decoder()
    hello = exchange(fd, d, F.encode(F.HELLO, 1), F.OK)
    assert json.loads(hello[-1][3])["model"] is None
    requests = [(F.MODEL_BEGIN, json.dumps({"size": len(model), "crc": binascii.crc32(model)}).encode()),
                (F.MODEL_CHUNK, struct.pack("<I", 0) + model), (F.MODEL_END, b""),
                (F.CONFIG, json.dumps(dict(dict(CONFIG, method="skip2-lora", path="float"), **config)).encode()),
                (F.SAMPLES, samples_payload(X, y, F.KIND_FINETUNE))]
    for seq, (ftype, payload) in enumerate(requests, 2):
        assert exchange(fd, d, F.encode(ftype, seq, payload), F.OK)[-1][1] == F.OK
    trained = exchange(fd, d, F.encode(F.TRAIN, 9), F.DONE)
    assert [f[1] for f in trained] == [F.OK] + [F.PROGRESS] * CONFIG["epochs"] + [F.DONE]
    return model


def start_board(cwd, stdio, interpreter="cpython", **env):
    if interpreter == "cpython":
        cmd, env = [sys.executable], dict(os.environ, PYTHONPATH=os.pathsep.join([str(FIRMWARE), str(cwd)]), **env)
    else:  # the MicroPython unix port with a board's heap: main.py's loop as a board runs it
        cmd, env = unix_command(), dict(unix_env(), **env)
    return subprocess.Popen(cmd + [str(FIRMWARE / "main.py")], stdin=stdio, stdout=stdio,
                            stderr=subprocess.PIPE, cwd=cwd, env=env)


@contextlib.contextmanager
def board_on_pty(cwd, interpreter):
    """main.py with a pty's far end as its stdin and stdout (USB-CDC): yields the near end."""
    master, slave = os.openpty()
    tty.setraw(slave)
    board = start_board(cwd, slave, interpreter)
    try:
        yield master
    finally:
        board.kill()
        board.wait()
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("interpreter", ["cpython", "micropython-unix"])
def test_main_serves_frames_on_usb_cdc(tmp_path, interpreter):
    with board_on_pty(tmp_path, interpreter) as master:
        model = session(master)
        assert (tmp_path / "model.s2lm").read_bytes() == model  # written to "flash"


# machine.UART as a board has it, over a pseudo-terminal (the test's stand-in for the UART pins)
FAKE_MACHINE = """
import json, os
class Pin:
    def __init__(self, n):
        self.n = n
class UART:
    def __init__(self, id, baudrate, tx, rx):
        self.fd = os.open(os.environ["FAKE_UART"], os.O_RDWR | os.O_NOCTTY)
        with open("uart-opened.json", "w") as f:
            json.dump([id, baudrate, tx.n, rx.n], f)
    def fileno(self):
        return self.fd
    def any(self):
        import fcntl, struct, termios
        return struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"    "))[0]
    def readinto(self, buf):
        data = os.read(self.fd, len(buf))
        buf[:len(data)] = data
        return len(data)
    def write(self, data):
        return os.write(self.fd, data)
"""


def test_main_serves_frames_on_the_uart_of_uart_json(tmp_path):
    (tmp_path / "machine.py").write_text(FAKE_MACHINE)
    (tmp_path / "uart.json").write_text(json.dumps({"id": 1, "baudrate": 921600, "tx": 4, "rx": 5}))
    master, slave = os.openpty()
    tty.setraw(slave)
    board = start_board(tmp_path, subprocess.DEVNULL, FAKE_UART=os.ttyname(slave))
    try:
        session(master)
        assert json.loads((tmp_path / "uart-opened.json").read_text()) == [1, 921600, 4, 5]
    finally:
        board.kill()
        board.wait()
        os.close(master)
        os.close(slave)


def test_a_bad_uart_json_is_a_clear_error(tmp_path):
    (tmp_path / "machine.py").write_text(FAKE_MACHINE)
    for text, message in (('{"id": 0', "uart.json is not JSON"), ('{"tx": 0}', "uart.json needs 'rx'")):
        (tmp_path / "uart.json").write_text(text)
        board = start_board(tmp_path, subprocess.DEVNULL)
        _, err = board.communicate(timeout=20)
        assert board.returncode != 0 and message in err.decode(), err.decode()


# A frame in progress that stops arriving costs training at most link.GAP_MS (plus one epoch); the
# tests allow this much more, for a loaded machine
STALL_BOUND = 1.5


def frames_for(fd, decoder, seconds):
    """Every frame the board sends in the next `seconds`, each with the time it arrived."""
    got, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], end - time.monotonic())
        if ready:
            now = time.monotonic()
            got += [(now,) + e[1:] for e in decoder.feed(os.read(fd, 65536)) if e[0] == "frame"]
    return got


def first_progress(fd, decoder, seconds):
    """Whether a PROGRESS frame comes within `seconds` (the first epoch's time varies with the load)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], end - time.monotonic())
        if ready and any(e[0] == "frame" and e[1] == F.PROGRESS for e in decoder.feed(os.read(fd, 65536))):
            return True
    return False


def longest_silence(frames, start, end):
    times = [start] + [f[0] for f in frames if f[1] == F.PROGRESS] + [end]
    return max(b - a for a, b in zip(times, times[1:]))


GARBAGE = {
    "a stray 0x7E and a byte of noise": bytes([F.START, 0x55]),
    "a frame cut short (its host crashed)": F.encode(F.HELLO, 99)[:4],
    # a header whose length field says 1,000 payload bytes, and nothing more
    "a damaged header": bytes([F.START]) + struct.pack("<BHH", F.HELLO, 99, 1000),
}


@pytest.mark.parametrize("garbage", sorted(GARBAGE))
@pytest.mark.parametrize("interpreter", ["cpython", "micropython-unix"])
def test_garbage_during_training_stops_neither_training_nor_answers(tmp_path, interpreter, garbage):
    with board_on_pty(tmp_path, interpreter) as master:
        session(master, holdout=0)  # unguarded: no early stop
        d = F.Decoder()
        _, _, (X, y), _ = fixed_problem()
        for seq in range(10, 19):  # 200 samples: epochs of several ms, a few hundred in this test
            assert exchange(master, d, F.encode(F.SAMPLES, seq, samples_payload(X, y, F.KIND_FINETUNE)), F.OK)
        assert exchange(master, d, F.encode(F.TRAIN, 20, b'{"epochs": 10000}'), F.OK)
        assert first_progress(master, d, 10.0), "training did not start"
        os.write(master, GARBAGE[garbage])
        t0 = time.monotonic()
        quiet = frames_for(master, d, 2.0)  # nothing sent meanwhile: the board is on its own
        assert longest_silence(quiet, t0, time.monotonic()) < STALL_BOUND, "training stopped after %s" % garbage
        for seq, ftype in ((21, F.HELLO), (22, F.STATUS)):
            t0 = time.monotonic()
            os.write(master, F.encode(ftype, seq))
            got = frames_for(master, d, STALL_BOUND)
            answers = [f for f in got if f[2] == seq and f[1] == F.OK]
            assert answers, "no answer to %#x within %.1f s after %s" % (ftype, STALL_BOUND, garbage)
            assert json.loads(answers[0][3]).get("busy", True), "training ended early"
            assert longest_silence(got, t0, time.monotonic()) < STALL_BOUND
        stop = [f for f in exchange(master, d, F.encode(F.RESET, 23), F.OK) if f[1] == F.OK]
        assert json.loads(stop[0][3]) == {"stopped": True}


@pytest.mark.parametrize("interpreter", ["cpython", "micropython-unix"])
def test_a_frame_whose_bytes_stop_for_the_gap_is_dropped(tmp_path, interpreter):
    with board_on_pty(tmp_path, interpreter) as master:
        d = F.Decoder()
        exchange(master, d, F.encode(F.HELLO, 1), F.OK)  # up and serving
        for pause, answered in ((0.5, False), (0.0, True)):
            frame = F.encode(F.STATUS, 2 + answered)
            os.write(master, frame[:5])
            time.sleep(pause)  # far past link.GAP_MS: the board drops the half it has
            os.write(master, frame[5:])
            got = frames_for(master, d, 1.0)
            assert bool(got) == answered, got
