"""The device-side API (s2l/learner.py) under CPython, the WebAssembly MicroPython and the unix port:
a ring that overwrites its oldest sample, an adaptation cut into slices that returns where a whole
one would, a sample added mid-adaptation ending it with the guard's best, save and open restoring
the adapters, the samples kept on flash across a power cut, and forget (the example ADC sensor's
spectrum: test_spectrum.py)."""
import json

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
whole = opened(holdout=0.25, patience=0, epochs=6)  # before l adds: it starts without l's samples
for k in range(12):  # 12 into a ring of 8: rows 0..3 now hold samples 8..11
    l.add(X[k], y[k])
t = l.tuner
out["ring"] = [t.n_samples, t.oldest, list(t.labels), list(t.cached)]
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


CUT = """
import json, os
import s2l
from s2l.arena import Arena
data = json.loads(open("data.json").read())
X, y = data["X"], data["y"]

def opened():
    return s2l.open("model.s2lm", arena=Arena(64 * 1024), samples=8)

def kept(l):  # the ring's samples, oldest first: labels and rows (input, exponents)
    t = l.tuner
    return [[t.labels[k], bytes(t.rows.ram[k * t.rows.stride:(k + 1) * t.rows.stride]).hex()] for k in t.ring_order()]

out = {}
l = opened()
for k in range(40):  # 40 into a ring of 8: the file is rewritten with the ring's 8 at 16 records
    l.add(X[k %% len(X)], y[k %% len(y)])
out["before"] = kept(l)
out["size"] = os.stat("samples.s2ls")[6]
again = opened()  # the power cut: nothing saved, the process gone
out["after"] = kept(again)
out["restored"] = again.restored
with open("samples.s2ls", "ab") as f:  # a record cut short
    f.write(b"\x01\x02\x03")
out["cut"] = kept(opened())
data = open("samples.s2ls", "rb").read()
with open("samples.s2ls", "wb") as f:  # the same records under another model's CRC: not restored
    f.write(data[:4] + bytes(4) + data[8:])
out["other"] = opened().restored
again.forget()
out["forgot"] = opened().tuner.n_samples
print(json.dumps(out))
"""


def test_the_samples_survive_a_power_cut(run):
    model, _, (X, y), _ = fixed_problem()
    files = {"model.s2lm": model, "data.json": json.dumps({"X": X.tolist(), "y": y.tolist()}).encode()}
    out = json.loads(run(CUT.replace("%%", "%"), files=files).strip().splitlines()[-1])
    assert len(out["before"]) == 8 and out["after"] == out["before"] and out["cut"] == out["before"]
    records = 0  # the file after each add: appended, or rewritten with the ring's 8 at twice that
    for _ in range(40):
        records = 8 if records >= 16 else records + 1
    assert out["restored"] == records
    assert out["size"] == 10 + records * (2 + len(X[0]))  # the header, then label, exponent, input
    assert out["other"] == 0 and out["forgot"] == 0
