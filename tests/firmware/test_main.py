"""The board's serial loop (main.py), run by CPython on a pseudo-terminal as a board runs it on
USB-CDC: frames in, replies out, training epochs between reads."""
import binascii
import json
import os
import select
import struct
import subprocess
import sys
import tty

from s2l import frames as F
from skip2lora.mpyrun import FIRMWARE

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


def test_main_serves_frames_on_a_serial_port(tmp_path):
    master, slave = os.openpty()
    tty.setraw(slave)
    board = subprocess.Popen([sys.executable, str(FIRMWARE / "main.py")], stdin=slave, stdout=slave,
                             cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(FIRMWARE)))
    try:
        model, _, (X, y), _ = fixed_problem()
        d = F.Decoder()
        hello = exchange(master, d, F.encode(F.HELLO, 1), F.OK)
        assert json.loads(hello[-1][3])["model"] is None
        requests = [(F.MODEL_BEGIN, json.dumps({"size": len(model), "crc": binascii.crc32(model)}).encode()),
                    (F.MODEL_CHUNK, struct.pack("<I", 0) + model), (F.MODEL_END, b""),
                    (F.CONFIG, json.dumps(dict(CONFIG, method="skip2-lora")).encode()),
                    (F.SAMPLES, samples_payload(X, y, F.KIND_FINETUNE))]
        for seq, (ftype, payload) in enumerate(requests, 2):
            assert exchange(master, d, F.encode(ftype, seq, payload), F.OK)[-1][1] == F.OK
        trained = exchange(master, d, F.encode(F.TRAIN, 9), F.DONE)
        assert [f[1] for f in trained] == [F.OK] + [F.PROGRESS] * CONFIG["epochs"] + [F.DONE]
        assert (tmp_path / "model.s2lm").read_bytes() == model  # written to "flash"
    finally:
        board.kill()
        board.wait()
        os.close(master)
        os.close(slave)
