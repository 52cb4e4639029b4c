"""The firmware tuner against the numpy reference, per method, under CPython and real MicroPython."""
import json

import numpy as np
import pytest

from skip2lora import reference
from skip2lora.mpyrun import run_firmware_script
from skip2lora.modelfile import quantize, write_model
from skip2lora.pipeline import network_from_model

DIMS = [12, 8, 6, 4]
BITS = [8, 4, 2]  # mixed widths: every unpacking path is exercised
CONFIG = dict(rank=2, lr=0.1, epochs=3, batch=4, seed=7)

SCRIPT = """
import json
from s2l.model import load
from s2l.tuner import Tuner, METHODS
data = json.load(open("data.json"))
out = {}
for method in METHODS:
    t = Tuner(load("model.s2lm"), method, **data["config"])
    for x, y in zip(data["X"], data["y"]):
        t.add_sample(x, y)
    t.train()
    acc, confusion = t.evaluate(data["Xt"], data["yt"])
    params = [[list(ad.a), list(ad.b)] for ad in t.adapters if ad is not None]
    if t.family == "ft":
        params = [[list(w) if w is not None else [], list(b)] for w, b in zip(t.weights, t.bias)]
    out[method] = {"accuracy": acc, "losses": t.losses, "params": params, "macs": t.macs,
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


@pytest.fixture(scope="module")
def reference_results(problem):
    _, net, train, test = problem
    results = {}
    for method in reference.METHODS:
        result, tuner = reference.run(net, reference.Config(method, **CONFIG), train, test)
        if isinstance(tuner, reference.FineTune):
            params = [[w.ravel() if method in ("ft-all", "ft-last") and (method == "ft-all" or i == len(DIMS) - 2)
                       else np.zeros(0), b] for i, (w, b) in enumerate(zip(tuner.net.W, tuner.net.b))]
        else:
            params = [[a.ravel(), b.ravel()] for a, b in (p for p in tuner.adapters if p is not None)]
        results[method] = dict(result, params=params)
    return results


_firmware_cache = {}


def firmware_results(runtime, problem):
    if runtime not in _firmware_cache:
        model, _, (X, y), (Xt, yt) = problem
        data = {"config": CONFIG, "X": X.tolist(), "y": y.tolist(), "Xt": Xt.tolist(), "yt": yt.tolist()}
        out = run_firmware_script(SCRIPT, runtime, files={"model.s2lm": model, "data.json": json.dumps(data).encode()})
        _firmware_cache[runtime] = json.loads(out)
    return _firmware_cache[runtime]


@pytest.mark.parametrize("method", reference.METHODS)
def test_firmware_matches_the_reference(runtime, method, problem, reference_results):
    fw = firmware_results(runtime, problem)[method]
    ref = reference_results[method]
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
