"""The firmware tuner against the numpy reference, per method, under CPython and real MicroPython."""
import json

import numpy as np
import pytest

from skip2lora.runtimes.mpyrun import run_firmware_script
from skip2lora.train import reference
from skip2lora.train.export import network_from_model
from skip2lora.train.modelfile import quantize, write_model

DIMS = [12, 8, 6, 4]
BITS = [8, 4, 2]  # mixed widths: every unpacking path is exercised
CONFIG = dict(rank=2, lr=0.1, epochs=3, batch=4, seed=7)
BATCHES = [4, 1]  # mini-batches accumulate gradients; batch 1 updates during backward (fused)

SCRIPT = """
import json
from s2l.model import load
from s2l.tuner import Tuner
from s2l.tuning import METHODS
data = json.load(open("data.json"))
out = {}
for method in METHODS:
    t = Tuner(load("model.s2lm"), method, cache_mode="float", cache_budget=None, **data["config"])
    for x, y in zip(data["X"], data["y"]):
        t.add_sample(x, y)
    losses = [t.train_epoch() for _ in range(t.epochs)]
    acc, confusion = t.evaluate(data["Xt"], data["yt"])
    params = [[list(ad.a), list(ad.b)] for ad in t.adapters if ad is not None]
    if t.family == "ft":
        params = [[list(w) if w is not None else [], list(b)] for w, b in zip(t.weights, t.bias)]
    out[method] = {"accuracy": acc, "losses": losses, "params": params, "macs": t.macs,
                   "cache_hits": t.cache.hits if t.cache else 0}
print(json.dumps(out))
"""


def fixed_problem():
    rng = np.random.default_rng(3)
    layers = [quantize(rng.normal(0, 0.6, (o, i)), rng.normal(0, 0.1, o), b)
              for i, o, b in zip(DIMS[:-1], DIMS[1:], BITS)]
    model = write_model(layers)
    net = network_from_model(model)
    X = rng.uniform(0, 1, (20, DIMS[0])).astype(np.float32)
    Xt = rng.uniform(0, 1, (30, DIMS[0])).astype(np.float32)
    y = net.forward(X + rng.normal(0, 0.3, X.shape).astype(np.float32))[1].argmax(1)
    yt = net.forward(Xt + rng.normal(0, 0.3, Xt.shape).astype(np.float32))[1].argmax(1)
    return model, net, (X, y), (Xt, yt)


@pytest.fixture(scope="module")
def problem():
    return fixed_problem()


_reference_cache = {}


def reference_results(problem, batch):
    if batch in _reference_cache:
        return _reference_cache[batch]
    _, net, train, test = problem
    results = _reference_cache[batch] = {}
    for method in reference.METHODS:
        result, tuner = reference.run(net, reference.Config(method, **dict(CONFIG, batch=batch)), train, test)
        if isinstance(tuner, reference.FineTune):
            params = [[w.ravel() if method in ("ft-all", "ft-last") and (method == "ft-all" or i == len(DIMS) - 2)
                       else np.zeros(0), b] for i, (w, b) in enumerate(zip(tuner.net.W, tuner.net.b))]
        else:
            params = [[a.ravel(), b.ravel()] for a, b in (p for p in tuner.adapters if p is not None)]
        results[method] = dict(result, params=params)
    return results


_firmware_cache = {}


def firmware_results(runtime, problem, batch=CONFIG["batch"]):
    if (runtime, batch) not in _firmware_cache:
        model, _, (X, y), (Xt, yt) = problem
        data = {"config": dict(CONFIG, batch=batch), "X": X.tolist(), "y": y.tolist(), "Xt": Xt.tolist(),
                "yt": yt.tolist()}
        # all seven methods and the data's JSON at once: more than a board's heap (the unix port's default)
        out = run_firmware_script(SCRIPT, runtime, files={"model.s2lm": model, "data.json": json.dumps(data).encode()},
                                  heap="4m" if runtime == "micropython-unix" else None)
        _firmware_cache[runtime, batch] = json.loads(out)
    return _firmware_cache[runtime, batch]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("method", reference.METHODS)
def test_firmware_matches_the_reference(runtime, method, batch, problem):
    fw = firmware_results(runtime, problem, batch)[method]
    ref = reference_results(problem, batch)[method]
    assert fw["accuracy"] == ref["accuracy"]
    np.testing.assert_allclose(fw["losses"], ref["losses"], rtol=1e-4)
    assert len(fw["params"]) == len(ref["params"])
    for fw_pair, ref_pair in zip(fw["params"], ref["params"]):
        for got, want in zip(fw_pair, ref_pair):
            want = np.asarray(want, np.float64)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * (np.abs(want).max() if want.size else 1))
    for phase in ("frozen_forward", "adapter_forward", "backward"):
        assert fw["macs"][phase] == ref["macs"][phase], phase


def test_skip2_lora_equals_skip_lora_on_the_board(runtime, problem):
    fw = firmware_results(runtime, problem)
    assert fw["skip2-lora"]["params"] == fw["skip-lora"]["params"]
    assert fw["skip2-lora"]["cache_hits"] == 20 * (CONFIG["epochs"] - 1)


BAD_INPUT_SCRIPT = """
import json
from s2l.model import Model, load
from s2l.modelfile import ModelError
from s2l.tuner import Tuner
from s2l.tuning import TunerError
data = json.load(open("data.json"))
model_bytes = open("model.s2lm", "rb").read()

def state(t):
    return json.dumps([[list(ad.a), list(ad.b)] for ad in t.adapters], ) + json.dumps(
        [len(t.samples), list(t.labels), len(t.cache), t.cache.hits, t.cache.bytes, t.macs, t.us, t.epochs_done, t.loss])

t = Tuner(Model(model_bytes), "skip2-lora", cache_budget=0, spill_path=None, **data["config"])
for x, y in zip(data["X"], data["y"]):
    t.add_sample(x, y)
errors = []
before = state(t)
x = data["X"][0]
bad = [("short", x[:-1], 0), ("long", x + [0.0], 0), ("nan", [float("nan")] + x[1:], 0),
       ("inf", x[:-1] + [float("inf")], 0), ("label", x, 4), ("negative label", x, -1)]
for name, sample, label in bad:
    try:
        t.add_sample(sample, label)
        errors.append([name, None])
    except TunerError as e:
        errors.append([name, str(e)])
try:
    t.train_epoch()  # the cache may not use RAM (budget 0) and has nowhere to spill
    errors.append(["cache", None])
except TunerError as e:
    errors.append(["cache", str(e)])
for name, buf in (("truncated", model_bytes[:-9]), ("crc", model_bytes[:-1] + bytes([model_bytes[-1] ^ 1]))):
    try:
        Model(buf)
        errors.append([name, None])
    except ModelError as e:
        errors.append([name, str(e)])
same = state(t) == before
# the same tuner then trains with a budget that spills to flash, and matches an all-RAM compact run
results = []
for budget, spill in ((None, None), (16 * 8, "spill.bin")):
    t2 = Tuner(Model(model_bytes), "skip2-lora", cache_mode="compact", cache_budget=budget, spill_path=spill,
               **data["config"])
    for x, y in zip(data["X"], data["y"]):
        t2.add_sample(x, y)
    losses = [t2.train_epoch() for _ in range(t2.epochs)]
    results.append([losses, [list(ad.a) for ad in t2.adapters], t2.cache.hits, t2.cache.spilled_bytes])
print(json.dumps({"errors": errors, "state_unchanged": same, "compact": results}))
"""


def test_bad_input_is_a_clear_error_and_changes_nothing(runtime, problem):
    model, _, (X, y), _ = problem
    data = {"config": CONFIG, "X": X.tolist(), "y": y.tolist()}
    out = json.loads(run_firmware_script(BAD_INPUT_SCRIPT, runtime,
                                         files={"model.s2lm": model, "data.json": json.dumps(data).encode()}))
    errors = dict(out["errors"])
    assert errors["short"] == "sample has 11 features, the model takes 12"
    assert errors["long"] == "sample has 13 features, the model takes 12"
    assert errors["nan"].startswith("sample has a non-finite feature")
    assert errors["inf"].startswith("sample has a non-finite feature")
    assert errors["label"] == errors["negative label"].replace("-1", "4") == "label 4 out of range 0..3"
    assert "skip-cache for 20 samples does not fit" in errors["cache"]
    assert "truncated" in errors["truncated"] and "CRC" in errors["crc"]
    assert out["state_unchanged"]
    (ram_losses, ram_a, ram_hits, ram_spilled), (sp_losses, sp_a, sp_hits, sp_spilled) = out["compact"]
    assert ram_spilled == 0 and sp_spilled > 0
    assert (sp_losses, sp_a, sp_hits) == (ram_losses, ram_a, ram_hits)
