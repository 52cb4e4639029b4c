"""The board's serial loop (main.py), run by CPython and by the MicroPython unix port (a board's
heap) on a pseudo-terminal as a board runs it on USB-CDC: frames in, replies out, training epochs
between reads."""
import binascii
import json
import os
import select
import struct
import subprocess
import sys
import tty

import pytest

from s2l import frames as F
from skip2lora.mpyrun import FIRMWARE, unix_command, unix_env

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


def session(fd):
    """A short session on the board's link: model, config, samples, training to DONE."""
    model, _, (X, y), _ = fixed_problem()
    d = F.Decoder()
    hello = exchange(fd, d, F.encode(F.HELLO, 1), F.OK)
    assert json.loads(hello[-1][3])["model"] is None
    requests = [(F.MODEL_BEGIN, json.dumps({"size": len(model), "crc": binascii.crc32(model)}).encode()),
                (F.MODEL_CHUNK, struct.pack("<I", 0) + model), (F.MODEL_END, b""),
                (F.CONFIG, json.dumps(dict(CONFIG, method="skip2-lora", path="float")).encode()),
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


@pytest.mark.parametrize("interpreter", ["cpython", "micropython-unix"])
def test_main_serves_frames_on_usb_cdc(tmp_path, interpreter):
    master, slave = os.openpty()
    tty.setraw(slave)
    board = start_board(tmp_path, slave, interpreter)
    try:
        model = session(master)
        assert (tmp_path / "model.s2lm").read_bytes() == model  # written to "flash"
    finally:
        board.kill()
        board.wait()
        os.close(master)
        os.close(slave)


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
