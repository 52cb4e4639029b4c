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
