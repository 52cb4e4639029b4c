"""Fine-tune with the firmware's own tuner on a host runtime: CPython, or the real MicroPython
(WebAssembly) interpreter. One result dict per method, with the keys of the numpy reference's
results plus what only the firmware measures: peak heap, cache mode, kernel flavour.

Timing and heap are measured inside the interpreter (time.ticks_us, gc.mem_alloc). The script
yields after every epoch, so that the WebAssembly build, which collects garbage only between calls,
collects each epoch's garbage; "peak heap" is the largest live heap seen at those points (after
collection), counted from before the firmware's modules were imported: the RAM a board needs for
the model, tuner, samples and skip-cache. Collection itself is not part of the measured time.
"""
import json

import numpy as np

from .mpyrun import run_firmware_script

SCRIPT = """
import json
from s2l.clock import mem_alloc, ticks_us, ticks_diff
job = json.load(open("job.json"))

def samples(path):
    with open(path) as f:
        for line in f:
            values = line.split()
            yield [float(v) for v in values[1:]], int(values[0])

def run(method):
    yield
    base = mem_alloc()  # a step starts after a collection: this heap is live
    from s2l.model import load
    from s2l.tuning import new_tuner
    tuner = new_tuner(load("model.s2lm"), method, **job["tuner"])
    for x, label in samples("finetune.txt"):
        tuner.add_sample(x, label)
    peak = 0
    epoch_seconds, losses = [], []
    for epoch in range(tuner.epochs):
        yield
        peak = max(peak, mem_alloc() - base)
        t0 = ticks_us()
        loss = tuner.train_epoch()
        losses.append(loss)
        epoch_seconds.append(ticks_diff(ticks_us(), t0) / 1e6)
        print("P " + json.dumps([method, epoch + 1, tuner.epochs, loss]))
    yield
    peak = max(peak, mem_alloc() - base)
    macs, us = dict(tuner.macs), dict(tuner.us)  # fine-tuning's own; testing below adds to them
    correct = total = 0
    for x, label in samples("test.txt"):
        correct += tuner.predict(x) == label
        total += 1
        if total % 25 == 0:
            print("T " + json.dumps([method, total]))
    cache = tuner.cache
    print("R " + json.dumps({
        "method": method, "path": tuner.path, "accuracy": correct / total,
        "finetune_seconds": sum(epoch_seconds), "epoch_seconds": epoch_seconds,
        "losses": losses, "diverged": not (losses[-1] < float("inf")),
        "macs": macs, "phase_seconds": dict((k, v / 1e6) for k, v in us.items()),
        "peak_heap_bytes": peak, "cache_mode": tuner.cache_mode, "kernels": tuner.kernels,
        "cache_hits": cache.hits if cache else 0, "cache_bytes": cache.bytes if cache else 0,
        "cache_spilled_bytes": cache.spilled_bytes if cache else 0}))
    if cache:
        cache.close()

def all_methods():
    for method in job["methods"]:
        for _ in run(method):
            yield

steps = all_methods()
"""


def _sample_lines(X, y):
    # float32 values printed exactly (repr of the float32 value widened to a double)
    return "".join("%d %s\n" % (label, " ".join(repr(float(v)) for v in x))
                   for x, label in zip(np.asarray(X, np.float32), y)).encode()


def run_methods(model_bytes, config, finetune, test, methods, runtime, cache_mode=None, cache_budget=None,
                path=None, on_epoch=None, on_test=None):
    """Fine-tune with each method on `runtime` ("cpython" or "micropython"); a result dict each.

    config: a reference.Config (rank, lr, epochs, batch, seed). cache_mode / cache_budget: the
    tuner's skip-cache storage ("float" or "compact"; RAM bytes before spilling to flash); None
    keeps the firmware's defaults. path: "float" or "int" (the integer Skip2-LoRA); None: the
    firmware's default. on_epoch(method, epoch, epochs, loss) reports progress, and so does
    on_test(method, samples tested) while the test set is scored (every 25 samples)."""
    tuner = {"rank": config.rank, "lr": config.lr, "epochs": config.epochs, "batch": config.batch,
             "seed": config.seed}
    if cache_mode is not None:
        tuner["cache_mode"] = cache_mode
    if cache_budget is not None:
        tuner["cache_budget"] = cache_budget
    if path is not None:
        tuner["path"] = path
    job = {"methods": list(methods), "tuner": tuner}
    results = []

    def on_line(line):
        kind, _, payload = line.partition(" ")
        if kind == "P" and on_epoch:
            on_epoch(*json.loads(payload))
        elif kind == "T" and on_test:
            on_test(*json.loads(payload))
        elif kind == "R":
            result = json.loads(payload)
            result.update(runtime=runtime, rank=config.rank, lr=config.lr, epochs=config.epochs,
                          batch=config.batch, seed=config.seed)
            results.append(result)

    files = {"model.s2lm": model_bytes, "job.json": json.dumps(job).encode(),
             "finetune.txt": _sample_lines(*finetune), "test.txt": _sample_lines(*test)}
    run_firmware_script(SCRIPT, runtime, files=files, steps=True, on_line=on_line)
    return results
