"""Fine-tune one model with every method under the same hyperparameters: the numpy reference, the
firmware's tuner on the host (CPython or MicroPython), or a board (or the emulator) over serial."""
from dataclasses import replace

from ..link.board import run_job
from ..progress import bar
from ..runtimes.onboard import run_methods
from ..train import reference

RUNTIMES = ("numpy", "cpython", "micropython", "serial")


def compare_methods(prepared, config, methods=reference.METHODS, progress=True, runtime="numpy",
                    board_row=True, port=None):
    """Fine-tune with every method under the same hyperparameters; one result dict per method.

    runtime "numpy" is the reference; "cpython" / "micropython" run the firmware's tuner. There,
    with `board_row`, Skip2-LoRA runs twice more as a board would: on the float path with the
    compact cache and the RP2040 budget (that mode's heap and accuracy cost), and on the integer
    path (its MACs, accuracy and time against the float path). "serial": a board or the emulator at
    pyserial URL `port`, each method streamed and trained there (float32 samples, so that accuracy
    compares with the reference)."""
    if runtime == "numpy":
        results = []
        with bar(len(methods) * config.epochs, "fine-tune (numpy)", progress, "epochs") as b:
            for method in methods:
                b.set_postfix(method=method)
                result, _ = reference.run(prepared.quantized_net, replace(config, method=method),
                                          prepared.inputs("finetune"), prepared.inputs("test"),
                                          on_epoch=lambda *_: b.update(), curve=True)
                results.append(dict(result, runtime="numpy"))
        return results
    if runtime not in RUNTIMES:
        raise ValueError("unknown runtime %r (one of %s)" % (runtime, ", ".join(RUNTIMES)))
    if runtime == "serial":
        return _over_serial(prepared, config, methods, port, progress)
    from s2l.tuner import BOARD_CACHE_BUDGET
    runs = [(list(methods), {})]
    if board_row and "skip2-lora" in methods:
        runs.append((["skip2-lora"], {"cache_mode": "compact", "cache_budget": BOARD_CACHE_BUDGET}))
        runs.append((["skip2-lora"], {"path": "int"}))
    results = []
    with bar(sum(len(m) for m, _ in runs) * config.epochs, "fine-tune (%s)" % runtime, progress, "epochs") as b:
        def on_epoch(method, epoch, epochs, loss):
            b.set_postfix(method=method, loss="%.4f" % loss)
            b.update()

        def on_test(method, tested):
            b.set_postfix(method=method, tested="%d/%d" % (tested, len(prepared.scenario.test[1])))
            b.update(0)  # a line when the last one is old
        for run_methods_list, cache in runs:
            results += run_methods(prepared.model_bytes, config, prepared.scenario.finetune, prepared.scenario.test,
                                   run_methods_list, runtime, on_epoch=on_epoch, on_test=on_test, **cache)
    return results


def _over_serial(prepared, config, methods, port, progress):
    from s2l import frames as F
    if not port:
        raise ValueError("--runtime serial needs --port (a board, or the path `skip2lora emulate` prints)")
    results = []
    b = bar(len(methods) * config.epochs, "fine-tune (serial)", progress, "epochs")
    for method in methods:
        fields = {"method": method, "rank": config.rank, "lr": config.lr, "epochs": config.epochs,
                  "batch": config.batch, "seed": config.seed}
        b.set_postfix(method=method)
        # the methods compared as the paper (and the reference) run them: every sample trains, unguarded
        run = run_job(port, prepared.model_bytes, prepared.scenario, dict(fields, holdout=0), F.ENC_FLOAT32,
                      progress=lambda kind, done, total, info: b.update() if kind == "train" else None)
        results.append(dict(fields, runtime="serial", path=run["path"], accuracy=run["accuracy"],
                            finetune_seconds=run["speed"]["finetune_seconds"],  # as the board timed its epochs
                            finetune_seconds_wall=run["finetune_seconds_wall"],
                            phase_seconds=run["phase_seconds"], macs=run["macs"], losses=run["losses"],
                            diverged=not all(l < float("inf") for l in run["losses"]),
                            peak_heap_bytes=run["peak_alloc"], cache_mode=run["cache_mode"],
                            cache_hits=run["cache_hits"], cache_bytes=run["cache_bytes"], cache_spilled_bytes=run["cache_spilled_bytes"],
                            kernels=run["kernels"], board=run["board"]))
    b.close()
    return results
