"""The field loop (firmware/field.py) under the three runtimes, fed a sensor that glitches: a NaN
reading, a short one, a label outside the model's classes and two bus errors among good readings.
Each is counted with its reason and the loop goes on to adapt on the rest (the whole day on a board's heap:
tests/host/test_field.py)."""
import json

from .test_tuner import fixed_problem

SCRIPT = """
import json
import field
from s2l.arena import Arena
data = json.loads(open("data.json").read())
X, y = data["X"], data["y"]
readings = [X[k] for k in range(12)]
labels = [y[k] for k in range(12)]
readings[3] = [float("nan")] + readings[3][1:]
readings[5] = readings[5][:-1]
labels[7] = 99
stream = iter(readings)
feed = iter(labels)
calls = [0]
def read():  # the bus fails at the 2nd and 3rd call: no reading lost, asked again
    calls[0] += 1
    if calls[0] in (2, 3):
        raise OSError(5)
    return next(stream, None)
field.RETRY_MS = 1
learner = field.run(read, label=lambda x, guess: next(feed), labels=4, serve=False,
                    budget_ms=60000,  # each adaptation whole, in one slice: a slow runtime too
                    arena=Arena(64 * 1024), samples=8, holdout=0)
print(json.dumps(field.read_log(field.FIELD_LOG)))
"""


def test_glitching_readings_are_skipped_and_the_loop_goes_on(run):
    model, _, (X, y), _ = fixed_problem()
    files = {"model.s2lm": model, "data.json": json.dumps({"X": X.tolist(), "y": y.tolist()}).encode()}
    log = json.loads(run(SCRIPT, files=files).strip().splitlines()[-1])
    assert log["samples"] == 12 and log["bad"] == 2 and "features" in log["bad_reason"]
    assert log["sensor_errors"] == 2 and "5" in log["sensor_error"]
    assert log["labels"] == 10 and log["refused"] == 1  # the two skipped readings were never labelled
    assert log["adaptations"] >= 2 and log["ended"]


BOUND = """
import json
import field
from s2l import frames as F

def largest(n_classes):  # the largest log a loop writes: counts of 3 years at a reading a second
    log = field.Log("log.json", n_classes, 10 ** 6)
    d = log.data
    for key in ("samples", "labels", "adaptations", "improved", "unknown", "bad", "refused", "sensor_errors"):
        d[key] = 10 ** 8
    d["predictions"] = [10 ** 8] * n_classes
    d["bad_reason"] = d["sensor_error"] = "x" * field.REASON  # the longest field.run keeps
    for k in range(field.HISTORY + 2):
        log.adapted({"epochs": 10 ** 4, "val_start": 1 / 3, "val": 2 / 3, "trained": True}, 10 ** 4, 10 ** 6, 10 ** 6)
    log.write()
    field.failed("E" * 5000, "log.json")
    data = open("log.json").read()
    kept = json.loads(data)
    return [len(data), len(kept["last"]), kept["last"][-1]["val_after"] if kept["last"] else None, sorted(kept)]

print(json.dumps([F.MAX_PAYLOAD, largest(10), largest(32)]))
"""


def test_the_log_always_fits_one_reply(run):
    # LOG answers in one frame: a 10-class model's largest log (every count at 10^8, both reasons and
    # an error) gives its oldest adaptations way and keeps the newest; a 32-class one's, every one
    limit, ten, many = json.loads(run(BOUND).strip().splitlines()[-1])
    assert ten[0] <= limit and ten[1] >= 1 and ten[2] == 0.6667 and "error" in ten[3] and "bad_reason" in ten[3]
    assert many[0] <= limit and "error" in many[3] and "predictions" in many[3]
    print("largest logs: 10 classes %d bytes, 32 classes %d bytes (%d adaptations kept); limit %d" % (
        ten[0], many[0], many[1], limit))


END = """
import json, os
import field
from s2l.arena import Arena
data = json.loads(open("data.json").read())
stream = iter(data["X"][:6])
feed = iter(data["y"][:6])
learner = field.run(lambda: next(stream, None), label=lambda x, guess: next(feed), labels=4, serve=False,
                    budget_ms=0, arena=Arena(64 * 1024), samples=8, holdout=0)
log = field.read_log(field.FIELD_LOG)
print(json.dumps([log["adaptations"], learner.busy, learner.tuner.n_samples, "adapter.s2la" in os.listdir()]))
"""


def test_the_recordings_end_ends_the_adaptation_and_keeps_it(run):
    # six labelled readings: an adaptation starts at the 4th in slices of one sample, the 5th and 6th
    # wait for it, and the recording ends while it runs: it ends with its best, saved and logged, and
    # the two waiting readings are kept
    model, _, (X, y), _ = fixed_problem()
    files = {"model.s2lm": model, "data.json": json.dumps({"X": X.tolist(), "y": y.tolist()}).encode()}
    assert json.loads(run(END, files=files).strip().splitlines()[-1]) == [1, False, 6, True]
