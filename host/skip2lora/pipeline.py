"""The host's main job: pretrain on a scenario's source domain, export the quantized model, and
fine-tune the quantized model with each method of the numpy reference on the drifted domain."""
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import reference
from .modelfile import quantization_report, quantize, read_model, write_model
from .pretrain import pretrain
from .fan import FAN_SCENARIOS, load_fan_scenario
from .scenarios import DRIFTS, load_digits_scenario

# where the cooling-fan dataset is by default: beside the project, as on this machine and in CI
FAN_DATA = str(Path(__file__).resolve().parents[3] / "shared" / "data" / "cooling-fan")
SCENARIOS = sorted(DRIFTS) + sorted(FAN_SCENARIOS)


@dataclass
class Prepared:
    scenario: object
    float_net: reference.Network
    quantized_net: reference.Network
    model_bytes: bytes
    report: dict


def accuracy(net, X, y):
    return float((net.forward(X)[1].argmax(axis=1) == y).mean())


def network_from_model(model_bytes):
    """The frozen network a board holds: dequantized weights of a model file."""
    return reference.Network([(layer.dequantized(), layer.bias) for layer in read_model(model_bytes)])


def load_scenario(name, data_path=None):
    """A digits scenario (embedded), or a cooling-fan one from `data_path` (default FAN_DATA)."""
    if name in FAN_SCENARIOS:
        return load_fan_scenario(name, data_path or FAN_DATA)
    return load_digits_scenario(name)


def prepare(scenario_name, bits=None, seed=0, progress=True, data_path=None):
    """Pretrain (deterministic for `seed`) and export; `bits` per layer, 8 everywhere by default."""
    scenario = load_scenario(scenario_name, data_path)
    net = pretrain(*scenario.pretrain, len(scenario.classes), seed=seed, progress=progress)
    bits = list(bits or [8] * len(net.W))
    if len(bits) != len(net.W):
        raise ValueError("--bits needs %d values, one per layer; got %d" % (len(net.W), len(bits)))
    layers = [quantize(w, b, n) for w, b, n in zip(net.W, net.b, bits)]
    model_bytes = write_model(layers)
    qnet = network_from_model(model_bytes)
    report = {
        "dims": qnet.dims, "bits": bits, "model_bytes": len(model_bytes),
        "layers": quantization_report(list(zip(net.W, net.b)), layers),
        "source_accuracy_float": accuracy(net, *scenario.source_test),
        "source_accuracy_quantized": accuracy(qnet, *scenario.source_test),
        "drifted_accuracy_before": accuracy(qnet, *scenario.test),
    }
    return Prepared(scenario, net, qnet, model_bytes, report)


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
        for method in tqdm(methods, desc="fine-tune", disable=not progress, leave=False):
            result, _ = reference.run(prepared.quantized_net, replace(config, method=method),
                                      prepared.scenario.finetune, prepared.scenario.test, curve=True)
            results.append(dict(result, runtime="numpy"))
        return results
    if runtime not in RUNTIMES:
        raise ValueError("unknown runtime %r (one of %s)" % (runtime, ", ".join(RUNTIMES)))
    if runtime == "serial":
        return _over_serial(prepared, config, methods, port, progress)
    from s2l.tuner import BOARD_CACHE_BUDGET
    from .onboard import run_methods
    runs = [(list(methods), {})]
    if board_row and "skip2-lora" in methods:
        runs.append((["skip2-lora"], {"cache_mode": "compact", "cache_budget": BOARD_CACHE_BUDGET}))
        runs.append((["skip2-lora"], {"path": "int"}))
    results = []
    with tqdm(total=sum(len(m) for m, _ in runs) * config.epochs, desc="fine-tune (%s)" % runtime,
              disable=not progress, leave=False) as bar:
        def on_epoch(method, epoch, epochs, loss):
            bar.set_postfix(method=method, loss="%.4f" % loss)
            bar.update()
        for run_methods_list, cache in runs:
            results += run_methods(prepared.model_bytes, config, prepared.scenario.finetune,
                                   prepared.scenario.test, run_methods_list, runtime, on_epoch=on_epoch, **cache)
    return results


def _over_serial(prepared, config, methods, port, progress):
    from s2l import frames as F

    from .board import run_job
    if not port:
        raise ValueError("--runtime serial needs --port (a board, or the path `skip2lora emulate` prints)")
    results = []
    for method in tqdm(methods, desc="fine-tune (serial)", disable=not progress, leave=False):
        fields = {"method": method, "rank": config.rank, "lr": config.lr, "epochs": config.epochs,
                  "batch": config.batch, "seed": config.seed}
        run = run_job(port, prepared.model_bytes, prepared.scenario, fields, F.ENC_FLOAT32)
        results.append(dict(fields, runtime="serial", path=run["path"], accuracy=run["accuracy"],
                            finetune_seconds=sum(run["phase_seconds"].values()),
                            finetune_seconds_wall=run["finetune_seconds_wall"],
                            phase_seconds=run["phase_seconds"], macs=run["macs"], losses=run["losses"],
                            diverged=not all(l < float("inf") for l in run["losses"]),
                            peak_heap_bytes=run["peak_alloc"], cache_mode=run["cache_mode"],
                            cache_hits=run["cache_hits"], cache_bytes=run["cache_bytes"], cache_spilled_bytes=run["cache_spilled_bytes"],
                            kernels=run["kernels"], board=run["board"]))
    return results


def time_ratio(results, numerator="skip2-lora", denominator="lora-all"):
    by_method = {}
    for r in results:  # the first row of a method: the board-mode row comes after
        by_method.setdefault(r["method"], r)
    if numerator in by_method and denominator in by_method:
        return by_method[numerator]["finetune_seconds"] / by_method[denominator]["finetune_seconds"]
    return None


def format_table(prepared, results):
    rep = prepared.report
    lines = [
        "scenario %s: %s" % (prepared.scenario.name, prepared.scenario.description),
        "model %s, bits %s, %d bytes; source accuracy float %.1f%%, quantized %.1f%%" % (
            "-".join(map(str, rep["dims"])), rep["bits"], rep["model_bytes"],
            100 * rep["source_accuracy_float"], 100 * rep["source_accuracy_quantized"]),
        "",
        "%-19s %9s %8s %11s %13s %13s %11s" % ("method", "accuracy", "gain", "fine-tune", "frozen fwd",
                                                  "adapter fwd", "backward"),
        "%-19s %8.1f%% %8s %11s %13s %13s %11s" % ("(none)", 100 * rep["drifted_accuracy_before"], "",
                                                      "", "MACs", "MACs", "MACs"),
    ]
    for r in results:
        lines.append("%-19s %8.1f%% %+7.1f %10.3fs %13d %13d %11d%s" % (
            _label(r), 100 * r["accuracy"], 100 * (r["accuracy"] - rep["drifted_accuracy_before"]),
            r["finetune_seconds"], r["macs"]["frozen_forward"], r["macs"]["adapter_forward"],
            r["macs"]["backward"], "  (diverged: loss not finite)" if r["diverged"] else ""))
    if any("peak_heap_bytes" in r for r in results):
        lines += _firmware_table(results)
    ratio = time_ratio(results)
    if ratio is not None:
        lines += ["", "fine-tune time Skip2-LoRA / LoRA-All = %.3f (measured in this run, %s)" % (
            ratio, results[0]["runtime"])]
    return "\n".join(lines)


def _label(result):
    # the board-mode rows: compact skip-cache under the RP2040 budget; the integer path
    if result.get("path") == "int":
        return result["method"] + "/integer"
    return result["method"] + ("/int8" if result.get("cache_mode") == "compact" else "")


def _firmware_table(results):
    # the float path's phases; the integer path's fused step (adapter forward, backward and update
    # in one kernel call) is its own column
    phases = ("frozen_forward", "adapter_forward", "backward", "update", "step", "cache")
    lines = ["", "time per phase, seconds (%s, kernels %s); peak heap and skip-cache, KB" % (
        results[0]["runtime"], results[0]["kernels"]),
        "%-19s" % "method" + "".join("%12s" % p.replace("_forward", " fwd") for p in phases)
        + "%10s %9s %9s" % ("peak heap", "cache", "spilled")]
    for r in results:
        lines.append("%-19s" % _label(r) + "".join("%12.3f" % r["phase_seconds"].get(p, 0.0) for p in phases)
                     + "%10s %9.1f %9.1f" % (_heap_kb(r), r["cache_bytes"] / 1024, r["cache_spilled_bytes"] / 1024))
    skip2 = [r for r in results if r["method"] == "skip2-lora"]
    exact = [r for r in skip2 if r["cache_mode"] == "float" and r["path"] == "float"]
    board = [r for r in skip2 if r["cache_mode"] == "compact"]
    integer = [r for r in skip2 if r["path"] == "int"]
    if exact and board:
        lines += ["", "Skip2-LoRA as on an RP2040 (int8 samples and skip-cache): accuracy %.1f%% vs %.1f%% with "
                  "float32 (%+.1f points), peak heap %s KB" % (
                      100 * board[0]["accuracy"], 100 * exact[0]["accuracy"],
                      100 * (board[0]["accuracy"] - exact[0]["accuracy"]), _heap_kb(board[0]))]
    if exact and integer:
        fl, it = exact[0], integer[0]
        lines += ["Skip2-LoRA on the integer path: accuracy %.1f%% vs %.1f%% float (%+.1f points); time integer / "
                  "float: epoch 1 (frozen forward, filling the cache) %.2f, a cached epoch %.2f, all %.2f" % (
                      100 * it["accuracy"], 100 * fl["accuracy"], 100 * (it["accuracy"] - fl["accuracy"]),
                      it["epoch_seconds"][0] / fl["epoch_seconds"][0],
                      it["epoch_seconds"][-1] / fl["epoch_seconds"][-1], it["finetune_seconds"] / fl["finetune_seconds"])]
    return lines


def _heap_kb(result):
    # CPython has no MicroPython heap to measure
    return "n/a" if result["runtime"] == "cpython" else "%.1f" % (result["peak_heap_bytes"] / 1024)


def bench_record(prepared, config, results):
    return {
        "runtime": results[0]["runtime"] if results else None, "scenario": prepared.scenario.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": {"rank": config.rank, "lr": config.lr, "epochs": config.epochs, "batch": config.batch,
                   "seed": config.seed},
        "model": prepared.report, "results": results,
        "skip2_over_lora_all_time": time_ratio(results),
        "finetune_samples": int(len(prepared.scenario.finetune[1])),
        "test_samples": int(len(prepared.scenario.test[1])),
        "numpy": np.__version__,
    }
