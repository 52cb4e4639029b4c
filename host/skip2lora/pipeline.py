"""The host's main job: pretrain on a scenario's source domain, export the quantized model, and
fine-tune the quantized model with each method of the numpy reference on the drifted domain."""
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from s2l import memplan
from s2l import modelfile as fmt
from s2l.arena import aligned

from . import reference
from .fan import FAN_SCENARIOS, load_fan_scenario
from .modelfile import fit_norm, normalise, quantization_report, quantize, read_model, read_model_file, write_model
from .pretrain import DEFAULT_HIDDEN, pretrain
from .progress import bar
from .scenarios import DRIFTS, SPLIT_SEED, load_digits_scenario

# where the cooling-fan dataset is by default: beside the project, as on this machine and in CI
FAN_DATA = str(Path(__file__).resolve().parents[3] / "shared" / "data" / "cooling-fan")
SCENARIOS = sorted(DRIFTS) + sorted(FAN_SCENARIOS)


@dataclass
class Prepared:
    scenario: object  # its data as the user's files hold it: raw readings, what a board is sent
    float_net: reference.Network
    quantized_net: reference.Network
    model_bytes: bytes
    report: dict
    layers: list = None  # the QuantizedLayers of model_bytes
    norm: tuple = None   # (mean, inv_std) in the model file, or None

    def inputs(self, part):
        """(X, y) of a scenario part ("finetune", "test", ...) as the network takes it: the raw
        readings normalised with the model file's constants, as the board normalises them."""
        X, y = getattr(self.scenario, part)
        return normalise(X, self.norm), y

    def with_lr(self, lr):
        """This export with `lr` written into the model file as the board's default learning rate."""
        model_bytes = write_model(self.layers, norm=self.norm, lr=lr)
        return replace(self, model_bytes=model_bytes, report=dict(self.report, model_bytes=len(model_bytes), lr=lr))


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


def prepare(scenario, bits=None, seed=0, progress=True, data_path=None):
    """Pretrain (deterministic for `seed`) and export; `bits` per layer, 8 everywhere by default.
    scenario: a Scenario, or a name for load_scenario."""
    if isinstance(scenario, str):
        scenario = load_scenario(scenario, data_path)
    bits = check_bits(bits)
    norm = fit_norm(scenario.pretrain[0]) if scenario.normalise else None
    X, y = scenario.pretrain
    net = pretrain(normalise(X, norm), y, len(scenario.classes), seed=seed, progress=progress)
    layers = [quantize(w, b, n) for w, b, n in zip(net.W, net.b, bits)]
    model_bytes = write_model(layers, norm=norm)
    qnet = network_from_model(model_bytes)
    prepared = Prepared(scenario, net, qnet, model_bytes, None, layers, norm)
    prepared.report = _report(prepared, bits, lr=None)
    prepared.report.update(layers=quantization_report(list(zip(net.W, net.b)), layers),
                           source_accuracy_float=accuracy(net, *prepared.inputs("source_test")))
    return prepared


def from_model(scenario, model_bytes, path):
    """A model file as export wrote it (its layers, normalisation and lr, what a board is sent)
    with the scenario's data; no float network, so no float source accuracy."""
    model = read_model_file(model_bytes)
    prepared = Prepared(scenario, None, network_from_model(model_bytes), model_bytes, None, model.layers, model.norm)
    prepared.report = dict(_report(prepared, [layer.bits for layer in model.layers], model.lr), path=path,
                           source_accuracy_float=None)
    return prepared


def _report(prepared, bits, lr):
    qnet = prepared.quantized_net
    report = {"dims": qnet.dims, "bits": bits, "model_bytes": len(prepared.model_bytes),
              "classes": prepared.scenario.classes, "normalised": prepared.norm is not None, "lr": lr,
              "source_accuracy_quantized": accuracy(qnet, *prepared.inputs("source_test"))}
    if prepared.scenario.test is not None:
        report["drifted_accuracy_before"] = accuracy(qnet, *prepared.inputs("test"))
    return report


N_LAYERS = len(DEFAULT_HIDDEN) + 1


def check_bits(bits):
    """Bits per layer, checked before any pretraining: N_LAYERS widths the format has (default 8s)."""
    bits = list(bits or [8] * N_LAYERS)
    if len(bits) != N_LAYERS:
        raise ValueError("--bits needs %d values, one per layer; got %d" % (N_LAYERS, len(bits)))
    widths = fmt.SUPPORTED_BITS[fmt.VERSION]
    bad = [b for b in bits if b not in widths]
    if bad:
        raise ValueError("--bits: %s is not a bit width the model format has (%s)" % (
            bad[0], ", ".join(map(str, widths))))
    return bits


# The board budget export checks for a user's data, before any board is asked, with the formula the
# board plans a job with (s2l/memplan.py): the board's arena (the block it takes at boot for jobs)
# holds the model file (weights stay packed in it), the integer tuner's fixed part (adapters, their
# guard copy, layer parameters, scratch) and, per fine-tune sample, one row (its int8 layer inputs,
# int16 frozen logits and their exponents: the sample and its skip-cache entry) with its label, flag
# and order entry. Rows that RAM cannot hold go to flash, slower; this counts what fits in RAM.
# An RP2040's arena, estimated: 241 KB free at boot under MicroPython 1.28 (measured on a Pico), less
# the firmware's imports (35.5 KB measured before the integer path's modules joined them at boot;
# 57 KB scaled from the unix port's 75.6 KB by the 0.76 the old imports measured board/unix), less
# the 15% of the free heap the imports' holes leave outside the largest block (the unix port's), less
# the heap the board keeps beside the arena (protocol.GENERAL_HEAP). `export --port` reads a board's
# own arena from its HELLO instead.
RP2040_ARENA_BYTES = 112 * 1024


def board_budget(dims, bits, rank=reference.Config.rank, arena=RP2040_ARENA_BYTES, guarded=True):
    """Bytes the board's arena gives the model and the tuner before samples, and how many fine-tune
    samples then fit in RAM (memplan's formula, the board's own)."""
    n_layers = len(dims) - 1
    model = fmt.file_size(dims, bits, [fmt.PER_CHANNEL] * n_layers, norm=True, lr=True)  # as export writes a user's
    tuner = memplan.int_fixed_bytes(dims, [0] * n_layers, rank, guarded)
    fixed = aligned(model) + tuner
    stride = memplan.int_row_stride(dims)
    fit = memplan.int_plan(arena - fixed, stride, None, memplan.MAX_SAMPLES)["samples"] if arena > fixed else 0
    return {"arena": arena, "model": model, "tuner": tuner, "fixed": fixed,
            "sample": stride + memplan.INT_SAMPLE_BYTES, "samples_that_fit": fit}


def check_board_budget(dims, bits, n_finetune=None, arena=RP2040_ARENA_BYTES):
    """One line about the budget; ValueError when the model and adapters leave no room to train."""
    b = board_budget(dims, bits, arena=arena)
    line = ("board budget (RP2040, a %d KB arena%s; a sample and its skip-cache row %d bytes, in RAM while it "
            "holds them, then on flash): model %.1f KB + tuner %.1f KB = %.1f KB; room for %d fine-tune "
            "samples of %d features" % (
                b["arena"] // 1024, " (estimated)" if arena == RP2040_ARENA_BYTES else "", b["sample"],
                b["model"] / 1024, b["tuner"] / 1024, b["fixed"] / 1024, b["samples_that_fit"], dims[0]))
    if b["samples_that_fit"] < 10:
        raise ValueError(line + ": too little for fine-tuning; use fewer features (or coarser --bits)")
    if n_finetune is not None and n_finetune > b["samples_that_fit"]:
        line += " in RAM; of your %d fine-tune samples the rest go to flash (or run --limit %d)" % (
            n_finetune, b["samples_that_fit"])
    return line


LR_CHOICES = (0.01, 0.02, 0.05, 0.1)  # includes reference.Config().lr, the default
# the probe's cross-validation: folds of the fine-tune set, and adapter seeds (initialisation and
# sample order) each fold is trained with
LR_PROBE = {"folds": 5, "seeds": (1, 2, 3)}


def probe_lr(prepared, config, progress=True):
    """Pick the learning rate for Skip2-LoRA on this model and data by cross-validation on the
    fine-tune set: split it into LR_PROBE["folds"] folds (a fixed permutation, SPLIT_SEED); at each
    rate of LR_CHOICES, for each seed of LR_PROBE["seeds"], fine-tune on all folds but one and
    score the one held out. The pick is the rate with the best held-out accuracy over every fold
    and seed (each fine-tune sample is scored once per seed), a tie going to the lower rate. One
    80/20 split scored one training per rate: on 50 held-out samples one run's luck outweighed the
    differences between rates (README). The test set is not touched. Returns the pick and each
    rate's held-out accuracy and mean loss."""
    X, y = prepared.inputs("finetune")
    folds = np.array_split(np.random.default_rng(SPLIT_SEED).permutation(len(y)), min(LR_PROBE["folds"], len(y)))
    seeds = LR_PROBE["seeds"]
    right, losses = {}, {}
    with bar(len(LR_CHOICES) * len(seeds) * len(folds) * config.epochs, "lr probe", progress, "epochs") as b:
        for lr in LR_CHOICES:
            b.set_postfix(lr=lr)
            right[lr], losses[lr] = 0, 0.0
            for seed in seeds:
                for k, held in enumerate(folds):
                    train = np.concatenate([f for j, f in enumerate(folds) if j != k])
                    _, tuner = reference.run(prepared.quantized_net, replace(config, method="skip2-lora", lr=lr, seed=seed),
                                             (X[train], y[train]), (X[held], y[held]), on_epoch=lambda *_: b.update())
                    with np.errstate(over="ignore", invalid="ignore"):  # a diverged rate: an infinite loss
                        z = tuner.logits(X[held]).astype(np.float64)
                        loss = reference.softmax_grad(z, y[held])[1]
                    right[lr] += int((z.argmax(axis=1) == y[held]).sum())
                    losses[lr] += len(held) * (loss if np.isfinite(loss) else float("inf"))
    scored = len(seeds) * len(y)
    pick = max(LR_CHOICES, key=lambda lr: (right[lr], -lr))
    return {"lr": pick, "default_lr": config.lr, "folds": len(folds), "seeds": list(seeds),
            "held_out_accuracy": {str(lr): right[lr] / scored for lr in LR_CHOICES},
            "held_out_loss": {str(lr): losses[lr] / scored for lr in LR_CHOICES},
            "finetune_samples": len(y), "epochs": config.epochs, "rank": config.rank}


def describe_probe(probe):
    """'Skip2-LoRA, 30 epochs, 5-fold cross-validation on 250 fine-tune samples x 3 seeds'."""
    return "Skip2-LoRA, %s, %d-fold cross-validation on %d fine-tune samples x %s" % (
        plural(probe["epochs"], "epoch"), probe["folds"], probe["finetune_samples"], plural(len(probe["seeds"]), "seed"))


def check_lr_probe(prepared, config, progress=True):
    """The probe's pick against the best rate in hindsight: fine-tune Skip2-LoRA on the whole
    fine-tune set at every rate of LR_CHOICES, with each seed of LR_PROBE["seeds"], and score the
    test set. One seed's test accuracy moves by points between seeds (the sample order and the
    adapters' start), so the best rate is the best mean over the seeds; the first seed's figures
    are kept beside. Returns the probe with the test accuracies added."""
    probe = probe_lr(prepared, config, progress)
    seeds = LR_PROBE["seeds"]
    test = {}
    with bar(len(LR_CHOICES) * len(seeds) * config.epochs, "lr check (test set)", progress, "epochs") as b:
        for lr in LR_CHOICES:
            test[str(lr)] = [reference.run(prepared.quantized_net, replace(config, method="skip2-lora", lr=lr, seed=seed),
                                           prepared.inputs("finetune"), prepared.inputs("test"),
                                           on_epoch=lambda *_: b.update())[0]["accuracy"] for seed in seeds]
    mean = {lr: float(np.mean(accs)) for lr, accs in test.items()}
    first = {lr: accs[0] for lr, accs in test.items()}
    pick = str(probe["lr"])
    probe.update(test_accuracy=mean, test_accuracy_per_seed=test,
                 pick_below_best_points=100 * (max(mean.values()) - mean[pick]),
                 pick_below_best_points_first_seed=100 * (max(first.values()) - first[pick]))
    return probe


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
    from .onboard import run_methods
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

    from .board import run_job
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
        "model %s (%s), bits %s, %d bytes; source accuracy %squantized %.1f%%" % (
            "-".join(map(str, rep["dims"])), rep.get("path", "pretrained here"), rep["bits"], rep["model_bytes"],
            "" if rep["source_accuracy_float"] is None else "float %.1f%%, " % (100 * rep["source_accuracy_float"]),
            100 * rep["source_accuracy_quantized"]),
        "runtime %s; %s; %d fine-tune and %d test samples" % (
            results[0]["runtime"], run_settings(results[0]), len(prepared.scenario.finetune[1]),
            len(prepared.scenario.test[1])),
        "",
        "%-19s %9s %8s %11s %13s %13s %11s" % ("method", "accuracy", "gain", "fine-tune", "frozen fwd",
                                                  "adapter fwd", "backward"),
        "%-19s %8.1f%% %8s %11s %13s %13s %11s" % ("(none)", 100 * rep["drifted_accuracy_before"], "",
                                                      "", "MACs", "MACs", "MACs"),
    ]
    for r in results:
        lines.append("%-19s %8.1f%% %+7.1f %10.3fs %13d %13d %11d%s" % (
            row_label(r), 100 * r["accuracy"], 100 * (r["accuracy"] - rep["drifted_accuracy_before"]),
            r["finetune_seconds"], r["macs"]["frozen_forward"], r["macs"]["adapter_forward"],
            r["macs"]["backward"], "  (diverged: loss not finite)" if r["diverged"] else ""))
    if any("peak_heap_bytes" in r for r in results):
        lines += _firmware_table(results)
    lines += _comparisons(results)
    ratio = time_ratio(results)
    if ratio is not None:
        lines += ["", "fine-tune time Skip2-LoRA / LoRA-All = %.3f (measured in this run, %s; %s)" % (
            ratio, results[0]["runtime"], "the paper: 0.10" if results[0]["runtime"] != "numpy" else
            "numpy's per-call overhead hides the MACs saved; the paper's 0.10 is a firmware figure")]
    return "\n".join(lines)


def run_settings(result):
    """The settings every table states: '30 epochs, rank 4, lr 0.05, batch 1, seed 1'."""
    return "%s, rank %d, lr %g, batch %d, seed %d" % (
        plural(result["epochs"], "epoch"), result["rank"], result["lr"], result["batch"], result["seed"])


def plural(n, word):
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def _comparisons(results):
    # knife-edge figures: printed here, not asserted in tests (they move by tenths between machines)
    first = {}
    for r in results:
        first.setdefault(r["method"], r)
    if "skip2-lora" not in first or "ft-all" not in first:
        return []
    return ["", "Skip2-LoRA - FT-All: %+.1f points (one seed; the paper reports comparable accuracy)" % (
        100 * (first["skip2-lora"]["accuracy"] - first["ft-all"]["accuracy"]))]


def row_label(result):
    # the board-mode rows: compact skip-cache under the RP2040 budget; the integer path
    if result.get("path") == "int":
        return result["method"] + "/integer"
    return result["method"] + ("/int8" if result.get("cache_mode") == "compact" else "")


def _firmware_table(results):
    # the float path's phases; the integer path's fused step (adapter forward, backward and update
    # in one kernel call) is its own column
    phases = ("frozen_forward", "adapter_forward", "backward", "update", "step", "cache")
    lines = ["", "time per phase, seconds (%s, kernels %s); peak heap (MicroPython's, from before the firmware's "
             "imports; n/a off a MicroPython heap) and skip-cache, KB" % (results[0]["runtime"], results[0]["kernels"]),
        "%-19s" % "method" + "".join("%12s" % p.replace("_forward", " fwd") for p in phases)
        + "%10s %9s %9s" % ("peak heap", "cache", "spilled")]
    for r in results:
        lines.append("%-19s" % row_label(r) + "".join("%12.3f" % r["phase_seconds"].get(p, 0.0) for p in phases)
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
    """Peak heap where it is a MicroPython heap a board would need: the firmware under the real
    MicroPython on the host, or a real board; not CPython's, not the emulator's WebAssembly heap."""
    return "%.1f" % (result["peak_heap_bytes"] / 1024) if heap_is_a_boards(result) else "n/a"


def heap_is_a_boards(result):
    from s2l.tuning import BOARDS
    if result["runtime"] == "serial":
        return result.get("board", {}).get("platform") in BOARDS
    return result["runtime"] == "micropython"


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
