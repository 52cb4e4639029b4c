"""The integer Skip2-LoRA: the same integers under CPython and the real MicroPython, the path chosen
by argument, and clear errors where the integer path does not apply."""
import json

from s2l import ikernels
from skip2lora.mpyrun import run_firmware_script

from .test_tuner import CONFIG, fixed_problem

KERNELS = ("mv_packed", "scale_bias", "top_bits", "fit", "mtv", "mv", "outer_update", "unpack8", "pack8",
           "widen", "add_rshift", "softmax_exp", "softmax_grad")

SCRIPT = """
import json
from s2l.model import load
from s2l.tuner import new_tuner
from s2l.tuner import TunerError
data = json.load(open("data.json"))
config = dict(data["config"], batch=1)
t = new_tuner(load("model.s2lm"), "skip2-lora", path="int", **config)
for x, y in zip(data["X"], data["y"]):
    t.add_sample(x, y)
t.train()
acc, _ = t.evaluate(data["Xt"], data["yt"])
errors = []
for kw in ({"path": "int", "method": "lora-all"}, {"path": "int", "batch": 4}, {"path": "fixed"}):
    try:
        new_tuner(load("model.s2lm"), **dict({"method": "skip2-lora"}, **kw))
    except TunerError as e:
        errors.append(str(e))
print(json.dumps({"path": t.path, "default": new_tuner(load("model.s2lm")).path, "accuracy": acc,
                  "losses": t.losses, "adapters": [[list(ad.qa), list(ad.qb)] for ad in t.adapters],
                  "hits": t.cache.hits, "cache_bytes": t.cache.bytes, "errors": errors}))
"""


def test_integer_path_is_bit_exact_across_runtimes():
    model, _, (X, y), (Xt, yt) = fixed_problem()
    data = {"config": CONFIG, "X": X.tolist(), "y": y.tolist(), "Xt": Xt.tolist(), "yt": yt.tolist()}
    files = {"model.s2lm": model, "data.json": json.dumps(data).encode()}
    cpython, micropython = (json.loads(run_firmware_script(SCRIPT, rt, files=files)) for rt in ("cpython", "micropython"))
    assert cpython == micropython
    assert cpython["path"] == "int" and cpython["default"] == "float"  # off a board the float path
    assert cpython["hits"] == 20 * (CONFIG["epochs"] - 1)
    assert cpython["cache_bytes"] == 20 * ((1 + 8) + (1 + 6) + (1 + 2 * 4))  # int8 inputs + int16 logits
    assert any(v for ad in cpython["adapters"] for v in ad[1])  # B learned something
    assert cpython["errors"] == ["the integer path runs skip2-lora only, not 'lora-all'",
                                 "the integer path trains with batch 1 (got 4)",
                                 "unknown path 'fixed' (one of float, int)"]


ALLOCATIONS = """
import gc, json
from s2l.model import load
from s2l.tuner import new_tuner
data = json.load(open("data.json"))
out = {}
for path in ("int", "float"):
    t = new_tuner(load("model.s2lm"), "skip2-lora", path=path, **dict(data["config"], batch=1))
    for x, y in zip(data["X"], data["y"]):
        t.add_sample(x, y)
    t.train_epoch()  # fills the skip-cache
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    for index in range(10):
        t._step_skip(index, -t.lr)
    out[path] = (gc.mem_alloc() - before) // 10
    gc.enable()
print(json.dumps(out))
"""


def test_a_cached_integer_step_allocates_almost_nothing_under_micropython():
    # On a board every float is a heap object: a step that allocates nothing but its loss does no
    # float arithmetic. The float path's count shows that the measurement sees floats.
    model, _, (X, y), _ = fixed_problem()
    data = {"config": CONFIG, "X": X.tolist(), "y": y.tolist()}
    files = {"model.s2lm": model, "data.json": json.dumps(data).encode()}
    per_step = json.loads(run_firmware_script(ALLOCATIONS, "micropython", files=files))
    assert per_step["int"] <= 128, per_step
    assert per_step["float"] >= 10 * per_step["int"] + 1000, per_step


def test_the_viper_kernels_train_the_same_adapters(request, monkeypatch):
    # the whole integer path with the viper twins (through the pointer-faithful shim) in place of
    # the portable ones: the same integers, step after step
    from s2l.model import Model
    from s2l.tuner import new_tuner
    assert ikernels.FLAVOUR == "portable"  # imported when this file was, before any shim
    model, _, (X, y), (Xt, yt) = fixed_problem()

    def train():
        t = new_tuner(Model(model), "skip2-lora", path="int", **dict(CONFIG, batch=1))
        for x, label in zip(X, y):
            t.add_sample(x, int(label))
        t.train()
        return [(list(ad.qa), list(ad.qb)) for ad in t.adapters], t.losses, t.evaluate(Xt, yt)[0]
    portable = train()
    viper = request.getfixturevalue("board_flavour")("s2l.ikernels_viper")
    for name in KERNELS:
        monkeypatch.setattr(ikernels, name, getattr(viper, name))
    assert train() == portable
    assert any(v for _, qb in portable[0] for v in qb)
