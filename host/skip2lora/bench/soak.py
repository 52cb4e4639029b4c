"""A board left alone, soaked: one emulated board (the board's main.py under the MicroPython unix
port at an RP2040's 241 KB), a long run, then many jobs in a row, all through a link that adds
stray bytes (0x7E among them) both ways. After each job it prints the largest free block the board
reports and how many answers (replies and events) it gave per minute meanwhile: both must stay flat.

    python -m skip2lora.bench.soak [--epochs 1000] [--jobs 50] [--stray 0.001] [--heap 241k]

A benchmark, not a test (minutes long): it prints what it measured and exits non-zero when a job
failed or the largest free block moved by more than 5%."""
import argparse
import sys
import time

from ..data.catalog import load_scenario
from ..link.board import run_job
from ..link.client import Client
from ..link.emulator import Emulator
from ..link.relay import FaultyRelay
from ..runtimes.mpyrun import BOARD_HEAP

MODEL = "models/digits-rotate.s2lm"


class Ledger:
    """Answers per minute and the largest free block over time."""

    def __init__(self):
        self.t0 = self.mark = time.monotonic()
        self.answers = 0
        self.first = None
        self.worst = 0.0

    def hello(self, port, label):
        with Client(port, retries=8) as board:
            h = board.hello()
        self.answers += 1
        largest = h["largest_free"]
        self.first = self.first or largest
        self.worst = max(self.worst, abs(largest - self.first) / self.first)
        now = time.monotonic()
        rate = self.answers / max(1e-9, (now - self.mark) / 60)
        print("%7.1f min  %-28s largest free block %6d B (%+5.1f%%)  arena %6d B  %6.0f answers/min" % (
            (now - self.t0) / 60, label, largest, 100.0 * (largest - self.first) / self.first, h["arena"]["size"], rate),
            flush=True)
        self.mark, self.answers = now, 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m skip2lora.bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=1000, help="epochs of the long run (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=50, help="jobs after it (default: %(default)s)")
    p.add_argument("--stray", type=float, default=0.001, help="stray bytes added per byte, each way (default: %(default)s)")
    p.add_argument("--heap", default=BOARD_HEAP, help="the emulated board's heap (default: %(default)s)")
    args = p.parse_args(argv)
    scenario = load_scenario("rotate")
    model = open(MODEL, "rb").read()
    ledger, failed = Ledger(), 0
    with Emulator("micropython-unix", heap=args.heap) as emu, FaultyRelay(emu.port, stray=args.stray, seed=1) as link:
        ledger.hello(link.port, "boot")
        jobs = [(args.epochs, 50, {"holdout": 0})] + [(5, 100 + 50 * (k % 4), {}) for k in range(args.jobs)]
        for k, (epochs, limit, extra) in enumerate(jobs):
            try:
                result = run_job(link.port, model, scenario, dict(extra, epochs=epochs), limit=limit, retries=8)
                # requests answered, and the events (PROGRESS, DONE) the board sent unasked
                ledger.answers += result["link"]["retransmissions"]["requests"] + result["epochs"] + 1
            except Exception as e:  # reported, and the soak goes on: a board left alone must
                failed += 1
                print("job %d failed: %s" % (k, str(e).splitlines()[0]), flush=True)
            ledger.hello(link.port, "after job %d (%d epochs)" % (k, epochs))
        print("%d of %d jobs completed; %d stray bytes sent; the largest free block moved at most %.1f%%" % (
            len(jobs) - failed, len(jobs), link.counts["stray"], 100 * ledger.worst))
    return 1 if failed or ledger.worst > 0.05 else 0


if __name__ == "__main__":
    sys.exit(main())
