"""A day in the field, on a real board or the unix port: the board's own main.py runs the field loop
(firmware/field.py) as `flash --field` sets it up, with the scripted sensor firmware/replay_sensor.py
replaying fan-env's noisy fine-tune spectra in a shuffled order and a label for one reading in ten;
the host watches the log over the serial protocol (LOG), cuts the board near a random reading in
200..600 (the log gives the pace), scores the adapters it saved, starts it again, lets it finish
the day and scores the test spectra with what it learned, against the frozen model.

    python -m skip2lora.bench.fieldday --port /dev/ttyACM0     # an RP2040 (--arch xtensawin: an ESP32)
    python -m skip2lora.bench.fieldday                         # the unix port, an RP2040's 241 KB heap

On the unix port the cut is a power cut (the process is killed). On a board it is a Ctrl-C on the
link at that moment (the loop stops between two bytecodes, wherever it was, a flash write too); the
board restarts with a hard reset (machine.reset(), as `mpremote reset` does). Unplugging it instead is the real thing: the checks hold the same.
Scoring runs on the target (a script that builds a learner from the files on flash, writing none).
It prints what it measured and each check, and exits non-zero when one fails."""
import argparse
import ast
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

import numpy as np
import serial

from s2l.protocol import FIELD_CONFIG, FIELD_LOG

from ..files import write_file
from ..link.board import HOST_ARCH, build, field_config, flash_steps, wait_for_port
from ..link.client import Client
from ..runtimes.mpyrun import BOARD_HEAP, FIRMWARE, unix_command, unix_env
from ..train.export import prepare


def firmware_constants(module):
    """The upper-case constants of a firmware module beside main.py (field.py, replay_sensor.py),
    read from its source: they run on a board (machine, files on flash), not here."""
    tree = ast.parse((FIRMWARE / (module + ".py")).read_text())
    return {target.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name) and target.id.isupper()}


SCENARIO = "fan-env"
SENSOR = "replay_sensor"
_replay = firmware_constants(SENSOR)
READINGS, LABELS, POSITION, NO_LABEL = (_replay[k] for k in ("READINGS", "LABELS", "POSITION", "NO_LABEL"))
TEST, TEST_LABELS = "test.bin", "test_labels.bin"
LABEL_EVERY = 10
CUT_RANGE = (200, 600)
BUDGET_MS = 20
# a slice is the budget plus one sample's work (a frozen forward: 10.8 ms on an RP2040); the rest
# is room for a shared machine that pauses the process
SLICE_BOUND_MS = BUDGET_MS + 30
MIN_GAIN = 0.20
# labelled readings the loop may still hold at a cut, not yet on flash: field.py's PENDING, one
# more that ends an adaptation, and the one the cut interrupted
HELD = firmware_constants("field")["PENDING"] + 2
# what a target's flash must not keep from an earlier day (and each one's atomic-write copies)
STATE = (POSITION, FIELD_LOG, "adapter.s2la", "samples.s2ls", FIELD_CONFIG)
CLEAN = "from s2l import storage\nfor n in %r:\n    for s in ('', storage.NEW, storage.OLD):\n        storage.remove(n + s)\n"

# the adapters on flash scored on the test spectra; builds a learner without open(), so that it
# writes nothing (open() rewrites the samples file); prints one JSON line
SCORE = """
import json, struct
from s2l import storage
from s2l.adapterfile import AdapterError
from s2l.arena import Arena
from s2l.learner import Learner, keep_model, read_model
arena = Arena(96 * 1024)
learner = Learner(keep_model(arena, read_model(arena, "model.s2lm")), arena, path="int", holdout=0)
learner.plan(1, fit=True)
try:
    learner.load()
    adapters = True
except AdapterError:
    adapters = False
labels = storage.read(%(labels)r)
f = open(%(test)r, "rb")
buf = bytearray(%(row)d)
correct = 0
for k in range(len(labels)):
    f.readinto(buf)
    q = struct.unpack("<f%(n_in)dh", buf)
    correct += learner.predict([v * q[0] for v in q[1:]])[0] == labels[k]
def recorded(path, parse):
    data = storage.recover(path, parse)[0]
    return parse(data) if data else None
print(json.dumps({"accuracy": correct / len(labels), "adapters": adapters,
                  "position": recorded(%(position)r, int) or 0, "log": recorded(%(log)r, json.loads)}))
"""


def day_files(scenario, seed, label_every=LABEL_EVERY):
    """{name on flash: bytes}: the day's readings in a shuffled order (the fan's condition changes
    through the day) with a label for one in label_every, and the test spectra."""
    X, y = scenario.finetune
    order = np.random.default_rng(seed).permutation(len(y))
    labels = np.full(len(y), NO_LABEL, np.uint8)
    labels[label_every - 1::label_every] = y[order][label_every - 1::label_every]
    Xt, yt = scenario.test
    return {READINGS: X[order].astype("<f4").tobytes(), LABELS: labels.tobytes(),
            TEST: test_rows(Xt), TEST_LABELS: yt.astype(np.uint8).tobytes()}


def test_rows(X):
    """The test spectra as the score script reads them: a row's float32 scale, then its values as
    int16 multiples of it (within 1/65534 of the row's largest value; half float32's flash, so that
    a day fits a Pico W's 848 KB filesystem beside the firmware)."""
    scale = (np.maximum(np.abs(X).max(1), np.finfo(np.float32).tiny) / 32767).astype(np.float32)
    q = np.clip(np.round(X / scale[:, None]), -32767, 32767).astype("<i2")
    return b"".join(s.astype("<f4").tobytes() + row.tobytes() for s, row in zip(scale, q))


def score_script(n_in):
    return SCORE % dict(labels=TEST_LABELS, test=TEST, row=4 + 2 * n_in, n_in=n_in, position=POSITION, log=FIELD_LOG)


class UnixTarget:
    """The board's main.py under the MicroPython unix port (`heap`: a board's), a folder as its flash
    and the firmware compiled by mpy-cross as a board holds it, on a pty's far end."""

    def __init__(self, work_dir, heap=BOARD_HEAP):
        self.work, self.heap = Path(work_dir), heap
        self.flash = self.work / "flash"
        self.flash.mkdir(parents=True, exist_ok=True)
        self.lib = build(HOST_ARCH, self.work / "build")
        self.proc = self.pty = None

    def install(self, model_bytes):
        """The board's main.py and the model on its flash; the firmware is in lib."""
        self.put({"main.py": (FIRMWARE / "main.py").read_bytes(), "model.s2lm": model_bytes})

    def put(self, files):
        for name, data in files.items():
            (self.flash / name).write_bytes(data)

    def script(self, source, timeout=300):
        (self.flash / "script.py").write_text(source)
        out = subprocess.run(unix_command(self.heap) + ["script.py"], cwd=self.flash, capture_output=True,
                             text=True, env=self._env(), timeout=timeout)
        if out.returncode:
            raise RuntimeError("the script failed on the unix port: %s" % (out.stdout + out.stderr))
        return out.stdout

    def _env(self):
        return dict(unix_env(), MICROPYPATH=str(self.lib))

    def start(self):
        """Power on: main.py runs; returns the port to open."""
        master, slave = os.openpty()
        tty.setraw(slave)
        self.pty = (master, slave)
        # stdout on the link, as on a board; an uncaught exception goes there too
        self.proc = subprocess.Popen(unix_command(self.heap) + ["main.py"], stdin=master, stdout=master,
                                     stderr=subprocess.DEVNULL, cwd=self.flash, env=self._env())
        return os.ttyname(slave)

    def cut(self):
        """Power off, wherever the loop was."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            for fd in self.pty:
                os.close(fd)
            self.proc = self.pty = None


class SerialTarget:
    """A board on a serial port, driven with mpremote (as `skip2lora flash` does)."""

    def __init__(self, port, work_dir, arch="armv6m"):
        self.port, self.work = port, Path(work_dir)
        self.lib = build(arch, self.work / "build")

    def _mpremote(self, *args, capture=False):
        cmd = [sys.executable, "-m", "mpremote", "connect", self.port] + list(args)
        out = subprocess.run(cmd, capture_output=capture, text=True, timeout=600)
        if out.returncode:
            raise RuntimeError("mpremote failed: %s%s" % (" ".join(args[:2]), (": " + out.stderr) if capture else ""))
        return out.stdout

    def install(self, model_bytes):
        """The firmware and the model as `skip2lora flash` installs them (no field config)."""
        model = self.work / "model.s2lm"
        model.write_bytes(model_bytes)
        for step in flash_steps(self.port, self.lib, model):  # the last one resets the board
            if subprocess.run(step).returncode:
                raise RuntimeError("mpremote step failed: %s" % " ".join(step))
        wait_for_port(self.port)

    def put(self, files):
        """`files` ({name: bytes}) on the board's flash, when they fit."""
        size = sum(map(len, files.values()))
        # asked through the REPL: between mpremote commands the board sits there, main.py stopped
        free = int(self.script("import os\ns = os.statvfs('/')\nprint(s[0] * s[4])").split()[-1])
        if free < size:
            raise RuntimeError("%d KB of files for a board with %d KB of flash free" % (size // 1024, free // 1024))
        for name, data in files.items():
            (self.work / name).write_bytes(data)
            self._mpremote("fs", "cp", str(self.work / name), ":" + name)

    def script(self, source):
        path = self.work / "script.py"
        path.write_text(source)
        return self._mpremote("run", str(path), capture=True)

    def start(self):
        """A hard reset: main.py runs as at power on."""
        self._mpremote("reset")
        wait_for_port(self.port)
        return self.port

    def cut(self):
        with serial.Serial(self.port, 115200) as link:
            link.write(b"\r\x03\x03")  # KeyboardInterrupt: the loop stops where it is


def _last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def watch_log(port, until, stall, progress):
    """LOG polled over the protocol until until(log, seconds since start) says so; the last log.
    Fails when the log's readings stay the same for `stall` seconds."""
    t0, shown = time.monotonic(), None
    with Client(port, retries=10) as board:
        board.hello()
        moved = time.monotonic()
        while True:
            log = board.field_log()
            if "error" in log:
                raise RuntimeError("the field loop stopped: %s" % log["error"])
            now = time.monotonic()
            if log.get("samples") != shown:
                shown, moved = log.get("samples"), now
                progress("readings %s after %.1f s" % (shown, now - t0))
            if until(log, now - t0):
                return log
            if now - moved > stall:
                raise RuntimeError("no new reading in %.0f s (the log: %s)" % (stall, json.dumps(log)))
            time.sleep(0.05)


def field_day(target, prepared, seed=24, rng=None, stall=120, progress=lambda text: None):
    """The day on `target` (UnixTarget or SerialTarget): returns what was measured."""
    rng = rng or random.Random()
    s = prepared.scenario
    n, n_in = len(s.finetune[1]), s.finetune[0].shape[1]
    files = day_files(s, seed)
    progress("installing the firmware and the model")
    target.install(prepared.model_bytes)
    target.script(CLEAN % (STATE + tuple(files),))  # an earlier day's, if any
    progress("copying %d readings and %d test spectra" % (n, len(s.test[1])))
    target.put(files)
    score = score_script(n_in)
    frozen = _last_json(target.script(score))
    target.put({FIELD_CONFIG: json.dumps(dict(field_config(SENSOR), budget_ms=BUDGET_MS)).encode()})

    cut_at = rng.randrange(*CUT_RANGE)
    progress("the day starts; a cut near reading %d" % cut_at)
    port = target.start()
    seen = []  # (seconds, readings) as the log's count moved: the log is written every 100 readings

    def near_cut(log, elapsed):  # readings since the last write: by the pace seen
        if log.get("ended"):
            raise RuntimeError("the day ended before the cut")
        k = log.get("samples", 0)
        if k and (not seen or k != seen[-1][1]):
            seen.append((elapsed, k))
        if len(seen) < 2:
            return False
        (t1, k1), (t2, k2) = seen[0], seen[-1]
        return k2 + (k2 - k1) / (t2 - t1) * (elapsed - t2) >= cut_at

    watch_log(port, near_cut, stall, progress)
    time.sleep(rng.uniform(0, 0.05))
    target.cut()
    at_cut = _last_json(target.script(score))
    progress("cut at reading %d; the day goes on" % at_cut["position"])
    port = target.start()
    end = watch_log(port, lambda log, _: log.get("ended"), stall, progress)
    target.cut()
    after = _last_json(target.script(score))
    labels = np.frombuffer(files[LABELS], np.uint8)
    return {"readings": n, "frozen": frozen["accuracy"], "at_cut": at_cut, "after": after, "log": end,
            "labelled_before_cut": int((labels[:at_cut["position"]] != NO_LABEL).sum()),
            "labelled": int((labels != NO_LABEL).sum())}


def checks(day):
    """[(what, held, detail)]: the issue's conditions on what field_day measured."""
    saved, log, at_cut = day["at_cut"]["log"] or {}, day["log"], day["at_cut"]
    labelled, gain = day["labelled_before_cut"], day["after"]["accuracy"] - day["frozen"]
    return [
        ("adapters saved before the cut", at_cut["adapters"] and saved.get("adaptations", 0) >= 1,
         "%d adaptations logged" % saved.get("adaptations", 0)),
        ("the restart scores above the frozen model with them", at_cut["accuracy"] > day["frozen"],
         "%.1f%% vs %.1f%%" % (100 * at_cut["accuracy"], 100 * day["frozen"])),
        ("labelled readings back from flash (all but those the loop held)",
         labelled - HELD <= log.get("restored", -1) <= labelled, "%s of %d" % (log.get("restored"), labelled)),
        ("every reading replayed, the log's counts going on from the saved ones",
         day["after"]["position"] == day["readings"] and log.get("boots") == 2 and
         log.get("samples") == saved.get("samples", 0) + day["readings"] - at_cut["position"] and
         log.get("labels") == saved.get("labels", 0) + day["labelled"] - labelled and
         all(log.get(k, -1) >= saved.get(k, 0) for k in ("adaptations", "improved")),
         "boots %s; readings %s, labels %s" % (log.get("boots"), log.get("samples"), log.get("labels"))),
        ("no slice past %d ms" % SLICE_BOUND_MS, log.get("slice_ms_max", 1e9) <= SLICE_BOUND_MS,
         "longest %s ms (budget %d)" % (log.get("slice_ms_max"), BUDGET_MS)),
        ("the day beats the frozen model by %d points" % (100 * MIN_GAIN), gain >= MIN_GAIN,
         "%+.1f points" % (100 * gain)),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m skip2lora.bench.fieldday", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", help="a board's serial port (default: the unix port on this machine)")
    p.add_argument("--arch", default="armv6m", help="the board's mpy-cross arch: armv6m (RP2040), xtensawin (ESP32)")
    p.add_argument("--heap", default=BOARD_HEAP, help="the unix port's heap (default %(default)s, an RP2040's)")
    p.add_argument("--seed", type=int, default=24, help="the order of the day's readings")
    p.add_argument("--json", help="write the measurements to this file")
    args = p.parse_args(argv)
    prepared = prepare(SCENARIO, progress=False)
    with tempfile.TemporaryDirectory(prefix="s2l-fieldday-") as work:
        target = SerialTarget(args.port, work, args.arch) if args.port else UnixTarget(work, args.heap)
        try:
            day = field_day(target, prepared, args.seed, progress=lambda text: print("  " + text, flush=True))
        finally:
            if isinstance(target, UnixTarget):
                target.cut()
    print("frozen %.1f%%; cut at reading %d: restored adapters %.1f%%; after the day %.1f%%" % (
        100 * day["frozen"], day["at_cut"]["position"], 100 * day["at_cut"]["accuracy"], 100 * day["after"]["accuracy"]))
    failed = 0
    for what, held, detail in checks(day):
        print("%s  %s: %s" % ("ok  " if held else "FAIL", what, detail))
        failed += not held
    if args.json:
        write_file(args.json, json.dumps(day, indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
