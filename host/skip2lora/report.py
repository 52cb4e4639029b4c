"""Tables and plots from results JSON (what `bench` writes): a markdown table in the layout of the
paper's comparison (methods x datasets: accuracy and fine-tune time), and PNG plots: accuracy per
method, fine-tune time per method split by phase, accuracy against epochs."""
import json
import os

from .reference import METHODS, PHASES

METHOD_NAMES = {"ft-all": "FT-All", "ft-last": "FT-Last", "ft-bias": "FT-Bias", "lora-all": "LoRA-All",
                "lora-last": "LoRA-Last", "skip-lora": "Skip-LoRA", "skip2-lora": "Skip2-LoRA"}


def load(paths):
    records = []
    for path in paths:
        with open(path) as f:
            record = json.load(f)
        if "results" not in record or "scenario" not in record:
            raise ValueError("%s is not a bench results file (no scenario/results)" % path)
        record["path"] = path
        records.append(record)
    return records


def _rows(record):
    # one row per method: the first of each (a board-mode repeat comes after)
    rows = {}
    for r in record["results"]:
        rows.setdefault(r["method"], r)
    return rows


def _column(record):
    return "%s (%s)" % (record["scenario"], record["runtime"])


def markdown_table(records):
    header = "| method | " + " | ".join("%s accuracy | time [s]" % _column(r) for r in records) + " |"
    lines = [header, "|---" * (1 + 2 * len(records)) + "|",
             "| (before) | " + " | ".join("%.1f%% | " % (100 * r["model"]["drifted_accuracy_before"])
                                         for r in records) + " |"]
    for method in METHODS:
        cells = []
        for record in records:
            r = _rows(record).get(method)
            cells.append("%.1f%%%s | %.2f" % (100 * r["accuracy"], " (diverged)" if r.get("diverged") else "",
                                              r["finetune_seconds"]) if r else " | ")
        if any(c != " | " for c in cells):
            lines.append("| %s | %s |" % (METHOD_NAMES[method], " | ".join(cells)))
    for record in records:
        ratio = record.get("skip2_over_lora_all_time")
        if ratio is not None:
            lines.append("")
            lines.append("%s: Skip2-LoRA / LoRA-All fine-tune time %.3f (one run)" % (_column(record), ratio))
    return "\n".join(lines)


def plots(records, out_dir):
    """Write the three PNGs into out_dir; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(records)
    for k, record in enumerate(records):
        rows = _rows(record)
        methods = [m for m in METHODS if m in rows]
        xs = [METHODS.index(m) + k * width for m in methods]
        ax.bar(xs, [100 * rows[m]["accuracy"] for m in methods], width, label=_column(record))
        ax.axhline(100 * record["model"]["drifted_accuracy_before"], color="C%d" % k, linestyle=":", linewidth=1)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(METHODS))], [METHOD_NAMES[m] for m in METHODS])
    ax.set_ylabel("test accuracy after fine-tuning [%] (dotted: before)")
    ax.legend(fontsize="small")
    paths.append(_save(fig, out_dir, "accuracy.png"))

    fig, axes = plt.subplots(1, len(records), figsize=(6 * len(records), 4), squeeze=False)
    for ax, record in zip(axes[0], records):
        rows = _rows(record)
        methods = [m for m in METHODS if m in rows]
        bottom = [0.0] * len(methods)
        for p, phase in enumerate(PHASES + ("cache",)):
            values = [rows[m].get("phase_seconds", {}).get(phase, 0.0) for m in methods]
            if any(values):
                ax.bar(range(len(methods)), values, bottom=bottom, label=phase.replace("_", " "))
                bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_xticks(range(len(methods)), [METHOD_NAMES[m] for m in methods], rotation=30, fontsize="small")
        ax.set_title(_column(record), fontsize="small")
        ax.set_ylabel("fine-tune time [s]")
        ax.legend(fontsize="x-small")
    paths.append(_save(fig, out_dir, "time_per_phase.png"))

    fig, axes = plt.subplots(1, len(records), figsize=(6 * len(records), 4), squeeze=False)
    for ax, record in zip(axes[0], records):
        curves = [r for r in _rows(record).values() if r.get("accuracy_per_epoch")]
        for r in curves:
            ax.plot(range(1, len(r["accuracy_per_epoch"]) + 1), [100 * a for a in r["accuracy_per_epoch"]],
                    label=METHOD_NAMES[r["method"]])
        ax.set_title(_column(record) + ("" if curves else ": no per-epoch accuracy in this run"), fontsize="small")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy [%]")
        if curves:
            ax.legend(fontsize="x-small")
    paths.append(_save(fig, out_dir, "accuracy_per_epoch.png"))
    return paths


def _save(fig, out_dir, name):
    import matplotlib.pyplot as plt
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
