"""The fleet against sequential runs, measured in one run: four emulated boards (the MicroPython unix
port at HEAPS, where a record like the tests' picks four configurations), one `skip2lora fleet`
over all four, then the same four jobs as four `skip2lora run`s one after the other, with the model
files the fleet picked. A first fleet, untimed, exports the model files and warms the imports.

    python -m skip2lora.bench.fleetbench --coa RECORD [--limit N] [--epochs N]"""
import argparse
import json
import os
import time
from contextlib import ExitStack, redirect_stdout

from .. import cli
from ..coa import flow as coaflow
from ..link.emulator import Emulator

HEAPS = ("223k", "227k", "229k", "520k")  # see tests/host/link/test_fleet.py: four steps of a small front
LIMIT, EPOCHS = 40, 3  # the job of the fleet tests


def _timed(argv):
    """Seconds of one command, its output dropped; a board that did not complete stops the bench."""
    t0 = time.monotonic()
    with open(os.devnull, "w") as null, redirect_stdout(null):
        try:
            cli.main(argv)
        except SystemExit as e:
            raise SystemExit("error: `skip2lora %s` exited with %s" % (" ".join(argv), e.code)) from None
    return time.monotonic() - t0


def bench(record, out, limit=LIMIT, epochs=EPOCHS, heaps=HEAPS):
    job = ["--limit", str(limit), "--epochs", str(epochs), "--quiet"]
    with ExitStack() as stack:
        ports = [stack.enter_context(Emulator("micropython-unix", heap=h)).port for h in heaps]
        fleet = ["fleet", "--coa", record, "--out", out] + job + [a for p in ports for a in ("--port", p)]
        _timed(fleet)  # untimed: exports the model files, imports matplotlib
        fleet_seconds = _timed(fleet)
        with open(os.path.join(out, "fleet.json")) as f:
            fleet_record = json.load(f)
        rows = fleet_record["boards"]
        runs = [["run", "--port", r["port"], "--model", r["model"]["path"]] + job for r in rows]
        run_seconds = [_timed(argv) for argv in runs]
    return {"heaps": list(heaps), "configurations": [r["configuration"]["label"] for r in rows],
            "fleet_seconds": fleet_seconds, "fleet_driving_seconds": fleet_record["fleet"]["wall_seconds"],
            "run_seconds": run_seconds, "ratio": sum(run_seconds) / fleet_seconds, "cpus": os.cpu_count()}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m skip2lora.bench.fleetbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coa", default=coaflow.DEFAULT_RECORD, help="CoA record (default: %(default)s)")
    p.add_argument("--limit", type=int, default=LIMIT, help="fine-tune samples per board (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per board (default: %(default)s)")
    p.add_argument("--out", default=os.path.join("out", "fleetbench"), help="the fleet's folder (default: %(default)s)")
    args = p.parse_args(argv)
    r = bench(args.coa, args.out, args.limit, args.epochs)
    for heap, label, seconds in zip(r["heaps"], r["configurations"], r["run_seconds"]):
        print("unix port %-5s %-28s `run` %.2f s" % (heap, label, seconds))
    print("four sequential `run`s: %.2f s; one `fleet` over the four: %.2f s (driving the boards %.2f s, the "
          "rest its report); sequential / fleet = %.2f (one run, %d CPUs, %d fine-tune samples x %d epochs a board)" % (
              sum(r["run_seconds"]), r["fleet_seconds"], r["fleet_driving_seconds"], r["ratio"], r["cpus"],
              args.limit, args.epochs))


if __name__ == "__main__":
    main()
