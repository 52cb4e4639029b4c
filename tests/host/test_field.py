"""The board in the field for a simulated day: the field loop (firmware/field.py) under the MicroPython
unix port with an RP2040's heap (241 KB), the firmware compiled as a board holds it, a sensor that
replays fan-env's noisy fine-tune spectra in a shuffled order with a label for one reading in ten,
the serial protocol served beside it (HELLO and LOG mid-day), the process killed at a random
moment and started again from what it saved, then the test part scored with the adapters the day
left against the frozen model."""
import json
import os
import random
import shutil
import subprocess
import time
import tty
from pathlib import Path

import numpy as np
import pytest

from skip2lora import cli
from skip2lora.data.catalog import FAN_DATA
from skip2lora.link.board import build, field_config
from skip2lora.link.client import Client
from skip2lora.runtimes.mpyrun import BOARD_HEAP, FIRMWARE, unix_command, unix_env
from skip2lora.train.export import prepare

BUDGET_MS = 20
# a slice is BUDGET_MS plus one sample's work (a frozen forward here: well under 1 ms); the rest is
# room for a shared machine that pauses the process
SLICE_BOUND_MS = BUDGET_MS + 30
MIN_GAIN = 0.20

SENSOR = """
import struct, time
from s2l import storage
N_IN = %d
_f = open("day.bin", "rb")
_labels = open("day_labels.bin", "rb").read()
_buf = bytearray(4 * N_IN)
_k = int(storage.recover("pos", int)[0] or 0)  # a replay goes on after a power cut where it was

def read():
    global _k
    if _k >= len(_labels):
        return None
    _f.seek(4 * N_IN * _k)
    _f.readinto(_buf)
    _k += 1
    storage.write_atomic("pos", str(_k).encode())
    time.sleep_ms(1)
    return struct.unpack("<%%df" %% N_IN, _buf)

def label(x, guess):
    return _labels[_k - 1] if _k %% 10 == 0 else None
"""
# what `skip2lora flash --field` installs, run by field.main() itself (the board's main.py, s2l/serve.py,
# would serve the protocol on after the replay's end; test_a_field_board_that_fails_keeps_serving
# runs that)
CONFIG = dict(field_config("sensor"), budget_ms=BUDGET_MS)
MAIN = "import field\nfield.main()\n"
SCORE = """
import s2l, struct
from s2l.arena import Arena
# an arena of its own: this script is compiled from source on the heap, which the boot arena's kept
# general heap does not plan for
learner = s2l.open("model.s2lm", arena=Arena(96 * 1024))
f, labels, buf = open("test.bin", "rb"), open("test_labels.bin", "rb").read(), bytearray(4 * %d)
correct = 0
for k in range(len(labels)):
    f.readinto(buf)
    correct += learner.predict(struct.unpack("<%df", buf))[0] == labels[k]
print(correct / len(labels))
"""


def start(flash, lib, port_fd=None):
    env = dict(unix_env(), MICROPYPATH=str(lib))
    # the unix port prints an uncaught exception to stdout: off the link, it is kept
    return subprocess.Popen(unix_command(BOARD_HEAP) + ["main.py"], stdin=port_fd or subprocess.DEVNULL,
                            stdout=port_fd or subprocess.PIPE, stderr=subprocess.STDOUT, cwd=flash, env=env)


def score(flash, lib, n_in):
    (Path(flash) / "score.py").write_text(SCORE % (n_in, n_in))
    out = subprocess.run(unix_command(BOARD_HEAP) + ["score.py"], cwd=flash, capture_output=True, text=True,
                         env=dict(unix_env(), MICROPYPATH=str(lib)), timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return float(out.stdout)


def position(flash):
    try:
        return int((Path(flash) / "pos").read_text() or 0)
    except (OSError, ValueError):
        return 0


@pytest.mark.skipif(not Path(FAN_DATA).is_dir(), reason="the cooling-fan dataset is not at ../shared/data")
def test_a_simulated_day_in_the_field(tmp_path, capsys):
    prepared = prepare("fan-env", progress=False)
    s = prepared.scenario
    X, y = s.finetune
    order = np.random.default_rng(24).permutation(len(y))  # the fan's condition changes through the day
    flash, lib = tmp_path / "flash", build("x64", tmp_path / "build")
    flash.mkdir()
    n_in = X.shape[1]
    files = {"model.s2lm": prepared.model_bytes, "day.bin": X[order].astype("<f4").tobytes(),
             "day_labels.bin": y[order].astype(np.uint8).tobytes(), "test.bin": s.test[0].astype("<f4").tobytes(),
             "test_labels.bin": s.test[1].astype(np.uint8).tobytes(), "sensor.py": SENSOR % n_in, "main.py": MAIN,
             "field_config.json": json.dumps(CONFIG)}
    for name, data in files.items():
        (flash / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    frozen = score(flash, lib, n_in)  # no adapter file yet: the model's own

    # the day, with the protocol served beside it; killed at a random reading
    master, slave = os.openpty()
    tty.setraw(slave)
    rng = random.Random()
    cut = rng.randrange(200, 600)
    board = start(flash, lib, master)
    try:
        while position(flash) < 50:
            time.sleep(0.005)
        with Client(os.ttyname(slave)) as link:
            hello = link.hello()
            mid_day = link.field_log()
        while position(flash) < cut:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.02))
        board.kill()
        board.wait(timeout=10)
    finally:
        os.close(master)
        os.close(slave)
    killed_at = position(flash)
    saved = json.loads((flash / "field.json").read_text())
    adapters = (flash / "adapter.s2la").read_bytes() if (flash / "adapter.s2la").exists() else None
    assert hello["model"]["dims"][0] == n_in and mid_day["boots"] == 1

    # power back: the rest of the day from the saved adapters and log
    resumed = tmp_path / "at-restart"
    shutil.copytree(flash, resumed)
    board = start(flash, lib)
    out, _ = board.communicate(timeout=120)
    assert board.returncode == 0, out.decode()
    log = json.loads((flash / "field.json").read_text())
    gained = score(flash, lib, n_in)

    # nothing lost: the saved adapters are what the board restarts with (scored as the restart found
    # them), the log's counts go on from the saved ones
    assert adapters is not None and saved["adaptations"] >= 1, "no adaptation saved before the cut at %d" % killed_at
    at_restart = score(resumed, lib, n_in)
    assert log["boots"] == 2 and "error" not in log
    # the labelled readings before the cut came back from flash, but those the loop still held
    # (up to field.PENDING + 1 while an adaptation ran, and the reading the cut interrupted)
    labelled = killed_at // 10
    assert labelled - 6 <= log["restored"] <= labelled, (log["restored"], killed_at)
    for key in ("samples", "labels", "adaptations", "improved"):
        assert log[key] >= saved[key]
    assert log["samples"] >= len(y) - 100 and log["labels"] >= len(y) // 10 - 10  # unlogged since the last write
    assert sum(log["predictions"]) + log["unknown"] >= log["samples"] - killed_at
    assert log["slice_ms_max"] <= SLICE_BOUND_MS, log
    capsys.readouterr()
    print("frozen %.1f%%, after the cut (restored) %.1f%%, after the day %.1f%%; cut at reading %d; %s" % (
        100 * frozen, 100 * at_restart, 100 * gained, killed_at, json.dumps(log)))
    assert at_restart > frozen  # the restart scored with what was saved, not the frozen model
    assert gained - frozen >= MIN_GAIN, (frozen, gained)


FAILING = {"sensor": {"sensor": "no_such_sensor"}, "label_pins": {"sensor": "sensor", "label_pins": [14, 15]},
           "unknown": {"sensor": "sensor", "budget": 20}}
ERRORS = {"sensor": "no_such_sensor", "label_pins": "Pin", "unknown": "unknown setting budget"}


@pytest.mark.parametrize("case", sorted(FAILING))
def test_a_field_board_that_fails_keeps_serving(tmp_path, case):
    """The board's own main.py (s2l/serve.py) with a field_config.json whose loop cannot start: the
    reason goes to the log, and the protocol is served (HELLO, LOG) as without one."""
    prepared = prepare("rotate", progress=False)
    flash, lib = tmp_path / "flash", build("x64", tmp_path / "build")
    flash.mkdir()
    (flash / "model.s2lm").write_bytes(prepared.model_bytes)
    (flash / "sensor.py").write_text("def read():\n    return None\n")
    (flash / "field_config.json").write_text(json.dumps(FAILING[case]))
    shutil.copy(FIRMWARE / "main.py", flash / "main.py")
    master, slave = os.openpty()
    tty.setraw(slave)
    board = start(flash, lib, master)
    try:
        with Client(os.ttyname(slave)) as link:
            hello = link.hello()
            log = link.field_log()
    finally:
        board.kill()
        board.wait(timeout=10)
        os.close(master)
        os.close(slave)
    assert hello["model"]["dims"][0] == prepared.quantized_net.dims[0]
    assert ERRORS[case] in log["error"], log
    assert "the field loop stopped: " + log["error"] in cli.format_field_log(log)


def test_status_shows_the_field_log():
    log = {"boots": 2, "restored": 31, "samples": 705, "labels": 70, "adaptations": 7, "improved": 6, "slice_ms_max": 21,
           "predictions": [300, 200, 205], "unknown": 0,
           "last": [{"samples": 70, "epochs": 19, "val_before": 0.5, "val_after": 0.9, "trained": True, "ms": 80}]}
    text = cli.format_field_log(log)
    assert "found 31 labelled readings on flash); readings 705, labelled 70" in text and "300, 200, 205" in text
    assert "adaptations 7 (6 improved validation)" in text and "validation 50.0% -> 90.0%" in text
