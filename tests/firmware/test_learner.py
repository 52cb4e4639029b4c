"""The device-side API (s2l/learner.py) under CPython, the WebAssembly MicroPython and the unix port:
a ring that overwrites its oldest sample, an adaptation cut into slices that returns where a whole
one would, a sample added mid-adaptation ending it with the guard's best, save and open restoring
the adapters, forget, and the spectrum of the example ADC sensor against numpy's."""
import json

import numpy as np

from .test_tuner import fixed_problem

SCRIPT = """
import json, struct
import s2l
from s2l.arena import Arena
data = json.loads(open("data.json").read())
X, y = data["X"], data["y"]

def opened(**kw):
    return s2l.open("model.s2lm", arena=Arena(64 * 1024), samples=8, **kw)

out = {}
l = opened(holdout=0.25, patience=0, epochs=6)
for k in range(12):  # 12 into a ring of 8: rows 0..3 now hold samples 8..11
    l.add(X[k], y[k])
t = l.tuner
out["ring"] = [t.n_samples, t.oldest, list(t.labels), list(t.cached)]
whole = opened(holdout=0.25, patience=0, epochs=6)
for k in range(12):
    whole.add(X[k], y[k])
whole.adapt()
slices = 0
while not l.adapt(budget_ms=0):  # a slice a sample: the smallest budget there is
    slices += 1
out["slices"] = slices
untimed = lambda r: [r[k] for k in ("epochs", "kept", "val_start", "val", "restores", "stopped")]
out["same"] = bytes(l.tuner.w) == bytes(whole.tuner.w) and untimed(l.result) == untimed(whole.result)
out["predict"] = [l.predict(x) for x in X[12:16]]
l.start()
l.step(); l.step()
l.add(X[12], y[12])  # mid-adaptation: it ends, the guard puts back the best adapters (the start's here)
out["ended"] = [l.busy, l.result["kept"], bytes(l.tuner.w) == bytes(whole.tuner.w)]
out["saved"] = l.save()
again = opened()
out["restored"] = bytes(again.tuner.w) == bytes(l.tuner.w)
again.forget()
out["forgot"] = [again.tuner.n_samples, bytes(again.tuner.w) == bytes(opened().tuner.w), opened().predict(X[0])]
print(json.dumps(out))
"""


def test_the_learner_api(run, tmp_path):
    model, _, (X, y), _ = fixed_problem()
    files = {"model.s2lm": model, "data.json": json.dumps({"X": X.tolist(), "y": y.tolist()}).encode()}
    out = json.loads(run(SCRIPT, files=files).strip().splitlines()[-1])
    assert out["ring"] == [8, 4, [int(v) for v in y[8:12]] + [int(v) for v in y[4:8]], [0] * 8]
    assert out["slices"] >= 6 * 6  # at least a slice a trained sample, and the result is a whole one's
    assert out["same"]
    assert all(0 <= c < 4 and 0.25 <= p <= 1.0 for c, p in out["predict"])
    assert out["ended"][0] is False and out["ended"][1] == 6 and out["ended"][2]
    assert out["saved"] > 0 and out["restored"]
    n, same, predicted = out["forgot"]
    assert n == 0 and same and predicted[0] >= 0


SPECTRUM = """
import math, adc_sensor
x = [math.sin(2 * math.pi * 50 * k / 1024) + 0.3 * math.cos(2 * math.pi * 201 * k / 1024) + (k %% 7) * 0.01
     for k in range(1024)]
print(" ".join("%%.5f" %% v for v in adc_sensor.spectrum(x)))
"""


def test_the_example_sensor_gives_the_fan_features(run):
    x = np.array([np.sin(2 * np.pi * 50 * k / 1024) + 0.3 * np.cos(2 * np.pi * 201 * k / 1024) + (k % 7) * 0.01
                  for k in range(1024)])
    mag = np.abs(np.fft.rfft(x - x.mean()))[1:513] * 2 / 1024
    want = np.log1p(mag).reshape(128, 4).mean(axis=1)  # host/skip2lora/data/fan.py: log1p, then bins averaged
    got = np.array(run(SPECTRUM.replace("%%", "%")).split(), dtype=float)
    assert np.abs(got - want).max() < 1e-3
