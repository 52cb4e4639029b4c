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

from . import reference
from .coa import CoA, evaluate
from .pareto import search
from .pipeline import FAN_DATA, SCENARIOS, load_scenario
from .pretrain import pretrain
from .quantconfig import QuantConfig, model_bytes, random_configs
from .scenarios import DEFAULT_SCENARIO

DEFAULT_RECORD = os.path.join("out", "coa", "coa.json")
# Bytes a board can give the model file: its free heap (DESIGN.md: ~190 KB on an RP2040, ~110 KB
# on an ESP32) less 100 KB for the fine-tune itself (the RP2040-mode Skip2-LoRA run over 250 digits
# samples peaks at 113 KB of heap, of which the 8-bit model takes about 11 KB).
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


def train(scenario_name, rank=4, hidden=64, steps=6000, lr=5e-4, rounds=4, initial=40, per_round=16, extra=200,
          seed=0, data_path=None, progress=True):
    """Search the front on the source domain, train CoA on the searched configurations plus `extra`
    random ones (minus the held-out ones), and evaluate the front with and without the CoA
    adapter. Returns the record."""
    scenario, net = source_net(scenario_name, data_path, progress)
    dims = net.dims
    X, y = scenario.pretrain
    Xs, ys = scenario.source_test
    X64 = X.astype(np.float64)
    held = held_out_configs(dims)
    with tqdm(total=rounds, desc="Pareto search", disable=not progress, leave=False) as bar:
        evaluated, front = search(dims, lambda c: evaluate(net, c, X, y)[0], rounds=rounds, initial=initial,
                                  per_round=per_round, seed=seed,
                                  on_round=lambda r, n: (bar.set_postfix(evaluated=n), bar.update()))
    # the search's configurations crowd the front; random ones keep the rest of the space in view
    # (measured on the default scenario: a difference within the run-to-run noise, about a point)
    extra_configs = random_configs(len(dims) - 1, extra, np.random.default_rng(seed + 1))
    training = [c for c in dict.fromkeys(list(evaluated) + extra_configs) if c not in held]
    coa = CoA(dims, rank=rank, hidden=hidden, seed=seed)
    with tqdm(total=steps, desc="CoA training", disable=not progress, leave=False) as bar:
        def on_step(step, loss):
            if step % 50 == 0:
                bar.set_postfix(loss="%.4f" % loss)
            bar.update()
        seconds = coa.fit(net, training, X64, y, steps, lr=lr, seed=seed, on_step=on_step)
    entries = []
    for c in tqdm(front, desc="front with CoA", disable=not progress, leave=False):
        loss_coa = evaluate(net, c, X, y, coa)[0]
        entries.append({"config": c.as_json(), "label": c.label, "average_bits": c.average_bits(dims),
                        "model_bytes": c.file_bytes(dims), "file_bytes": c.file_bytes(dims, rank),
                        "loss": evaluated[c][1], "loss_coa": loss_coa,
                        "accuracy": evaluate(net, c, Xs, ys)[1], "accuracy_coa": evaluate(net, c, Xs, ys, coa)[1]})
    return {"scenario": scenario.name, "network": fingerprint(net), "dims": dims, "rank": rank,
            "steps": steps, "coa_train_seconds": seconds, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "evaluated": [{"config": c.as_json(), "model_bytes": v[0], "loss": v[1]} for c, v in evaluated.items()],
            "training_configs": [c.as_json() for c in training],
            "held_out": [c.as_json() for c in held], "front": entries, "coa": coa.as_json()}


def load_record(path, scenario_name):
    if not os.path.exists(path):
        raise ValueError("no CoA results at %s: run `skip2lora coa train --scenario %s` first" % (path, scenario_name))
    with open(path) as f:
        record = json.load(f)
    if record["scenario"] != scenario_name:
        raise ValueError("%s holds CoA results for scenario %r, not %r" % (path, record["scenario"], scenario_name))
    return record


def budget_of(budget_bytes, board):
    if budget_bytes is not None and board:
        raise ValueError("give --budget-bytes or --board, not both")
    if board:
        if board not in BOARD_BUDGETS:
            raise ValueError("unknown board %r (known: %s)" % (board, ", ".join(sorted(BOARD_BUDGETS))))
        return BOARD_BUDGETS[board]
    if budget_bytes < 1:
        raise ValueError("--budget-bytes must be >= 1, got %d" % budget_bytes)
    return budget_bytes


def pick(record, budget):
    """The front entry with the lowest source loss under its CoA adapter whose file (model and
    adapter) fits `budget` bytes."""
    fits = [e for e in record["front"] if e["file_bytes"] <= budget]
    if not fits:
        smallest = min(e["file_bytes"] for e in record["front"])
        raise ValueError("no configuration on the CoA front fits %d bytes (the smallest file, with its rank-%d "
                         "adapter, takes %d)" % (budget, record["rank"], smallest))
    return min(fits, key=lambda e: (e["loss_coa"], e["file_bytes"]))


def export(scenario_name, budget, output, record_path=DEFAULT_RECORD, data_path=None, progress=True):
    """Write the best fitting configuration with its folded CoA adapter; returns (front entry,
    file bytes, adapter rank)."""
    record = load_record(record_path, scenario_name)
    entry = pick(record, budget)
    _, net = source_net(scenario_name, data_path, progress)
    if fingerprint(net) != record["network"]:
        raise ValueError("the network pretrained now differs from the one %s was trained with: "
                         "run `skip2lora coa train` again" % record_path)
    config = QuantConfig.from_json(entry["config"])
    data = model_bytes(net, config, CoA.from_json(record["coa"]).adapter(config))
    folder = os.path.dirname(output)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(output, "wb") as f:
        f.write(data)
    return entry, data, record["rank"]


# -- the benchmark ------------------------------------------------------------------------------------
def held_out_table(record, net, scenario, base_steps=600, seed=0, progress=True):
    """Per held-out configuration: accuracy with no adapter, CoA, and an adapter fine-tuned for it
    alone (same rank, Adam, `base_steps` steps), the baseline's fine-tuning seconds and CoA's."""
    coa = CoA.from_json(record["coa"])
    X, y = scenario.pretrain
    Xs, ys = scenario.source_test
    rows = []
    for layers in tqdm(record["held_out"], desc="per-configuration baselines", disable=not progress, leave=False):
        c = QuantConfig.from_json(layers)
        base = CoA(record["dims"], rank=record["rank"], seed=seed, configured=False)
        base_seconds = base.fit(net, [c], X.astype(np.float64), y, base_steps, seed=seed)
        t0 = time.perf_counter()
        coa.adapter(c)
        coa_seconds = time.perf_counter() - t0
        rows.append({"label": c.label, "average_bits": c.average_bits(record["dims"]),
                     "model_bytes": c.file_bytes(record["dims"]), "none": evaluate(net, c, Xs, ys)[1],
                     "coa": evaluate(net, c, Xs, ys, coa)[1], "baseline": evaluate(net, c, Xs, ys, base)[1],
                     "baseline_seconds": base_seconds, "coa_seconds": coa_seconds, "samples": len(ys)})
    return rows


def uniform_check(record, net, scenario):
    """Uniform 4-bit (per channel) against the front configuration with the lowest source loss
    within its bytes: without adapters (search loss), and with CoA adapters (CoA loss)."""
    coa = CoA.from_json(record["coa"])
    dims = record["dims"]
    u4 = QuantConfig.uniform(len(dims) - 1, 4)
    budget = u4.file_bytes(dims)
    Xs, ys = scenario.source_test
    X, y = scenario.pretrain
    fits = [e for e in record["front"] if e["model_bytes"] <= budget]
    return {"uniform": {"label": u4.label, "model_bytes": budget, "loss": evaluate(net, u4, X, y)[0],
                        "loss_coa": evaluate(net, u4, X, y, coa)[0],
                        "accuracy": evaluate(net, u4, Xs, ys)[1], "accuracy_coa": evaluate(net, u4, Xs, ys, coa)[1]},
            "searched": min(fits, key=lambda e: e["loss"]), "searched_coa": min(fits, key=lambda e: e["loss_coa"])}


def on_device(record, net, scenario_name, epochs=30, seeds=(1, 2, 3), data_path=None, progress=True):
    """Skip2-LoRA on the drifted domain by the firmware's float tuner under CPython, starting from
    the CoA adapter or from the usual zero-B adapter, per configuration and seed."""
    from .onboard import run_methods
    scenario = load_scenario(scenario_name, data_path)
    coa = CoA.from_json(record["coa"])
    rows = []
    with tqdm(total=len(ON_DEVICE_CONFIGS) * len(seeds) * 2 * epochs, desc="on-device fine-tune (cpython)",
              disable=not progress, leave=False) as bar:
        for c in ON_DEVICE_CONFIGS:
            files = {"coa": model_bytes(net, c, coa.adapter(c)), "zero": model_bytes(net, c)}
            for seed in seeds:
                config = reference.Config(rank=record["rank"], epochs=epochs, seed=seed)
                row = {"label": c.label, "seed": seed}
                for start, data in files.items():
                    result = run_methods(data, config, scenario.finetune, scenario.test, ["skip2-lora"], "cpython",
                                         path="float", on_epoch=lambda *a: bar.update())[0]
                    row[start] = result["accuracy"]
                    row[start + "_before"] = evaluate(net, c, *scenario.test, coa if start == "coa" else None)[1]
                rows.append(row)
    return rows


def format_bench(record, table, check, device):
    lines = ["CoA-LoRA, scenario %s, network %s, rank %d; CoA trained once in %.1f s (%d steps, %d configurations)" % (
        record["scenario"], "-".join(map(str, record["dims"])), record["rank"], record["coa_train_seconds"],
        record["steps"], len(record["training_configs"])), "",
        "held-out configurations, source-domain test accuracy (%d samples)" % table[0]["samples"],
        "%-28s %5s %6s %7s %7s %9s %7s %11s %9s" % ("configuration", "bits", "bytes", "none", "CoA", "baseline",
                                                 "CoA-base", "baseline s", "saved s")]
    for r in table:
        lines.append("%-28s %5.2f %6d %6.1f%% %6.1f%% %8.1f%% %+7.1f %11.2f %9.2f" % (
            r["label"], r["average_bits"], r["model_bytes"], 100 * r["none"], 100 * r["coa"], 100 * r["baseline"],
            100 * (r["coa"] - r["baseline"]), r["baseline_seconds"], r["baseline_seconds"] - r["coa_seconds"]))
    gaps = [100 * (r["coa"] - r["baseline"]) for r in table]
    lines += ["CoA - baseline: mean %+.2f points, worst %+.2f; within 1.0 point: %d of %d; CoA above no adapter: %d of %d" % (
        np.mean(gaps), min(gaps), sum(g >= -1.0 for g in gaps), len(gaps),
        sum(r["coa"] > r["none"] for r in table), len(table)),
        "fine-tuning time saved: %.2f s per configuration (baseline), CoA's adapter in %.1f us; CoA's training "
        "pays for itself after %.1f configurations" % (
            np.mean([r["baseline_seconds"] for r in table]), 1e6 * np.mean([r["coa_seconds"] for r in table]),
            record["coa_train_seconds"] / np.mean([r["baseline_seconds"] for r in table])), ""]
    u = check["uniform"]
    lines.append("at the bytes of uniform 4-bit (%d B; source loss on the pretraining set, accuracy on the source test set)" % u["model_bytes"])
    lines.append("  uniform %-28s        loss %.4f accuracy %.1f%%; with CoA loss %.4f accuracy %.1f%%" % (
        u["label"], u["loss"], 100 * u["accuracy"], u["loss_coa"], 100 * u["accuracy_coa"]))
    for key, how in (("searched", "least loss"), ("searched_coa", "least CoA loss")):
        s = check[key]
        lines.append("  %-14s %-24s %5d B loss %.4f accuracy %.1f%%; with CoA loss %.4f accuracy %.1f%%" % (
            how, s["label"], s["model_bytes"], s["loss"], 100 * s["accuracy"], s["loss_coa"], 100 * s["accuracy_coa"]))
    lines.append("")
    if device:
        lines += ["on-device Skip2-LoRA (firmware float tuner, CPython) on the drifted domain, start CoA vs zero",
                  "%-28s %5s %12s %12s %12s %12s" % ("configuration", "seed", "CoA before", "CoA after",
                                                     "zero before", "zero after")]
        for r in device:
            lines.append("%-28s %5d %11.1f%% %11.1f%% %11.1f%% %11.1f%%" % (
                r["label"], r["seed"], 100 * r["coa_before"], 100 * r["coa"], 100 * r["zero_before"], 100 * r["zero"]))
        for label in dict.fromkeys(r["label"] for r in device):
            rs = [r for r in device if r["label"] == label]
            lines.append("%-28s mean over %d seeds: CoA %.1f%%, zero %.1f%% (%+.1f points)" % (
                label, len(rs), 100 * np.mean([r["coa"] for r in rs]), 100 * np.mean([r["zero"] for r in rs]),
                100 * (np.mean([r["coa"] for r in rs]) - np.mean([r["zero"] for r in rs]))))
    return "\n".join(lines)


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
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bench(record, scenario_name, base_steps=600, epochs=30, seeds=(1, 2, 3), plot=None, device=True,
          data_path=None, progress=True):
    scenario, net = source_net(scenario_name, data_path, progress)
    if fingerprint(net) != record["network"]:
        raise ValueError("the network pretrained now differs from the one the CoA record was trained with")
    table = held_out_table(record, net, scenario, base_steps, progress=progress)
    check = uniform_check(record, net, scenario)
    rows = on_device(record, net, scenario_name, epochs, seeds, data_path, progress) if device else []
    if plot:
        plot_front(record, net, scenario, plot)
    return {"held_out": table, "uniform_4bit": check, "on_device": rows}


# -- the command line (registered by cli.py) ------------------------------------------------------------
def add_export_flags(p):
    p.add_argument("--budget-bytes", type=int, help="pick the best CoA-front configuration whose file fits N bytes (default: none, --bits decides)")
    p.add_argument("--board", help="the same with a board's budget: %s (default: none)" % ", ".join(
        "%s %d B" % kv for kv in sorted(BOARD_BUDGETS.items())))
    p.add_argument("--coa", default=DEFAULT_RECORD, help="results of `skip2lora coa train` (default: %(default)s)")


def cmd_export_budget(args):
    if args.bits:
        raise ValueError("--bits and --budget-bytes/--board exclude each other (the budget picks the bits)")
    budget = budget_of(args.budget_bytes, args.board)
    entry, data, rank = export(args.scenario, budget, args.output, args.coa, args.data, not args.quiet)
    print("wrote %s (%d bytes of a %d-byte budget): %s, %.2f average bits, with its rank-%d CoA adapter" % (
        args.output, len(data), budget, entry["label"], entry["average_bits"], rank))
    print("source-domain test accuracy: %.1f%% quantized, %.1f%% with the CoA adapter" % (
        100 * entry["accuracy"], 100 * entry["accuracy_coa"]))


def _write_json(path, data):
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def cmd_train(args):
    record = train(args.scenario, rank=args.rank, steps=args.steps, rounds=args.rounds, data_path=args.data,
                   progress=not args.quiet)
    _write_json(args.out, record)
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
    result = bench(record, args.scenario, args.base_steps, args.epochs, tuple(range(1, args.seeds + 1)), args.plot,
                   not args.no_device, args.data, not args.quiet)
    print(format_bench(record, result["held_out"], result["uniform_4bit"], result["on_device"]))
    if args.plot:
        print("\nplot written to %s" % args.plot)
    if args.json:
        _write_json(args.json, result)
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
    t.add_argument("--rank", type=int, default=4)
    t.add_argument("--steps", type=int, default=6000, help="CoA training steps (Adam, batch 64)")
    t.add_argument("--rounds", type=int, default=4, help="search rounds (surrogate + NSGA-II)")
    t.add_argument("--out", default=DEFAULT_RECORD, help="JSON of the front and CoA parameters (default: %(default)s)")
    t.set_defaults(func=cmd_train)
    b = coa_sub.add_parser("bench", help="held-out table, uniform-4-bit check, on-device CoA vs zero start, plot")
    _add_common(b)
    b.add_argument("--coa", default=DEFAULT_RECORD, help="results of `coa train` (default: %(default)s)")
    b.add_argument("--base-steps", type=int, default=600, help="steps of each per-configuration baseline")
    b.add_argument("--epochs", type=int, default=30, help="on-device fine-tune epochs")
    b.add_argument("--seeds", type=int, default=3, help="on-device seeds 1..N")
    b.add_argument("--no-device", action="store_true", help="skip the on-device comparison")
    b.add_argument("--plot", default=os.path.join("out", "coa", "pareto.png"), help="PNG of the front")
    b.add_argument("--json", help="write the results JSON here")
    b.set_defaults(func=cmd_bench)
