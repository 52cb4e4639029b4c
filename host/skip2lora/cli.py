"""The `skip2lora` command line: a thin layer over the pipeline."""
import argparse
import json
import os
import sys

from . import __version__, reference
from .pipeline import RUNTIMES, bench_record, compare_methods, format_table, prepare
from .scenarios import DEFAULT_SCENARIO, DRIFTS

DEFAULT_MODEL = os.path.join("models", "digits-%s.s2lm" % DEFAULT_SCENARIO)


def _bits(text):
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("bits must be comma-separated integers, e.g. 8,4,8")


def _methods(text):
    methods = [m.strip() for m in text.split(",")]
    unknown = [m for m in methods if m not in reference.METHODS]
    if unknown:
        raise argparse.ArgumentTypeError("unknown method(s) %s (choose from %s)" % (
            ", ".join(unknown), ", ".join(reference.METHODS)))
    return methods


def _add_common(p):
    defaults = reference.Config()
    p.add_argument("--scenario", default=DEFAULT_SCENARIO, choices=sorted(DRIFTS), help="drift scenario")
    p.add_argument("--bits", type=_bits, help="bits per layer, e.g. 8,4,8 (default: 8 for every layer)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="adapter init and sample order")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_tuning(p):
    defaults = reference.Config()
    p.add_argument("--methods", type=_methods, default=list(reference.METHODS), help="comma-separated")
    p.add_argument("--rank", type=int, default=defaults.rank)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch", type=int, default=defaults.batch)


def _config(args):
    return reference.Config(rank=args.rank, lr=args.lr, epochs=args.epochs, batch=args.batch, seed=args.seed)


def _write(path, data, mode="w"):
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, mode) as f:
        f.write(data)


def _print_export(path, report):
    print("wrote %s (%d bytes, dims %s, bits %s)" % (path, report["model_bytes"], report["dims"], report["bits"]))
    for layer in report["layers"]:
        print("  layer %d %-9s %d-bit  relative RMS error %.4f  max abs error %.5f" % (
            layer["layer"], "x".join(map(str, layer["shape"])), layer["bits"],
            layer["relative_rms_error"], layer["max_abs_error"]))
    print("source-domain test accuracy: float %.1f%%, quantized %.1f%%" % (
        100 * report["source_accuracy_float"], 100 * report["source_accuracy_quantized"]))


def _export(args, prepared):
    _write(args.output, prepared.model_bytes, "wb")
    _print_export(args.output, prepared.report)


def _bench(args, prepared):
    config = _config(args)
    results = compare_methods(prepared, config, args.methods, progress=not args.quiet,
                              runtime=getattr(args, "runtime", "numpy"))
    print(format_table(prepared, results))
    if args.json:
        _write(args.json, json.dumps(bench_record(prepared, config, results), indent=2))
        print("results written to %s" % args.json)


def _prepare(args):
    return prepare(args.scenario, args.bits, progress=not args.quiet)  # pretraining: fixed seed 0


def cmd_export(args):
    _export(args, _prepare(args))


def cmd_bench(args):
    _bench(args, _prepare(args))


def cmd_demo(args):
    print("skip2lora %s demo: pretrain on clean digits, export %s, fine-tune on the drifted domain\n" % (
        __version__, args.output))
    prepared = _prepare(args)
    _export(args, prepared)
    print()
    _bench(args, prepared)


def build_parser():
    parser = argparse.ArgumentParser(prog="skip2lora", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="pretrain on the source domain and write the quantized model file")
    _add_common(p)
    p.add_argument("--output", "-o", default=DEFAULT_MODEL)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="fine-tune with every method and report accuracy, time and MACs")
    _add_common(p)
    _add_tuning(p)
    p.add_argument("--runtime", default="numpy", choices=RUNTIMES,
                   help="numpy reference, or the firmware's tuner under CPython / the real MicroPython")
    p.add_argument("--json", help="write the results JSON here")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="the main job on the embedded default scenario")
    _add_common(p)
    _add_tuning(p)
    p.add_argument("--output", "-o", default=DEFAULT_MODEL)
    p.add_argument("--json", help="write the results JSON here")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as exc:  # bad user input (shapes, bits, scenario): one clear line, no traceback
        sys.exit("error: %s" % exc)


if __name__ == "__main__":
    main()
