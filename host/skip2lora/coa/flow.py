"""CoA-LoRA end to end: `skip2lora coa train` (Pareto search + joint training, one JSON),
`skip2lora export --budget-bytes N | --board B` (the best configuration on the front that fits,
written with its folded CoA adapter as the board's starting adapter), and `skip2lora coa bench`
(the held-out table, the uniform-4-bit check, on-device start from CoA vs zero, the front's plot)."""
import hashlib
import json
import os
import time

import numpy as np
from tqdm import tqdm

from s2l import modelfile as fmt
from s2l.inttuner import MAX_LAYERS_X_RANK

from ..data.catalog import FAN_DATA, SCENARIOS, load_scenario
from ..data.scenarios import DEFAULT_SCENARIO
from ..files import write_file
from ..train import reference
from ..train.pretrain import pretrain
from ..train.quantconfig import QuantConfig, model_bytes, random_configs
from .model import CoA, damage, evaluate
from .pareto import search

DEFAULT_RECORD = os.path.join("out", "coa", "coa.json")
HIDDEN, SCALE = 128, 3.0  # the configuration model's width and the scale s of s M(c) + I
SEEDS = (0, 1, 2)  # CoA and the per-configuration baselines are trained once per seed; claims use the mean
VALIDATION = 200  # pretraining samples held out of every training, to choose hyperparameters on
# distillation temperature, chosen on the validation part (mean KL damage on the held-out
# configurations over seeds 0-2: T = 1 0.0155, 2 0.0115, 3 0.0103, 4 0.0117)
TEMPERATURE = 3.0
# CoA's Adam steps, chosen on the validation part the same way (at T = 3: 20,000 0.0103, 40,000
# 0.0093; lr 0.005, and 0.007 gave 0.0130)
STEPS = 40000
# The budget rule. Bytes a board can give the model file: its arena (the block it takes at boot for a
# job: the model and the fine-tune) less FINETUNE_RESERVE for the fine-tune itself (the integer
# tuner, its guard copy and 250 digits samples' rows: 62 KB by s2l/memplan's formula), no more than
# its free flash (the file is kept there); a board on a port reports its arena in HELLO. A named
# board: its free heap from DESIGN.md (~190 KB RP2040, ~110 KB ESP32) less the 100 KB the fine-tune
# took before the arena (measured then: the RP2040-mode run over 250 digits samples peaked at 113 KB)
FINETUNE_RESERVE = 64 * 1024
BOARD_BUDGETS = {"rp2040": 90 * 1024, "esp32": 10 * 1024}
# on-device comparison: a 2-bit-heavy and a 3-bit-heavy configuration
ON_DEVICE_CONFIGS = (QuantConfig((2, 2, 3), (16, 16, fmt.PER_CHANNEL)),
                     QuantConfig((3, 3, 2), (fmt.PER_CHANNEL, 32, 16)))


def fingerprint(net):
    """Which float network a record was trained with (pretraining is deterministic)."""
    h = hashlib.sha1()
    for w, b in zip(net.W, net.b):
        h.update(np.ascontiguousarray(w).tobytes() + np.ascontiguousarray(b).tobytes())
    return h.hexdigest()[:16]


def held_out_configs(dims, per_bin=2, seed=12345):
    """Configurations kept out of CoA's training: `per_bin` in each average-bits bin [2,3) .. [7,8]."""
    pool = random_configs(len(dims) - 1, 4000, np.random.default_rng(seed))
    pool = [pool[k] for k in np.random.default_rng(seed).permutation(len(pool))]
    held = []
    for lo in range(2, 8):
        held += [c for c in pool if lo <= c.average_bits(dims) < lo + 1 or (lo == 7 and c.average_bits(dims) == 8)][:per_bin]
    return held


def source_net(scenario_name, data_path=None, progress=True):
    scenario = load_scenario(scenario_name, data_path)
    return scenario, pretrain(*scenario.pretrain, len(scenario.classes), seed=0, progress=progress)


def source_split(scenario):
    """The pretraining set split once (fixed permutation, seed 0) into what CoA, the search and
    the per-configuration baselines train on and a validation part none of them trains on: every
    hyperparameter (the baseline's lr and steps, CoA's settings) is chosen on the validation part,
    and the source test set only scores."""
    X = scenario.pretrain[0].astype(np.float64)
    order = np.random.default_rng(0).permutation(len(X))
    return X[order[VALIDATION:]], X[order[:VALIDATION]]


def train(scenario_name, rank=4, hidden=HIDDEN, scale=SCALE, steps=STEPS, lr=5e-3, per_step=1, rounds=6, initial=40,
          per_round=32, extra=200, seeds=SEEDS, gains=False, temperature=TEMPERATURE, data_path=None, progress=True):
    """Search the front on the source domain (objective: bytes and the damage, the KL divergence
    from the float network, on the training part of the pretraining set), train CoA once per seed
    of `seeds` on the searched configurations plus `extra` random ones (minus the held-out ones),
    and evaluate the front with and without the first seed's CoA adapter (the one `export`
    writes). Returns the record."""
    scenario, net = source_net(scenario_name, data_path, progress)
    dims = net.dims
    X, _ = source_split(scenario)
    Xs, ys = scenario.source_test
    held = held_out_configs(dims)
    with tqdm(total=rounds, desc="Pareto search", disable=not progress, leave=False) as bar:
        evaluated, front = search(dims, lambda c: damage(net, c, X), rounds=rounds, initial=initial,
                                  per_round=per_round, seed=seeds[0],
                                  on_round=lambda r, n: (bar.set_postfix(evaluated=n), bar.update()))
    # the search's configurations crowd the front; random ones keep the rest of the space in view
    # (measured on the default scenario: a difference within the run-to-run noise, about a point)
    extra_configs = random_configs(len(dims) - 1, extra, np.random.default_rng(seeds[0] + 1))
    training = [c for c in dict.fromkeys(list(evaluated) + extra_configs) if c not in held]
    coas = []
    for seed in seeds:
        coa = CoA(dims, rank=rank, hidden=hidden, scale=scale, seed=seed, gains=gains)
        with tqdm(total=steps, desc="CoA training, seed %d" % seed, disable=not progress, leave=False) as bar:
            def on_step(step, loss):
                if step % 50 == 0:
                    bar.set_postfix(loss="%.4f" % loss)
                bar.update()
            seconds = coa.fit(net, training, X, steps, lr=lr, per_step=per_step, seed=seed, temperature=temperature,
                              on_step=on_step)
        coas.append({"seed": seed, "seconds": seconds, "coa": coa.as_json()})
    coa = CoA.from_json(coas[0]["coa"])
    entries = []
    for c in tqdm(front, desc="front with CoA", disable=not progress, leave=False):
        entries.append({"config": c.as_json(), "label": c.label, "average_bits": c.average_bits(dims),
                        "model_bytes": c.file_bytes(dims), "file_bytes": c.file_bytes(dims, rank),
                        "damage": evaluated[c][1], "damage_coa": damage(net, c, X, coa),
                        "accuracy": evaluate(net, c, Xs, ys)[1], "accuracy_coa": evaluate(net, c, Xs, ys, coa)[1]})
    return {"scenario": scenario.name, "network": fingerprint(net), "dims": dims, "rank": rank,
            "steps": steps, "lr": lr, "per_step": per_step, "temperature": temperature,
            "validation": VALIDATION,
            "coa_train_seconds": float(np.mean([s["seconds"] for s in coas])), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "evaluated": [{"config": c.as_json(), "model_bytes": v[0], "damage": v[1]} for c, v in evaluated.items()],
            "training_configs": [c.as_json() for c in training],
            "held_out": [c.as_json() for c in held], "front": entries, "coa": coas[0]["coa"], "seeds": coas}


def load_record(path, scenario_name):
    if not os.path.exists(path):
        raise ValueError("no CoA results at %s: run `skip2lora coa train --scenario %s` first" % (path, scenario_name))
    with open(path) as f:
        record = json.load(f)
    if record["scenario"] != scenario_name:
        raise ValueError("%s holds CoA results for scenario %r, not %r" % (path, record["scenario"], scenario_name))
    if "seeds" not in record or "temperature" not in record:
        raise ValueError("%s was written by an older `skip2lora coa train` (one seed, no validation part): "
                         "run it again" % path)
    return record


def budget_from_hello(info, url):
    """Bytes for the model file on the board at `url` from its HELLO reply (the rule above)."""
    if info.get("free_heap") is None:
        raise ValueError("the board at %s reports no free heap (an emulator under CPython or WebAssembly): "
                         "give --budget-bytes or --board" % url)
    arena, flash = info["arena"]["size"], info.get("flash_free")
    budget = min(v for v in (arena - FINETUNE_RESERVE, flash) if v is not None)
    if budget < 1:
        raise ValueError("the board at %s has a %d-byte arena: nothing is left for a model beside the "
                         "fine-tune's %d" % (url, arena, FINETUNE_RESERVE))
    return budget


def board_budget(url):
    """(budget, HELLO reply) of the board at `url`."""
    from ..link.client import Client
    with Client(url) as client:
        info = client.hello()
    return budget_from_hello(info, url), info


def budget_of(budget_bytes, board, port=None):
    if sum(x is not None for x in (budget_bytes, board, port)) > 1:
        raise ValueError("give one of --budget-bytes, --board, --port")
    if port is not None:
        budget, info = board_budget(port)
        print("the board at %s reports a %s-byte arena and %s bytes of free flash: a %d-byte budget" % (
            port, info["arena"]["size"], info.get("flash_free"), budget))
        return budget
    if board:
        if board not in BOARD_BUDGETS:
            raise ValueError("unknown board %r (known: %s)" % (board, ", ".join(sorted(BOARD_BUDGETS))))
        return BOARD_BUDGETS[board]
    if budget_bytes < 1:
        raise ValueError("--budget-bytes must be >= 1, got %d" % budget_bytes)
    return budget_bytes


def pick(record, budget):
    """The front entry with the least damage under its CoA adapter whose file (model and adapter)
    fits `budget` bytes."""
    fits = [e for e in record["front"] if e["file_bytes"] <= budget]
    if not fits:
        smallest = min(e["file_bytes"] for e in record["front"])
        raise ValueError("no configuration on the CoA front fits %d bytes (the smallest file, with its rank-%d "
                         "adapter, takes %d)" % (budget, record["rank"], smallest))
    return min(fits, key=lambda e: (e["damage_coa"], e["file_bytes"]))


def trained_net(record, record_path, scenario_name, data_path=None, progress=True):
    """The float network `record` was trained with, pretrained again (deterministic, seed 0)."""
    _, net = source_net(scenario_name, data_path, progress)
    if fingerprint(net) != record["network"]:
        raise ValueError("the network pretrained now differs from the one %s was trained with: "
                         "run `skip2lora coa train` again" % record_path)
    return net


def model_file(record, net, entry):
    """The model file of a front entry, with its folded CoA adapter as the starting adapter."""
    config = QuantConfig.from_json(entry["config"])
    return model_bytes(net, config, CoA.from_json(record["coa"]).adapter(config))


def export(scenario_name, budget, output, record_path=DEFAULT_RECORD, data_path=None, progress=True):
    """Write the best fitting configuration with its folded CoA adapter; returns (front entry,
    file bytes, adapter rank)."""
    record = load_record(record_path, scenario_name)
    entry = pick(record, budget)
    data = model_file(record, trained_net(record, record_path, scenario_name, data_path, progress), entry)
    folder = os.path.dirname(output)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(output, "wb") as f:
        f.write(data)
    return entry, data, record["rank"]


# -- the benchmark ------------------------------------------------------------------------------------
# The per-configuration baseline: a plain Skip-LoRA adapter of the same rank fitted to one
# configuration alone, with CoA's objective and optimiser (Adam, batch 64, cosine lr, distilled from
# the float network at CoA's temperature on the training part of the pretraining set). Every
# (lr, steps) of this grid is run for every seed; the one with the least mean damage on the
# validation part is the baseline. The grid reaches past the setting validation picks (with the
# searched clip it picked lr 0.03 with 3,000 steps, then the grid's corner).
BASELINE_GRID = ((1e-2, 600), (3e-2, 600), (1e-2, 1500), (3e-2, 1500), (1e-1, 1500), (3e-2, 3000), (1e-1, 3000),
                 (3e-2, 6000))


def held_out_table(record, net, scenario, grid=BASELINE_GRID, progress=True):
    """Per held-out configuration and seed of the record: accuracy with no adapter, with that
    seed's CoA adapter and with the per-configuration baseline of the same seed (the setting of
    `grid` with the least mean validation damage), the baseline's fine-tuning seconds and CoA's.
    Returns {"rows", "grid": validation damage and test accuracy per setting, "chosen", "seeds"}."""
    X, X_val = source_split(scenario)
    Xs, ys = scenario.source_test
    seeds = [s["seed"] for s in record["seeds"]]
    coas = [CoA.from_json(s["coa"]) for s in record["seeds"]]
    held = [QuantConfig.from_json(layers) for layers in record["held_out"]]
    runs = {}
    with tqdm(total=len(grid) * len(held) * len(seeds), desc="per-configuration baselines", disable=not progress,
              leave=False) as bar:
        for lr, steps in grid:
            runs[lr, steps] = []  # [config][seed] = (validation damage, test accuracy, seconds)
            for c in held:
                per_seed = []
                for seed in seeds:
                    base = CoA(record["dims"], rank=record["rank"], seed=seed, configured=False)
                    seconds = base.fit(net, [c], X, steps, lr=lr, seed=seed, temperature=record["temperature"])
                    per_seed.append((damage(net, c, X_val, base), evaluate(net, c, Xs, ys, base)[1], seconds))
                    bar.update()
                runs[lr, steps].append(per_seed)
    scores = dict((k, {"validation_damage": float(np.mean([[d for d, _, _ in s] for s in v])),
                       "test_accuracy": float(np.mean([[a for _, a, _ in s] for s in v]))}) for k, v in runs.items())
    chosen = min(grid, key=lambda k: scores[k]["validation_damage"])
    rows = []
    for c, per_seed in zip(held, runs[chosen]):
        t0 = time.perf_counter()
        coas[0].adapter(c)
        coa_seconds = time.perf_counter() - t0
        rows.append({"label": c.label, "average_bits": c.average_bits(record["dims"]),
                     "model_bytes": c.file_bytes(record["dims"]), "none": evaluate(net, c, Xs, ys)[1],
                     "coa": [evaluate(net, c, Xs, ys, coa)[1] for coa in coas],
                     "baseline": [a for _, a, _ in per_seed],
                     "coa_damage": float(np.mean([damage(net, c, X_val, coa) for coa in coas])),
                     "baseline_damage": float(np.mean([d for d, _, _ in per_seed])),
                     "baseline_seconds": float(np.mean([t for _, _, t in per_seed])), "coa_seconds": coa_seconds,
                     "samples": len(ys)})
    return {"rows": rows, "grid": dict(("lr %g, %d steps" % k, v) for k, v in scores.items()),
            "chosen": {"lr": chosen[0], "steps": chosen[1]}, "seeds": seeds}


def uniform_check(record, net, scenario):
    """Uniform 4-bit (per channel) against what the search offers within its bytes, like for like:
    both with no adapter (the front configuration of least damage, the search's own pick), and
    both with their CoA adapters (the front configuration of least damage under CoA, what
    `export --budget-bytes` would pick)."""
    coa = CoA.from_json(record["coa"])
    dims = record["dims"]
    u4 = QuantConfig.uniform(len(dims) - 1, 4)
    budget = u4.file_bytes(dims)
    Xs, ys = scenario.source_test
    X, _ = source_split(scenario)
    fits = [e for e in record["front"] if e["model_bytes"] <= budget]
    return {"uniform": {"label": u4.label, "model_bytes": budget, "damage": damage(net, u4, X),
                        "damage_coa": damage(net, u4, X, coa),
                        "accuracy": evaluate(net, u4, Xs, ys)[1], "accuracy_coa": evaluate(net, u4, Xs, ys, coa)[1]},
            "searched": min(fits, key=lambda e: e["damage"]), "searched_coa": min(fits, key=lambda e: e["damage_coa"])}


def int_path_holds(rank, n_layers):
    """Whether the board's integer path takes adapters of this rank (its logits stay inside int32)."""
    return rank * n_layers <= MAX_LAYERS_X_RANK


def on_device(record, net, scenario_name, epochs=30, seeds=(1, 2, 3), data_path=None, progress=True):
    """Skip2-LoRA on the drifted domain by the firmware's tuners under CPython (the float path, and
    the integer path a board runs by default where it holds the rank), starting from the CoA
    adapter or from the usual zero-B adapter, per path, configuration and seed."""
    from ..runtimes.onboard import run_methods
    paths = ("float", "int") if int_path_holds(record["rank"], len(record["dims"]) - 1) else ("float",)
    scenario = load_scenario(scenario_name, data_path)
    coa = CoA.from_json(record["coa"])
    # per configuration and start, once: the model file and its accuracy before fine-tuning
    files = dict((c, {"coa": model_bytes(net, c, coa.adapter(c)), "zero": model_bytes(net, c)})
                 for c in ON_DEVICE_CONFIGS)
    before = dict((c, {"coa": evaluate(net, c, *scenario.test, coa)[1], "zero": evaluate(net, c, *scenario.test)[1]})
                  for c in ON_DEVICE_CONFIGS)
    rows = []
    with tqdm(total=len(paths) * len(ON_DEVICE_CONFIGS) * len(seeds) * 2 * epochs, desc="on-device fine-tune (cpython)",
              disable=not progress, leave=False) as bar:
        for path in paths:
            for c in ON_DEVICE_CONFIGS:
                for seed in seeds:
                    config = reference.Config(rank=record["rank"], epochs=epochs, seed=seed)
                    row = {"path": path, "label": c.label, "seed": seed}
                    for start, data in files[c].items():
                        result = run_methods(data, config, scenario.finetune, scenario.test, ["skip2-lora"], "cpython",
                                             path=path, on_epoch=lambda *a: bar.update())[0]
                        row[start] = result["accuracy"]
                        row[start + "_before"] = before[c][start]
                    rows.append(row)
    return rows


def format_bench(record, held, check, device):
    table, seeds = held["rows"], held["seeds"]
    mean = lambda v: 100 * float(np.mean(v))
    lines = ["CoA-LoRA, scenario %s, network %s, rank %d; CoA trained once per seed (%s) in %.1f s on average "
             "(%d steps, %d configurations)" % (
                 record["scenario"], "-".join(map(str, record["dims"])), record["rank"], ", ".join(map(str, seeds)),
                 record["coa_train_seconds"], record["steps"], len(record["training_configs"])), "",
             "per-configuration baseline: rank-%d Skip-LoRA fitted to one configuration alone, per seed; chosen on "
             "the validation part of the pretraining set (%d samples, in no training); per setting, mean validation "
             "damage (test accuracy, shown only):" % (record["rank"], record["validation"])]
    lines += ["  %-22s %.4f (%.2f%%)" % (k, v["validation_damage"], 100 * v["test_accuracy"]) for k, v in held["grid"].items()]
    lines += ["the least validation damage, lr %g with %d steps, is the baseline" % (
                  held["chosen"]["lr"], held["chosen"]["steps"]), "",
              "held-out configurations (never in CoA's training), source-domain test accuracy (%d samples), mean over "
              "seeds %s; per seed in the last two columns; validation damage (KL) of CoA and the baseline" % (
                  table[0]["samples"], ", ".join(map(str, seeds))),
              "%-28s %5s %6s %7s %7s %9s %8s %7s %7s %10s %20s %20s" % (
                  "configuration", "bits", "bytes", "none", "CoA", "baseline", "CoA-base", "dmg CoA", "dmg base",
                  "saved s", "CoA per seed", "baseline per seed")]
    for r in table:
        lines.append("%-28s %5.2f %6d %6.1f%% %6.1f%% %8.1f%% %+8.2f %7.4f %8.4f %10.2f %20s %20s" % (
            r["label"], r["average_bits"], r["model_bytes"], 100 * r["none"], mean(r["coa"]), mean(r["baseline"]),
            mean(r["coa"]) - mean(r["baseline"]), r["coa_damage"], r["baseline_damage"],
            r["baseline_seconds"] - r["coa_seconds"], " ".join("%.1f" % (100 * a) for a in r["coa"]),
            " ".join("%.1f" % (100 * a) for a in r["baseline"])))

    def summary(coa, base):
        gaps = [100 * (c - b) for c, b in zip(coa, base)]
        within = [g >= -1.0 - 1e-9 for g in gaps]
        above = [c > r["none"] for c, r in zip(coa, table)]
        return "CoA - baseline: mean %+.2f points, worst %+.2f; within 1.0 point: %d of %d; CoA above no adapter: " \
               "%d of %d (at least equal: %d); both: %d of %d" % (
                   np.mean(gaps), min(gaps), sum(within), len(gaps), sum(above), len(table),
                   sum(c >= r["none"] for c, r in zip(coa, table)), sum(w and a for w, a in zip(within, above)),
                   len(table))
    lines.append("mean over seeds: " + summary([np.mean(r["coa"]) for r in table], [np.mean(r["baseline"]) for r in table]))
    for k, seed in enumerate(seeds):
        lines.append("seed %d alone:    " % seed + summary([r["coa"][k] for r in table], [r["baseline"][k] for r in table]))
    lines += ["fine-tuning time saved: %.2f s per configuration (baseline), CoA's adapter in %.1f us; CoA's training "
              "pays for itself after %.1f configurations" % (
                  np.mean([r["baseline_seconds"] for r in table]), 1e6 * np.mean([r["coa_seconds"] for r in table]),
                  record["coa_train_seconds"] / np.mean([r["baseline_seconds"] for r in table])), ""]
    u = check["uniform"]
    lines.append("at the bytes of uniform 4-bit (%d B), like for like; damage: KL from the float network on the "
                 "training part of the pretraining set; accuracy on the source test set" % u["model_bytes"])
    row = "  %-34s %-26s %5d B damage %.4f accuracy %.1f%%"
    for adapter, key in (("no adapter", ""), ("CoA adapter", "_coa")):
        s = check["searched" + key]
        lines.append(row % ("uniform 4-bit, " + adapter, u["label"], u["model_bytes"], u["damage" + key],
                            100 * u["accuracy" + key]))
        lines.append(row % ("searched (least damage), " + adapter, s["label"], s["model_bytes"], s["damage" + key],
                            100 * s["accuracy" + key]))
        lines.append("  -> searched - uniform, both with %s: %+.1f points" % (
            adapter, 100 * (s["accuracy" + key] - u["accuracy" + key])))
    lines.append("")
    lines += format_on_device(device)
    return "\n".join(lines)


def format_on_device(device):
    """The on-device comparison's lines, per row and per path and configuration (none for no rows)."""
    if not device:
        return []
    only_float = "int" not in [r["path"] for r in device]
    lines = ["on-device Skip2-LoRA (firmware tuners, CPython) on the drifted domain, start CoA vs zero%s" % (
             " (float path only: the integer path holds layers x rank <= %d)" % MAX_LAYERS_X_RANK if only_float else ""),
             "%-5s %-28s %5s %12s %12s %12s %12s" % ("path", "configuration", "seed", "CoA before", "CoA after",
                                                     "zero before", "zero after")]
    for r in device:
        lines.append("%-5s %-28s %5d %11.1f%% %11.1f%% %11.1f%% %11.1f%%" % (
            r["path"], r["label"], r["seed"], 100 * r["coa_before"], 100 * r["coa"], 100 * r["zero_before"],
            100 * r["zero"]))
    for key in dict.fromkeys((r["path"], r["label"]) for r in device):
        rs = [r for r in device if (r["path"], r["label"]) == key]
        lines.append("%-5s %-28s mean over %d seeds: CoA %.1f%%, zero %.1f%% (%+.1f points)" % (
            key + (len(rs), 100 * np.mean([r["coa"] for r in rs]), 100 * np.mean([r["zero"] for r in rs]),
                   100 * (np.mean([r["coa"] for r in rs]) - np.mean([r["zero"] for r in rs])))))
    return lines


def plot_front(record, net, scenario, path):
    """Source accuracy against model bytes: every evaluated configuration, uniform 8/4/3/2-bit,
    the searched front with and without the CoA adapter."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dims = record["dims"]
    coa = CoA.from_json(record["coa"])
    Xs, ys = scenario.source_test
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ev = [QuantConfig.from_json(e["config"]) for e in record["evaluated"]]
    ax.scatter([c.file_bytes(dims) for c in ev], [100 * evaluate(net, c, Xs, ys)[1] for c in ev], s=8, c="0.75",
               label="evaluated by the search")
    front = record["front"]
    ax.plot([e["model_bytes"] for e in front], [100 * e["accuracy"] for e in front], "o-", ms=4, label="searched front, no adapter")
    ax.plot([e["model_bytes"] for e in front], [100 * e["accuracy_coa"] for e in front], "s-", ms=4, label="searched front, CoA adapter")
    for bits, marker in ((8, "^"), (4, "v"), (3, "D"), (2, "P")):
        u = QuantConfig.uniform(len(dims) - 1, bits)
        ax.scatter([u.file_bytes(dims)] * 2, [100 * evaluate(net, u, Xs, ys)[1], 100 * evaluate(net, u, Xs, ys, coa)[1]],
                   marker=marker, s=60, c=["k", "tab:red"], zorder=5, label="uniform %d-bit (black: none, red: CoA)" % bits)
    ax.set_xlabel("model file bytes (without the adapter section)")
    ax.set_ylabel("source-domain test accuracy [%]")
    ax.set_title("CoA-LoRA Pareto front, %s %s" % (record["scenario"], "-".join(map(str, dims))))
    ax.set_ylim(top=100)  # the bottom follows the lowest point
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bench(record, scenario_name, epochs=30, seeds=(1, 2, 3), plot=None, device=True, data_path=None, progress=True):
    scenario, net = source_net(scenario_name, data_path, progress)
    if fingerprint(net) != record["network"]:
        raise ValueError("the network pretrained now differs from the one the CoA record was trained with")
    held = held_out_table(record, net, scenario, progress=progress)
    check = uniform_check(record, net, scenario)
    rows = on_device(record, net, scenario_name, epochs, seeds, data_path=data_path, progress=progress) if device else []
    if plot:
        plot_front(record, net, scenario, plot)
    return {"held_out": held, "uniform_4bit": check, "on_device": rows}


# -- the command line (registered by cli.py) ------------------------------------------------------------
def add_export_flags(p):
    p.add_argument("--budget-bytes", type=int, help="pick the best CoA-front configuration whose file fits N bytes (default: none, --bits decides)")
    p.add_argument("--board", help="the same with a board's budget: %s (default: none)" % ", ".join(
        "%s %d B" % kv for kv in sorted(BOARD_BUDGETS.items())))
    p.add_argument("--port", help="the same with the free memory the board on this port (or the emulator) reports: "
                                  "free heap less %d KB for the fine-tune, within its largest free block and free "
                                  "flash (default: none)" % (FINETUNE_RESERVE // 1024))
    p.add_argument("--coa", default=DEFAULT_RECORD, help="results of `skip2lora coa train` (default: %(default)s)")


def cmd_export_budget(args):
    if args.bits:
        raise ValueError("--bits and --budget-bytes/--board/--port exclude each other (the budget picks the bits)")
    budget = budget_of(args.budget_bytes, args.board, args.port)
    entry, data, rank = export(args.scenario, budget, args.output, args.coa, args.data, not args.quiet)
    print("wrote %s (%d bytes of a %d-byte budget): %s, %.2f average bits, with its rank-%d CoA adapter" % (
        args.output, len(data), budget, entry["label"], entry["average_bits"], rank))
    print("source-domain test accuracy: %.1f%% quantized, %.1f%% with the CoA adapter" % (
        100 * entry["accuracy"], 100 * entry["accuracy_coa"]))
    if not int_path_holds(rank, len(entry["config"])):
        print("rank %d is beyond the board's integer path (layers x rank <= %d): fine-tune it with "
              "`skip2lora run --path float`" % (rank, MAX_LAYERS_X_RANK))


def cmd_train(args):
    record = train(args.scenario, rank=args.rank, steps=args.steps, lr=args.lr, per_step=args.per_step,
                   rounds=args.rounds, seeds=tuple(range(args.seeds)), gains=args.gains,
                   temperature=args.temperature, data_path=args.data, progress=not args.quiet)
    write_file(args.out, json.dumps(record))
    front = record["front"]
    print("CoA-LoRA on %s: %d configurations evaluated, %d on the front (per bytes bin), CoA trained on %d in %.1f s" % (
        record["scenario"], len(record["evaluated"]), len(front), len(record["training_configs"]),
        record["coa_train_seconds"]))
    print("%-28s %6s %6s %9s %9s" % ("configuration", "bits", "bytes", "accuracy", "with CoA"))
    for e in front:
        print("%-28s %6.2f %6d %8.1f%% %8.1f%%" % (e["label"], e["average_bits"], e["model_bytes"],
                                                  100 * e["accuracy"], 100 * e["accuracy_coa"]))
    print("written to %s" % args.out)


def cmd_bench(args):
    record = load_record(args.coa, args.scenario)
    result = bench(record, args.scenario, args.epochs, tuple(range(1, args.seeds + 1)), args.plot,
                   not args.no_device, args.data, not args.quiet)
    print(format_bench(record, result["held_out"], result["uniform_4bit"], result["on_device"]))
    if args.plot:
        print("\nplot written to %s" % args.plot)
    if args.json:
        write_file(args.json, json.dumps(result))
        print("results written to %s" % args.json)


def _add_common(p):
    p.add_argument("--scenario", "--dataset", default=DEFAULT_SCENARIO, choices=SCENARIOS, help="drift scenario")
    p.add_argument("--data", help="folder of the cooling-fan dataset (default: %s)" % FAN_DATA)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def register(sub):
    p = sub.add_parser("coa", help="CoA-LoRA: a quantization configuration per board, and an adapter that fits it")
    coa_sub = p.add_subparsers(dest="coa_command", required=True)
    t = coa_sub.add_parser("train", help="Pareto search of configurations + joint training of the CoA model")
    _add_common(t)
    t.add_argument("--rank", type=int, default=4, help="adapter rank (default: %(default)s)")
    t.add_argument("--steps", type=int, default=STEPS, help="CoA training steps (Adam, batch 64) (default: %(default)s)")
    t.add_argument("--lr", type=float, default=5e-3, help="Adam's lr, cosine to zero (default: %(default)s)")
    t.add_argument("--per-step", type=int, default=1, help="configurations per step (default: %(default)s)")
    t.add_argument("--rounds", type=int, default=6, help="search rounds (surrogate + NSGA-II) (default: %(default)s)")
    t.add_argument("--seeds", type=int, default=len(SEEDS), help="CoA trainings, seeds 0..N-1 (default: %(default)s)")
    t.add_argument("--gains", action="store_true", help="the configuration model also scales each adapter's outputs")
    t.add_argument("--temperature", type=float, default=TEMPERATURE, help="distillation temperature (default: %(default)s)")
    t.add_argument("--out", default=DEFAULT_RECORD, help="JSON of the front and CoA parameters (default: %(default)s)")
    t.set_defaults(func=cmd_train)
    b = coa_sub.add_parser("bench", help="held-out table, uniform-4-bit check, on-device CoA vs zero start, plot")
    _add_common(b)
    b.add_argument("--coa", default=DEFAULT_RECORD, help="results of `coa train` (default: %(default)s)")
    b.add_argument("--epochs", type=int, default=30, help="on-device fine-tune epochs")
    b.add_argument("--seeds", type=int, default=3, help="on-device seeds 1..N")
    b.add_argument("--no-device", action="store_true", help="skip the on-device comparison")
    b.add_argument("--plot", default=os.path.join("out", "coa", "pareto.png"), help="PNG of the front")
    b.add_argument("--json", help="write the results JSON here")
    b.set_defaults(func=cmd_bench)
