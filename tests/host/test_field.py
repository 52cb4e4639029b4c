"""The board in the field for a simulated day (skip2lora.bench.fieldday, which a real board runs
too): the board's main.py under the MicroPython unix port with an RP2040's heap (241 KB), the
firmware compiled as a board holds it, the field loop set up by field_config.json, a sensor
replaying fan-env's noisy fine-tune spectra in a shuffled order with a label for one reading in
ten, the log read over the serial protocol mid-day, the process killed at a random reading and
started again from what it saved, then the test part scored with the adapters the day left
against the frozen model. And a field config that cannot run: the board keeps serving."""
import dataclasses
import json
import os
import random
import shutil
import subprocess
import tty
from pathlib import Path

import numpy as np
import pytest
from s2l.protocol import FIELD_CONFIG

from skip2lora import cli
from skip2lora.bench.fieldday import BUDGET_MS, SENSOR, UnixTarget, checks, day_files, field_day, watch_log
from skip2lora.data.catalog import FAN_DATA
from skip2lora.link.board import build, field_config
from skip2lora.link.client import Client
from skip2lora.runtimes.mpyrun import BOARD_HEAP, FIRMWARE, unix_command, unix_env
from skip2lora.train.export import prepare


@pytest.mark.skipif(not Path(FAN_DATA).is_dir(), reason="the cooling-fan dataset is not at ../shared/data")
def test_a_simulated_day_in_the_field(tmp_path, capsys):
    target = UnixTarget(tmp_path)
    try:
        day = field_day(target, prepare("fan-env", progress=False), rng=random.Random())
    finally:
        target.cut()
    capsys.readouterr()
    print("frozen %.1f%%, restored adapters %.1f%% (cut at reading %d), after the day %.1f%%; %s" % (
        100 * day["frozen"], 100 * day["at_cut"]["accuracy"], day["at_cut"]["position"],
        100 * day["after"]["accuracy"], json.dumps(day["log"])))
    failed = [(what, detail) for what, held, detail in checks(day) if not held]
    assert not failed, failed
    assert "the sensor's readings ended" in cli.format_field_log(day["log"])  # the replay's end, as status shows it


def start(flash, lib, port_fd):
    env = dict(unix_env(), MICROPYPATH=str(lib))
    return subprocess.Popen(unix_command(BOARD_HEAP) + ["main.py"], stdin=port_fd, stdout=port_fd,
                            stderr=subprocess.STDOUT, cwd=flash, env=env)


FAILING = {"sensor": {"sensor": "no_such_sensor"}, "label_pins": {"sensor": "sensor", "label_pins": [14, 15]},
           "unknown": {"sensor": "sensor", "budget": 20},
           "both": {"sensor": "sensor", "label_pins": [14, 15], "label_uart": {"tx": 4, "rx": 5}}}
ERRORS = {"sensor": "no_such_sensor", "label_pins": "Pin", "unknown": "unknown setting budget",
          "both": "label_pins or label_uart, not both"}


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
    assert "ended" not in text  # a sensor that goes on
    assert "skipped" not in text and "not kept" not in text
    assert "free heap" not in text  # CPython's field loop: no GC heap to report
    assert "first 43.0 KB, last 42.5 KB, lowest 42.0 KB" in cli.format_field_log(
        dict(log, heap={"first": 43 * 1024, "last": 42.5 * 1024, "low": 42 * 1024}))
    glitches = dict(log, bad=2, bad_reason="sample has 127 features, the model takes 128", refused=1,
                    sensor_errors=3, sensor_error="[Errno 5] EIO")
    text = cli.format_field_log(glitches)
    assert "the sensor failed 3 times, the last with: [Errno 5] EIO" in text
    assert "2 readings skipped, the last because: sample has 127 features" in text and "1 labelled reading not kept" in text


def test_a_small_ring_labelled_at_every_reading_keeps_the_heap(tmp_path):
    """The field loop's memory over a day of work on an RP2040's heap: the shipped rotate data's 250
    readings replayed three times, labelled at every reading, into a ring of 16 (46 wraps, its
    samples file rewritten as often) with an adaptation every 10 readings. The log's free heap after
    the latest adaptation (collected) settles within the first hundred readings (the log's history
    fills) and is the same at reading 300 and at the day's end: a leak of 2 bytes a reading shows."""
    prepared = prepare("rotate", progress=False)
    X, y = prepared.scenario.finetune
    day = dataclasses.replace(prepared.scenario, finetune=(np.tile(X, (3, 1)), np.tile(y, 3)))
    target = UnixTarget(tmp_path)
    target.install(prepared.model_bytes)
    target.put(day_files(day, 24, label_every=1))
    target.put({FIELD_CONFIG: json.dumps(dict(field_config(SENSOR), samples=16, budget_ms=BUDGET_MS)).encode()})
    try:
        port = target.start()
        mid = watch_log(port, lambda log, _: log["samples"] >= 300 or log.get("ended"), 120, lambda text: None)
        end = watch_log(port, lambda log, _: log.get("ended"), 120, lambda text: None)
    finally:
        target.cut()
    n = len(day.finetune[1])
    print("%d adaptations; free heap after them: at reading %d %s, at the end %s" % (
        end["adaptations"], mid["samples"], mid["heap"], end["heap"]))
    assert end["samples"] == end["labels"] == n and end["adaptations"] >= n // 10 - 2
    assert mid["samples"] < n - 300 and abs(end["heap"]["last"] - mid["heap"]["last"]) <= 512
