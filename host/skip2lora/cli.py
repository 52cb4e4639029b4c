"""The `skip2lora` command line: a thin layer over the pipeline."""
import argparse
import json
import os
import sys

from s2l import frames as F

from . import __version__, reference
from .client import BoardError, LinkError
from .pipeline import FAN_DATA, RUNTIMES, SCENARIOS, bench_record, compare_methods, format_table, load_scenario, prepare
from .scenarios import DEFAULT_SCENARIO



def default_model(scenario):
    name = scenario if scenario.startswith("fan-") else "digits-" + scenario
    return os.path.join("models", name + ".s2lm")


def _bits(text):
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("bits must be comma-separated integers, e.g. 8,4,8")


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("expected a whole number >= 1, got %r" % text)
    return value


def _methods(text):
    methods = [m.strip() for m in text.split(",")]
    unknown = [m for m in methods if m not in reference.METHODS]
    if unknown:
        raise argparse.ArgumentTypeError("unknown method(s) %s (choose from %s)" % (
            ", ".join(unknown), ", ".join(reference.METHODS)))
    return methods


def _add_common(p):
    defaults = reference.Config()
    p.add_argument("--scenario", "--dataset", default=DEFAULT_SCENARIO, choices=SCENARIOS, help="drift scenario")
    p.add_argument("--data", help="folder of the cooling-fan dataset (default: %s)" % FAN_DATA)
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


def _add_board(p):
    p.add_argument("--method", default="skip2-lora", choices=reference.METHODS, help="method on the board")
    p.add_argument("--encoding", default="int8", choices=["int8", "float32"], help="samples on the wire")
    p.add_argument("--baud", type=int, default=115200, help="serial speed (ignored by USB-CDC and ptys)")
    p.add_argument("--path", choices=["float", "int"],
                   help="the tuner's arithmetic (default: the board's choice, integer Skip2-LoRA on boards)")
    p.add_argument("--limit", type=_positive, help="stream only the first N fine-tune samples")
    p.add_argument("--retries", type=_positive, default=3,
                   help="requests sent again before a silent board is given up (default 3; damaged replies do not count)")


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
                              runtime=getattr(args, "runtime", "numpy"), port=getattr(args, "port", None))
    print(format_table(prepared, results))
    if args.json:
        _write(args.json, json.dumps(bench_record(prepared, config, results), indent=2))
        print("results written to %s" % args.json)


def _prepare(args):
    return prepare(args.scenario, args.bits, progress=not args.quiet, data_path=args.data)  # pretraining: seed 0


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
    print("\nthe same on a board: the emulator under the real MicroPython, over a serial port")
    from .emulator import Emulator
    with Emulator("micropython") as emu:
        print("emulated board on %s" % emu.port)
        _run_on_board(args, emu.port, prepared.model_bytes, prepared.scenario)


def _board_config(args):
    config = {"method": args.method, "rank": args.rank, "lr": args.lr, "epochs": args.epochs,
              "batch": args.batch, "seed": args.seed}
    if args.path:
        config["path"] = args.path
    return config


def _run_on_board(args, port, model_bytes, scenario):
    from tqdm import tqdm

    from .board import format_run, run_job
    bars = {}

    def progress(kind, done, total, info):
        bar = bars.get(kind)
        if bar is None:
            bar = bars[kind] = tqdm(total=total, desc=kind, disable=args.quiet, leave=False)
        if info:
            bar.set_postfix(loss="%.4f" % info["loss"], ms=info["ms"])
        bar.update(done - bar.n)

    encoding = F.ENC_INT8 if args.encoding == "int8" else F.ENC_FLOAT32
    result = run_job(port, model_bytes, scenario, _board_config(args), encoding, args.baud, progress, args.limit,
                     args.retries)
    for bar in bars.values():
        bar.close()
    print(format_run(result))
    if args.json:
        _write(args.json, json.dumps(result, indent=2))
        print("results written to %s" % args.json)
    return result


def cmd_run(args):
    if os.path.exists(args.model):
        model_bytes, scenario = open(args.model, "rb").read(), load_scenario(args.scenario, args.data)
    else:
        prepared = _prepare(args)
        _export(argparse.Namespace(output=args.model), prepared)
        model_bytes, scenario = prepared.model_bytes, prepared.scenario
    _run_on_board(args, args.port, model_bytes, scenario)


def cmd_emulate(args):
    import time

    from .emulator import Emulator
    with Emulator(args.runtime) as emu:
        print(emu.port, flush=True)
        print("emulated board (%s) on %s; Ctrl-C to stop" % (args.runtime, emu.port), file=sys.stderr, flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


def cmd_flash(args):
    import subprocess
    import tempfile

    from .board import build, flash_steps, uart_config
    uart = uart_config(args.uart) if args.uart else None  # a bad --uart fails before the build
    with tempfile.TemporaryDirectory(prefix="s2l-build-") as out:
        lib = build(args.arch, out)
        model = args.model if os.path.exists(args.model) else None
        uart_path = None
        if uart:
            uart_path = os.path.join(out, "uart.json")
            _write(uart_path, json.dumps(uart))
        for step in flash_steps(args.port, lib, model, uart_path):
            print(" ".join(step[2:]) if args.dry_run else "$ " + " ".join(step[2:]), flush=True)
            if not args.dry_run and subprocess.run(step).returncode:
                sys.exit("error: mpremote step failed: %s" % " ".join(step[2:]))


def cmd_report(args):
    from . import report
    records = report.load(args.results)
    table = report.markdown_table(records)
    print(table)
    _write(os.path.join(args.out, "table.md"), table + "\n")
    for path in report.plots(records, args.out):
        print("wrote %s" % path)


def build_parser():
    parser = argparse.ArgumentParser(prog="skip2lora", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="pretrain on the source domain and write the quantized model file")
    _add_common(p)
    p.add_argument("--output", "-o", help="model file (default: models/<scenario>.s2lm)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="fine-tune with every method and report accuracy, time and MACs")
    _add_common(p)
    _add_tuning(p)
    p.add_argument("--runtime", default="numpy", choices=RUNTIMES,
                   help="numpy reference; the firmware's tuner under CPython / the real MicroPython; "
                        "or a board or the emulator over serial (--port)")
    p.add_argument("--port", help="with --runtime serial: pyserial URL of the board or emulator")
    p.add_argument("--json", help="write the results JSON here")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="the main job on the embedded default scenario")
    _add_common(p)
    _add_tuning(p)
    _add_board(p)
    p.add_argument("--output", "-o", help="model file (default: models/<scenario>.s2lm)")
    p.add_argument("--json", help="write the results JSON here")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="stream a scenario to a board (or emulator), fine-tune there, report")
    p.add_argument("--port", required=True, help="pyserial URL: /dev/ttyACM0, socket://host:port, ...")
    p.add_argument("--model", help="model file, exported first if missing (default: models/<scenario>.s2lm)")
    _add_common(p)
    _add_tuning(p)
    _add_board(p)
    p.add_argument("--json", help="write the results JSON here")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="markdown table and PNG plots from bench results JSON")
    p.add_argument("results", nargs="+", help="results JSON files written by bench --json")
    p.add_argument("--out", default=os.path.join("out", "report"), help="folder for table.md and the PNGs")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("emulate", help="a board on a pseudo-terminal: prints the port path to open")
    p.add_argument("--runtime", default="micropython", choices=["micropython", "cpython"])
    p.set_defaults(func=cmd_emulate)

    p = sub.add_parser("flash", help="compile the firmware with mpy-cross and install it with mpremote")
    p.add_argument("--port", required=True)
    p.add_argument("--arch", default="armv6m", choices=["armv6m", "xtensawin"], help="RP2040 / ESP32")
    p.add_argument("--model", default=default_model(DEFAULT_SCENARIO), help="model file to install too (if it exists)")
    p.add_argument("--uart", metavar="tx=PIN,rx=PIN[,id=N,baudrate=BAUD]",
                   help="serve the link on this UART instead of USB-CDC (writes :uart.json; "
                        "`mpremote fs rm :uart.json` goes back to USB)")
    p.add_argument("--dry-run", action="store_true", help="print the mpremote steps only")
    p.set_defaults(func=cmd_flash)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    for name in ("output", "model"):
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, default_model(args.scenario))
    try:
        args.func(args)
    except (ValueError, OSError, LinkError, BoardError) as exc:  # bad input, a silent or failing board: one line
        sys.exit("error: %s" % exc)


if __name__ == "__main__":
    main()
