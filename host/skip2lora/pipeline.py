"""The host's main job: pretrain on a scenario's source domain, export the quantized model, and
fine-tune the quantized model with each method of the numpy reference on the drifted domain."""
import time
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from . import reference
from .modelfile import quantization_report, quantize, read_model, write_model
from .pretrain import pretrain
from .scenarios import load_digits_scenario


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


def prepare(scenario_name, bits=None, seed=0, progress=True):
    """Pretrain (deterministic for `seed`) and export; `bits` per layer, 8 everywhere by default."""
    scenario = load_digits_scenario(scenario_name)
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


def compare_methods(prepared, config, methods=reference.METHODS, progress=True):
    """Fine-tune with every method under the same hyperparameters; one result dict per method."""
    results = []
    for method in tqdm(methods, desc="fine-tune", disable=not progress, leave=False):
        result, _ = reference.run(prepared.quantized_net, replace(config, method=method),
                                  prepared.scenario.finetune, prepared.scenario.test)
        results.append(result)
    return results


def time_ratio(results, numerator="skip2-lora", denominator="lora-all"):
    by_method = {r["method"]: r for r in results}
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
        "%-12s %9s %8s %11s %13s %13s %11s" % ("method", "accuracy", "gain", "fine-tune", "frozen fwd",
                                                  "adapter fwd", "backward"),
        "%-12s %8.1f%% %8s %11s %13s %13s %11s" % ("(none)", 100 * rep["drifted_accuracy_before"], "",
                                                      "", "MACs", "MACs", "MACs"),
    ]
    for r in results:
        lines.append("%-12s %8.1f%% %+7.1f %10.3fs %13d %13d %11d%s" % (
            r["method"], 100 * r["accuracy"], 100 * (r["accuracy"] - rep["drifted_accuracy_before"]),
            r["finetune_seconds"], r["macs"]["frozen_forward"], r["macs"]["adapter_forward"],
            r["macs"]["backward"], "  (diverged: loss not finite)" if r["diverged"] else ""))
    ratio = time_ratio(results)
    if ratio is not None:
        lines += ["", "fine-tune time Skip2-LoRA / LoRA-All = %.3f (measured in this run)" % ratio]
    return "\n".join(lines)


def bench_record(prepared, config, results):
    return {
        "runtime": "numpy", "scenario": prepared.scenario.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": {"rank": config.rank, "lr": config.lr, "epochs": config.epochs, "batch": config.batch,
                   "seed": config.seed},
        "model": prepared.report, "results": results,
        "skip2_over_lora_all_time": time_ratio(results),
        "finetune_samples": int(len(prepared.scenario.finetune[1])),
        "test_samples": int(len(prepared.scenario.test[1])),
        "numpy": np.__version__,
    }
