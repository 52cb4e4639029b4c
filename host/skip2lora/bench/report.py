"""Tables and plots from results JSON (what `bench --json` and `run --json` write): a markdown table
in the layout of the paper's comparison (methods x runs: accuracy and fine-tune time), and PNG plots:
accuracy per method, fine-tune time per method split by phase ("other": time in no phase, such as
fetching samples and the loop), accuracy against epochs (only runs that measured it). Every column,
legend and title states the runtime, epochs and sample counts it ran with; peak heap appears only
where it is a MicroPython heap a board would need."""
import json
import os

from .results import heap_is_a_boards, row_label

from ..progress import plural
from ..train.reference import METHODS, PHASES

LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "v", "D", "x", "+")
METHOD_NAMES = {"ft-all": "FT-All", "ft-last": "FT-Last", "ft-bias": "FT-Bias", "lora-all": "LoRA-All",
                "lora-last": "LoRA-Last", "skip-lora": "Skip-LoRA", "skip2-lora": "Skip2-LoRA"}


def _from_run(run):
    """A `run --json` result as a one-row bench record."""
    confusion = run.get("confusion") or []
    row = {"method": run["method"], "accuracy": run["accuracy"], "runtime": "serial", "board": run["board"],
           "finetune_seconds": run["speed"]["finetune_seconds"], "phase_seconds": run["phase_seconds"],
           "path": run["path"], "cache_mode": run["cache_mode"], "peak_heap_bytes": run["peak_alloc"],
           "diverged": not all(loss < float("inf") for loss in run["losses"])}
    validation = run["guard"]["val_samples"] if run.get("guard") else 0  # held out of training by the board
    return {"scenario": run["scenario"], "runtime": "serial", "config": run["config"], "results": [row],
            "model": {"drifted_accuracy_before": run["accuracy_before"]}, "epochs_run": run["epochs"],
            "finetune_samples": run["link"]["finetune_samples"] - validation, "validation_samples": validation,
            "test_samples": sum(map(sum, confusion)), "board_platform": run["board"]["platform"]}


def load(paths):
    records = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            try:
                record = json.load(f)
            except ValueError as e:
                raise ValueError("%s is not a results JSON (written by bench, run or fleet with --json): %s" % (
                    path, e)) from None
        if not isinstance(record, dict):
            raise ValueError("%s is not a bench, run or fleet results file (no scenario/results)" % path)
        if "link" in record and "accuracy_before" in record:
            record = _from_run(record)
        elif "fleet" not in record and ("results" not in record or "scenario" not in record):
            raise ValueError("%s is not a bench, run or fleet results file (no scenario/results)" % path)
        if not record.get("results", record.get("boards")):  # a fleet's results are its boards
            raise ValueError("%s holds no results" % path)
        record["path"] = path
        records.append(record)
    return records


def _rows(record):
    """label -> result, methods in the paper's order, each method's variants (/int8, /integer) after it."""
    rows = {}
    for r in sorted(record["results"], key=lambda r: METHODS.index(r["method"])):
        rows.setdefault(row_label(r), r)
    return rows


def _name(label):
    method, _, variant = label.partition("/")
    return METHOD_NAMES[method] + (" (%s)" % variant if variant else "")


def column(record):
    """'out/bench.json: rotate (numpy, lr 0.05, 30 epochs, 250 fine-tune / 250 test samples)'; a run
    that stopped early: '9 of 30 epochs'; a guarded run: '128 fine-tune + 14 validation'."""
    runtime = record["runtime"]
    if record.get("board_platform"):
        runtime += " to %s" % record["board_platform"]
    epochs = plural(record["config"]["epochs"], "epoch")
    if record.get("epochs_run", record["config"]["epochs"]) != record["config"]["epochs"]:
        epochs = "%d of %s" % (record["epochs_run"], epochs)
    validation = record.get("validation_samples", 0)
    return "%s: %s (%s, lr %g, %s, %d fine-tune%s / %d test samples)" % (
        record["path"], record["scenario"], runtime, record["config"]["lr"], epochs,
        record["finetune_samples"], " + %d validation" % validation if validation else "", record["test_samples"])


def markdown_table(records):
    """The fleet table of every fleet record (one, merged), then the comparison of the others."""
    fleets = [r for r in records if "fleet" in r]
    others = [r for r in records if "fleet" not in r]
    return "\n\n".join(([fleet_table(fleets)] if fleets else []) + ([_bench_table(others)] if others else []))


def _bench_table(records):
    labels = []
    for record in records:
        labels += [label for label in _rows(record) if label not in labels]
    labels.sort(key=lambda label: METHODS.index(label.partition("/")[0]))
    header = "| method | " + " | ".join("%s accuracy | time [s]" % column(r) for r in records) + " |"
    lines = [header, "|---" * (1 + 2 * len(records)) + "|",
             "| (before) | " + " | ".join("%.1f%% | " % (100 * r["model"]["drifted_accuracy_before"])
                                         for r in records) + " |"]
    for label in labels:
        cells = []
        for record in records:
            r = _rows(record).get(label)
            cells.append("%.1f%%%s | %.2f" % (100 * r["accuracy"], " (diverged)" if r.get("diverged") else "",
                                              r["finetune_seconds"]) if r else " | ")
        lines.append("| %s | %s |" % (_name(label), " | ".join(cells)))
    notes = []
    for record in records:
        ratio = record.get("skip2_over_lora_all_time")
        if ratio is not None:
            notes.append("%s: Skip2-LoRA / LoRA-All fine-tune time %.3f (measured in one run; the paper: 0.10)" % (
                column(record), ratio))
        heaps = ["%s %.1f KB" % (_name(label), r["peak_heap_bytes"] / 1024)
                 for label, r in _rows(record).items() if "peak_heap_bytes" in r and heap_is_a_boards(r)]
        if heaps:
            notes.append("%s: peak MicroPython heap (what the firmware allocates): %s" % (column(record), ", ".join(heaps)))
    return "\n".join(lines + ([""] + notes if notes else []))


def plots(records, out_dir):
    """Write the PNGs into out_dir (fleet.png for fleet records; the per-epoch plot only when some
    run measured it); their paths."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display

    os.makedirs(out_dir, exist_ok=True)
    fleets = [r for r in records if "fleet" in r]
    others = [r for r in records if "fleet" not in r]
    return (fleet_plots(fleets, out_dir) if fleets else []) + (_bench_plots(others, out_dir) if others else [])


def _bench_plots(records, out_dir):
    import matplotlib.pyplot as plt
    paths = []

    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = []
    for record in records:
        labels += [label for label in _rows(record) if label not in labels]
    labels.sort(key=lambda label: METHODS.index(label.partition("/")[0]))
    width = 0.8 / len(records)
    for k, record in enumerate(records):
        rows = _rows(record)
        present = [label for label in labels if label in rows]
        xs = [labels.index(label) + k * width for label in present]
        bars = ax.bar(xs, [100 * rows[label]["accuracy"] for label in present], width, label=column(record))
        ax.bar_label(bars, fmt="%.1f", fontsize="x-small")  # a 1-point difference is read, not guessed
        ax.axhline(100 * record["model"]["drifted_accuracy_before"], color="C%d" % k, linestyle=":", linewidth=1)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], [_name(label) for label in labels],
                  rotation=20, fontsize="small")
    low = _axis_floor(records)
    ax.set_ylim(low, 100)
    ax.set_ylabel("test accuracy [%]")
    ax.set_title("test accuracy after fine-tuning (dotted: before)%s" % (
        "; the axis starts at %d%%, not 0" % low if low else ""), fontsize="small")
    ax.legend(fontsize="x-small")
    paths.append(_save(fig, out_dir, "accuracy.png"))

    fig, axes = plt.subplots(1, len(records), figsize=(6 * len(records), 4.5), squeeze=False)
    for ax, record in zip(axes[0], records):
        rows = _rows(record)
        present = list(rows)
        bottom = [0.0] * len(present)
        parts = [(phase, [rows[label].get("phase_seconds", {}).get(phase, 0.0) for label in present])
                 for phase in PHASES + ("cache",)]
        other = [max(0.0, rows[label]["finetune_seconds"] - sum(v[i] for _, v in parts))
                 for i, label in enumerate(present)]
        for name, values in parts + [("other (no phase: sample fetch, loop)", other)]:
            if any(values):
                ax.bar(range(len(present)), values, bottom=bottom, label=name.replace("_", " "))
                bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_xticks(range(len(present)), [_name(label) for label in present], rotation=30, fontsize="small")
        ax.set_title(column(record), fontsize="x-small")
        ax.set_ylabel("fine-tune time [s]")
        ax.legend(fontsize="x-small")
    paths.append(_save(fig, out_dir, "time_per_phase.png"))

    with_curves = [(record, [r for r in _rows(record).values() if r.get("accuracy_per_epoch")]) for record in records]
    with_curves = [(record, curves) for record, curves in with_curves if curves]
    if with_curves:
        fig, axes = plt.subplots(1, len(with_curves), figsize=(6 * len(with_curves), 4), squeeze=False)
        for ax, (record, curves) in zip(axes[0], with_curves):
            for k, r in enumerate(curves):  # methods that train alike (Skip-LoRA, Skip2-LoRA) draw one line:
                # each its own dashes and marks, and the legend says which it covers
                same = [c for c in curves[:k] if c["accuracy_per_epoch"] == r["accuracy_per_epoch"]]
                ax.plot(range(1, len(r["accuracy_per_epoch"]) + 1), [100 * a for a in r["accuracy_per_epoch"]],
                        label=_name(row_label(r)) + (" (= %s, drawn over it)" % _name(row_label(same[0])) if same else ""),
                        linestyle=LINESTYLES[k % len(LINESTYLES)],
                        marker=MARKERS[k % len(MARKERS)], markevery=max(1, len(r["accuracy_per_epoch"]) // 10),
                        fillstyle="none")
            ax.set_title(column(record), fontsize="x-small")
            ax.set_xlabel("epoch")
            ax.set_ylabel("test accuracy [%]")
            ax.legend(fontsize="x-small")
        paths.append(_save(fig, out_dir, "accuracy_per_epoch.png"))
    return paths


def _axis_floor(records):
    """Where the accuracy axis starts: 10 points below the lowest bar or before-line, in tens, so
    that bars a point apart differ visibly."""
    lowest = min([100 * r["model"]["drifted_accuracy_before"] for r in records] +
                 [100 * row["accuracy"] for r in records for row in r["results"]])
    return max(0, int((lowest - 10) // 10 * 10))


def _save(fig, out_dir, name):
    import matplotlib.pyplot as plt
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- fleets: a row per board ---------------------------------------------------------------------------
def _boards(fleets):
    """(host, board row) of every fleet record: several hosts' fleets merge into one table."""
    return [(f["fleet"]["host"], row) for f in fleets for row in f["boards"]]


def _phases(run):
    return ", ".join("%s %.3f" % (k.replace("_", " "), v) for k, v in run["phase_seconds"].items())


def _faults(run):
    r = run["link"]["retransmissions"]
    return "%d retransmissions (%d damaged, %d timeouts)" % (r["retransmissions"], r["damaged"], r["timeouts"])


def fleet_table(fleets):
    lines = ["| host | board | arena [KB] | configuration | file [B] | accuracy before | after | "
             "board time per phase [s] | link faults | status |", "|---" * 10 + "|"]
    for host, b in _boards(fleets):
        arena = "%.1f" % (b["hello"]["arena"]["size"] / 1024) if b.get("hello") else "?"
        config = b["configuration"]["label"] if b.get("configuration") else "-"
        size = "%d" % b["model"]["bytes"] if b.get("model") else "-"
        run = b.get("run")
        cells = ["%.1f%%" % (100 * run["accuracy_before"]), "%.1f%%" % (100 * run["accuracy"]), _phases(run),
                 _faults(run)] if run else ["-"] * 4
        # a stopped board's error says "stopped ..." itself
        status = {"ok": "ok", "stopped": b["error"]}.get(b["status"], "failed: %s" % b["error"])
        lines.append("| %s |" % " | ".join([host, b["name"], arena, config, size] + cells + [status]))
    notes = ["%s: %d of %d boards completed, %s, %.1f s wall (%s)" % (
        f["fleet"]["host"], f["fleet"]["completed"], f["fleet"]["boards"], f["fleet"]["scenario"],
        f["fleet"]["wall_seconds"], f["path"]) for f in fleets]
    return "\n".join(lines + [""] + notes)


def fleet_plots(fleets, out_dir):
    """fleet.png: accuracy before and after per completed board, and its board time per phase
    (none when no board completed)."""
    import matplotlib.pyplot as plt
    done = [(host, b) for host, b in _boards(fleets) if b.get("run")]
    if not done:
        return []
    labels = ["%s%s\n%s" % (host + ":" if len(fleets) > 1 else "", b["name"],
                            b["configuration"]["label"].replace(" ", "\n")) for host, b in done]
    fig, (acc, phases) = plt.subplots(1, 2, figsize=(max(10, 3 * len(done)), 5))
    xs = range(len(done))
    acc.bar([x - 0.2 for x in xs], [100 * b["run"]["accuracy_before"] for _, b in done], 0.4, label="before")
    acc.bar([x + 0.2 for x in xs], [100 * b["run"]["accuracy"] for _, b in done], 0.4, label="after")
    acc.set_xticks(list(xs), labels, fontsize="x-small")
    acc.set_ylabel("test accuracy [%]")
    acc.set_title("accuracy per board (its own configuration)", fontsize="small")
    acc.legend(fontsize="x-small")
    bottom = [0.0] * len(done)
    for phase in dict.fromkeys(k for _, b in done for k in b["run"]["phase_seconds"]):
        values = [b["run"]["phase_seconds"].get(phase, 0.0) for _, b in done]
        phases.bar(list(xs), values, bottom=bottom, label=phase.replace("_", " "))
        bottom = [a + v for a, v in zip(bottom, values)]
    phases.set_xticks(list(xs), labels, fontsize="x-small")
    phases.set_ylabel("board time [s]")
    phases.set_title("board time per phase", fontsize="small")
    phases.legend(fontsize="x-small")
    return [_save(fig, out_dir, "fleet.png")]
