"""The integer Skip2-LoRA: the same integers under CPython and the real MicroPython, the path chosen
by argument, and clear errors where the integer path does not apply."""
import json

import pytest

from skip2lora.runtimes.mpyrun import run_firmware_script

from .test_tuner import CONFIG, fixed_problem


SCRIPT = """
import json
from s2l.model import load
from s2l.tuning import new_tuner
from s2l.tuning import TunerError
data = json.load(open("data.json"))
config = dict(data["config"], batch=1)
t = new_tuner(load("model.s2lm"), "skip2-lora", path="int", **config)
for x, y in zip(data["X"], data["y"]):
    t.add_sample(x, y)
losses = [t.train_epoch() for _ in range(t.epochs)]
acc, _ = t.evaluate(data["Xt"], data["yt"])
errors = []
for kw in ({"path": "int", "method": "lora-all"}, {"path": "int", "batch": 4}, {"path": "fixed"}):
    try:
        new_tuner(load("model.s2lm"), **dict({"method": "skip2-lora"}, **kw))
    except TunerError as e:
        errors.append(str(e))
for v in (float("nan"), float("inf"), 1e39):  # 1e39: a finite double that float32 cannot hold
    try:
        t.add_sample([v] * len(data["X"][0]), 0)
    except TunerError as e:
        errors.append(str(e).split(" (")[0])  # the value's spelling differs between float widths
print(json.dumps({"path": t.path, "accuracy": acc, "losses": losses, "adapters": [[list(bytes(ad.qa)), list(bytes(ad.qb))] for ad in t.adapters],
                  "hits": t.cache.hits, "cache_bytes": t.cache.bytes, "errors": errors}))
"""


def test_integer_path_is_bit_exact_across_runtimes():
    # the unix port runs the viper twins for real: the same integers as the portable twin
    model, _, (X, y), (Xt, yt) = fixed_problem()
    data = {"config": CONFIG, "X": X.tolist(), "y": y.tolist(), "Xt": Xt.tolist(), "yt": yt.tolist()}
    files = {"model.s2lm": model, "data.json": json.dumps(data).encode()}
    runs = {rt: json.loads(run_firmware_script(SCRIPT, rt, files=files))
            for rt in ("cpython", "micropython", "micropython-unix")}
    assert runs["cpython"] == runs["micropython"] == runs["micropython-unix"]
    cpython = runs["cpython"]
    assert cpython["path"] == "int"
    assert cpython["hits"] == 20 * (CONFIG["epochs"] - 1)
    assert cpython["cache_bytes"] == 20 * ((1 + 8) + (1 + 6) + (1 + 2 * 4))  # int8 inputs + int16 logits
    assert any(v for ad in cpython["adapters"] for v in ad[1])  # B learned something
    assert cpython["errors"] == ["the integer path runs skip2-lora only, not 'lora-all'",
                                 "the integer path trains with batch 1 (got 4)",
                                 "unknown path 'fixed' (one of float, int)"] + ["sample has a non-finite feature"] * 3


ALLOCATIONS = """
import gc, json
from s2l.model import load
from s2l.tuning import new_tuner
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
    t.train_epoch()
    out[path] = (gc.mem_alloc() - before) // len(data["y"])
    gc.enable()
print(json.dumps(out))
"""


@pytest.mark.parametrize("runtime,bound", [("micropython-unix", 128), ("micropython", 1024)])
def test_a_cached_integer_step_allocates_almost_nothing(runtime, bound):
    # On a board every float is a heap object: a step that allocates nothing but its loss does no
    # float arithmetic. The float path's count shows that the measurement sees floats. Per step of
    # a cached epoch: the loss, a row's (buffer, offset), a share of the epoch's shuffled order.
    # The unix port runs the viper step as a board does; the WebAssembly build, with no native
    # emitter, runs the portable twin, whose int32-sized sums are heap integers on a 32-bit build.
    model, _, (X, y), _ = fixed_problem()
    data = {"config": CONFIG, "X": X.tolist(), "y": y.tolist()}
    files = {"model.s2lm": model, "data.json": json.dumps(data).encode()}
    per_step = json.loads(run_firmware_script(ALLOCATIONS, runtime, files=files, heap="4m"))  # gc off
    assert per_step["int"] <= bound, per_step
    assert per_step["float"] >= 10 * per_step["int"] + 1000, per_step


V2_SCRIPT = """
import json, struct
from s2l.model import load
from s2l.tuning import new_tuner, TunerError
data = json.load(open("data.json"))
out = {}
for name in data["models"]:
    try:
        t = new_tuner(load(name + ".s2lm"), "skip2-lora", path="int", **dict(data["config"], batch=1))
    except TunerError as e:
        out[name] = str(e)
        continue
    start = {"a0": struct.unpack_from("<4h", t.adapters[0].qa), "fa0": t.fa[0], "b0": struct.unpack_from("<4h", t.adapters[0].qb)}
    for x, y in zip(data["X"], data["y"]):
        t.add_sample(x, y)
    out[name] = dict(start, losses=[t.train_epoch() for _ in range(t.epochs)], accuracy=t.evaluate(data["Xt"], data["yt"])[0])
    if name in data["compare"]:  # the float path on the same model
        f = new_tuner(load(name + ".s2lm"), "skip2-lora", path="float", cache_mode="float", **dict(data["config"], batch=1))
        for x, y in zip(data["X"], data["y"]):
            f.add_sample(x, y)
        out[name]["float"] = {"losses": [f.train_epoch() for _ in range(f.epochs)], "accuracy": f.evaluate(data["Xt"], data["yt"])[0]}
print(json.dumps(out))
"""


def test_the_integer_path_reads_format_v2():
    # 3-bit layers, a starting adapter and a scale per tensor train on the integer path, the same
    # under the unix port's viper kernels as in portable Python; per tensor, as the float path does
    import numpy as np
    from skip2lora.train.modelfile import quantize, write_model
    from .test_tuner import BITS, DIMS
    rng = np.random.default_rng(5)
    weights = [(rng.normal(0, 0.6, (o, i)), rng.normal(0, 0.1, o)) for i, o in zip(DIMS[:-1], DIMS[1:])]
    _, _, (X, y), (Xt, yt) = fixed_problem()
    rank = CONFIG["rank"]
    start = ([rng.normal(0, 0.3, (i, rank)) for i in DIMS[:-1]], [rng.normal(0, 0.5, (rank, DIMS[-1])) for _ in DIMS[:-1]])
    models = {"three.s2lm": write_model([quantize(w, b, 3) for w, b in weights]),
              "start.s2lm": write_model([quantize(w, b, n) for (w, b), n in zip(weights, BITS)], adapter=start),
              "tensor.s2lm": write_model([quantize(w, b, n, 255) for (w, b), n in zip(weights, BITS)])}
    data = {"config": CONFIG, "X": X.tolist(), "y": y.tolist(), "Xt": Xt.tolist(), "yt": yt.tolist(),
            "models": ["three", "start", "tensor"], "compare": ["tensor"]}
    files = dict(models, **{"data.json": json.dumps(data).encode()})
    runs = [json.loads(run_firmware_script(V2_SCRIPT, rt, files=files)) for rt in ("cpython", "micropython-unix")]
    assert runs[0] == runs[1]
    out = runs[0]
    np.testing.assert_allclose(out["tensor"]["losses"], out["tensor"]["float"]["losses"], rtol=0.05)
    assert out["three"]["losses"][-1] < out["three"]["losses"][0]
    a0 = np.array(out["start"]["a0"]) * 2.0 ** -out["start"]["fa0"]
    np.testing.assert_allclose(a0, start[0][0].ravel()[:4], atol=2.0 ** -out["start"]["fa0"])
    np.testing.assert_allclose(np.array(out["start"]["b0"]) / 4096, start[1][0].ravel()[:4], atol=1 / 4096)



def test_the_integer_path_takes_scales_per_group():
    # layers of 40 and 24 inputs, a scale per group of 16 or 32 of them (the last group short) at
    # 8, 4 and 3 bits: the same integers under the unix port's viper kernels as in portable Python,
    # and the float path's losses and accuracy on the same model within the integer path's rounding
    import numpy as np
    from skip2lora.train.modelfile import quantize, write_model
    rng = np.random.default_rng(11)
    dims = [40, 24, 16, 4]
    weights = [(rng.normal(0, 1.5 / np.sqrt(i), (o, i)) * rng.uniform(0.2, 2.0, i), rng.normal(0, 0.1, o))
               for i, o in zip(dims[:-1], dims[1:])]
    model = write_model([quantize(w, b, n, g) for (w, b), n, g in zip(weights, (8, 4, 3), (16, 32, 16))])
    teacher = rng.normal(0, 1, (dims[0], dims[-1]))
    X = rng.uniform(0, 1, (120, dims[0]))
    y = np.argmax((X - 0.5) @ teacher, axis=1)
    data = {"config": dict(rank=2, lr=0.05, epochs=8, seed=3), "X": X[:80].tolist(), "y": y[:80].tolist(),
            "Xt": X[80:].tolist(), "yt": y[80:].tolist(), "models": ["grouped"], "compare": ["grouped"]}
    files = {"grouped.s2lm": model, "data.json": json.dumps(data).encode()}
    runs = [json.loads(run_firmware_script(V2_SCRIPT, rt, files=files)) for rt in ("cpython", "micropython-unix")]
    assert runs[0] == runs[1]
    mine, ref = runs[0]["grouped"], runs[0]["grouped"]["float"]
    assert mine["losses"][-1] < 0.8 * mine["losses"][0]
    np.testing.assert_allclose(mine["losses"], ref["losses"], rtol=0.05)
    assert abs(mine["accuracy"] - ref["accuracy"]) <= 0.05  # 2 of 40 test samples


PLAN_SCRIPT = """
import json
from s2l.arena import Arena
from s2l.model import load
from s2l.tuning import new_tuner, TunerError
out = []
for free, flash, fit in ((400000, None, False), (5000, 1000000, False), (5000, 1000, False), (5000, 1000, True)):
    t = new_tuner(load("model.s2lm"), "skip2-lora", path="int", spill_path="rows.bin", arena=Arena(free))
    try:
        out.append(t.plan(200, flash + 24 * 1024 if flash else flash, fit))
    except TunerError as e:
        out.append(str(e))
print(json.dumps(out))
"""


def test_a_plan_puts_rows_in_ram_then_on_flash_and_says_how_many_fit(runtime):
    model, *_ = fixed_problem()
    all_ram, spilled, refused, fitted = json.loads(run_firmware_script(PLAN_SCRIPT, runtime, files={"model.s2lm": model}))
    assert (all_ram["ram_rows"], all_ram["spilled_rows"]) == (200, 0)
    assert spilled["ram_rows"] + spilled["spilled_rows"] == 200 and 0 < spilled["ram_rows"] < 200
    assert refused.startswith("200 fine-tune samples do not fit") and "at most" in refused
    most = int(refused.rsplit("at most ", 1)[1].split()[0])
    assert fitted["samples"] == most < 200
