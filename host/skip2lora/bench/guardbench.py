"""The board's epoch guard (firmware guard.py), measured with the firmware's own tuners under
CPython, on both paths: on every shipped scenario at the lr export writes into the model file as its
default (the probe's pick), at 0.05 (the tuner's own default), and on the digits noise and rotate
scenarios at lr 0.1, the test accuracy of the frozen model, of fine-tuning unguarded (every
sample, the last epoch's adapters) and guarded (the default holdout and patience); and what the
guard costs, from the guarded run's own clock: the guard's time (validating, copying adapters)
beside its training time, epoch by epoch in the same run, so that a busy machine slows both alike.

    python -m skip2lora.bench.guardbench [--scenarios rotate,noise,...] [--epochs 30] [--json FILE]

A benchmark, not a test: it prints what it measured (about 10 minutes for all six scenarios)."""
import argparse
import json
import time

from s2l.guard import HOLDOUT, PATIENCE, Guard
from s2l.model import Model
from s2l.tuning import new_tuner

from ..data.catalog import SCENARIOS
from ..files import write_file
from ..progress import bar
from ..train import reference
from ..train.export import prepare
from ..train.lrprobe import probe_lr

HIGH_LR = 0.1
HIGH_LR_SCENARIOS = ("noise", "rotate")


def _tuner(model_bytes, path, lr, epochs, finetune):
    tuner = new_tuner(Model(model_bytes), "skip2-lora", path=path, lr=lr, epochs=epochs, seed=reference.Config.seed)
    for x, label in zip(*finetune):
        tuner.add_sample(x, label)
    return tuner


def fine_tune(model_bytes, path, lr, epochs, finetune, test, holdout, patience, tick=lambda: None):
    """Test accuracy before and after, fine-tune seconds (all epochs, guard included), and the
    guard's per-epoch events and summary (None unguarded)."""
    tuner = _tuner(model_bytes, path, lr, epochs, finetune)
    before = tuner.evaluate(*test)[0]
    t0 = time.perf_counter()
    events, losses, summary = [], [], None
    if holdout:
        guard = Guard(tuner, holdout, patience)
        guard.arrange()
        while len(events) < epochs and not guard.stopped:
            events.append(guard.epoch(len(events) == epochs - 1))
            losses.append(tuner.loss)
            tick()
        summary = guard.finish()
    else:
        for _ in range(epochs):
            losses.append(tuner.train_epoch())
            tick()
    seconds = time.perf_counter() - t0
    return {"before": before, "after": tuner.evaluate(*test)[0], "seconds": seconds, "epochs_run": len(losses),
            "losses": losses, "events": events, "guard": summary}


def scenario_rows(name, epochs, progress):
    prepared = prepare(name, progress=False)
    sc = prepared.scenario
    finetune = (sc.finetune[0].tolist(), sc.finetune[1].tolist())
    test = (sc.test[0].tolist(), sc.test[1].tolist())
    picked = probe_lr(prepared, reference.Config(), progress=False)["lr"]  # the model file's default
    lrs = sorted({picked, reference.Config.lr} | ({HIGH_LR} if name in HIGH_LR_SCENARIOS else set()))
    rows = []
    with bar(len(lrs) * 2 * 2 * epochs, "guard bench %s" % name, progress, "epochs") as b:
        for lr in lrs:
            for path in ("float", "int"):
                runs = {}
                for kind, holdout, patience in (("unguarded", 0, 0), ("guarded", HOLDOUT, PATIENCE)):
                    b.set_postfix(lr=lr, path=path, run=kind)
                    runs[kind] = fine_tune(prepared.model_bytes, path, lr, epochs, finetune, test, holdout, patience,
                                           b.update)
                    b.update(epochs - runs[kind]["epochs_run"])
                g = runs["guarded"]["guard"]
                n = len(finetune[1])
                overhead = g["guard_ms"] / g["train_ms"]
                # unguarded, the same epochs train every sample: n / n_train times the training time
                rows.append({"scenario": name, "lr": lr, "default": lr == picked, "path": path, "samples": n, "runs": runs,
                             "frozen": runs["unguarded"]["before"], "overhead": overhead,
                             "cost": (1 + overhead) * (n - g["val_samples"]) / n})
    return rows


def format_rows(rows):
    lines = ["%-10s %5s %-5s %7s %9s %9s %9s %6s %8s %8s %9s  %s" % (
        "scenario", "lr", "path", "frozen", "unguarded", "guarded", "vs frozen", "kept", "restores", "guard /", "time vs",
        "stopped"),
        "%-10s %5s %-5s %7s %9s %9s %9s %6s %8s %8s %9s" % ("", "", "", "test %", "test %", "test %", "points", "epoch",
                                                          "", "training", "unguarded")]
    for r in rows:
        g = r["runs"]["guarded"]
        lines.append("%-10s %5s %-5s %7.1f %9.1f %9.1f %+9.1f %6s %8d %8.3f %9.3f  %s" % (
            r["scenario"], "%g%s" % (r["lr"], "*" if r["default"] else ""), r["path"], 100 * r["frozen"], 100 * r["runs"]["unguarded"]["after"],
            100 * g["after"], 100 * (g["after"] - r["frozen"]),
            g["guard"]["kept"] if g["guard"]["trained"] else "start", g["guard"]["restores"], r["overhead"],
            r["cost"], g["guard"]["stopped"] or "-"))
    at_or_above = sum(r["runs"]["guarded"]["after"] >= r["frozen"] for r in rows)
    lines.append("guarded at or above the frozen model on the test set: %d of %d runs" % (at_or_above, len(rows)))
    lines.append("the guard's own time beside its training time, epoch by epoch in one run: %.3f to %.3f; an epoch "
                 "with the guard (training %d%% fewer samples) against one training all: %.3f to %.3f" % (
                     min(r["overhead"] for r in rows), max(r["overhead"] for r in rows), round(100 * HOLDOUT),
                     min(r["cost"] for r in rows), max(r["cost"] for r in rows)))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m skip2lora.bench.guardbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=reference.Config.epochs, help="epochs (default: %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="write every run's figures here (default: print only)")
    parser.add_argument("--quiet", action="store_true", help="no progress output (default: progress on)")
    args = parser.parse_args(argv)
    rows = []
    for name in args.scenarios.split(","):
        rows += scenario_rows(name, args.epochs, not args.quiet)
    print(format_rows(rows))
    print("(* the lr export writes into the model file: the probe's pick; holdout %g, patience %d; firmware tuners under CPython on this machine; the time ratios are measured "
          "inside each guarded run)" % (HOLDOUT, PATIENCE))
    if args.json:
        write_file(args.json, json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
