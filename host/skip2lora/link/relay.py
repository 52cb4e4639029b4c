"""A faulty cable for tests and benchmarks: a pseudo-terminal whose bytes are relayed to and from a
board's port (the emulator's, or a real one) with faults injected at configurable rates, in both
directions: a byte flipped (one random bit; a header's length field too), dropped, duplicated, held
back (delayed, so later bytes wait too, as on a stalled USB link), a stray 0x7E inserted before it
(a frame begun and never finished), or a frame truncated there (the rest of it, up to the next
0x7E, dropped: a sender that stopped mid-frame). Open `relay.port` instead of the board's port.

    python -m skip2lora.link.relay --flip 0.01 --drop 0.005 --runs 3   # the whole job over a bad link
"""
import argparse
import os
import random
import select
import sys
import threading
import time
import tty

FAULTS = ("flipped", "dropped", "duplicated", "delayed", "stray", "truncated")
START = 0x7E  # frames.START: a frame begins at each


class FaultyRelay:
    def __init__(self, target, flip=0.0, drop=0.0, duplicate=0.0, delay=0.0, max_delay=0.02, seed=0, stray=0.0,
                 truncate=0.0):
        self.rates = {"flipped": flip, "dropped": drop, "duplicated": duplicate, "delayed": delay, "stray": stray,
                      "truncated": truncate}
        self.max_delay = max_delay
        self.rng = random.Random(seed)
        self.board = os.open(target, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.board)
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        self._slave = slave  # held open: the relay outlives clients that close the port
        self.counts = dict((k, 0) for k in FAULTS)
        self.bytes = 0
        # per direction: bytes waiting, when they may go (a delay holds everything behind it), and
        # whether a truncated frame's bytes are being dropped
        self.queues = {self.master: [bytearray(), 0.0, False], self.board: [bytearray(), 0.0, False]}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    @property
    def faults(self):
        return sum(self.counts.values())

    def _damage(self, data, queue):
        out = queue[0]
        rates, rng = self.rates, self.rng
        for b in data:
            self.bytes += 1
            if queue[2] and b != START:  # the rest of a truncated frame
                continue
            queue[2] = False
            if rates["stray"] and rng.random() < rates["stray"]:  # drawn only when asked: seeds keep their faults
                self.counts["stray"] += 1
                out.append(START)
            if rates["truncated"] and rng.random() < rates["truncated"]:
                self.counts["truncated"] += 1
                queue[2] = b != START
                if queue[2]:
                    continue
            r = rng.random()
            if r < rates["dropped"]:
                self.counts["dropped"] += 1
                continue
            r -= rates["dropped"]
            if r < rates["flipped"]:
                self.counts["flipped"] += 1
                b ^= 1 << rng.randrange(8)
            elif r - rates["flipped"] < rates["duplicated"]:
                self.counts["duplicated"] += 1
                out.append(b)
            elif r - rates["flipped"] - rates["duplicated"] < rates["delayed"]:
                self.counts["delayed"] += 1
                queue[1] = max(queue[1], time.monotonic() + rng.uniform(0, self.max_delay))
            out.append(b)

    def _pump(self):
        peer = {self.master: self.board, self.board: self.master}
        while not self._stop.is_set():
            now = time.monotonic()
            for fd, queue in self.queues.items():  # queue[fd] holds bytes for fd
                if queue[0] and now >= queue[1]:
                    try:
                        n = os.write(fd, queue[0])
                    except OSError:
                        n = len(queue[0])  # the far end is gone: drop what it would have got
                    del queue[0][:n]
            waiting = [q[1] - now for q in self.queues.values() if q[0]]
            ready, _, _ = select.select([self.master, self.board], [], [],
                                        max(0.0, min(waiting)) if waiting else 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                self._damage(data, self.queues[peer[fd]])

    def close(self):
        self._stop.set()
        self._thread.join(timeout=10)
        for fd in (self.master, self._slave, self.board):
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_session(port, model_bytes, finetune, test, config, encoding=None, retries=8):
    """The whole job over `port`: upload, stream, score the test set, train, score it again, save. Returns
    (results dict, the client's counts)."""
    from s2l import frames as F

    from .client import Client
    encoding = F.ENC_INT8 if encoding is None else encoding
    with Client(port, retries=retries) as board:
        board.hello()
        board.upload_model(model_bytes)
        board.configure(samples=len(finetune[1]), **config)
        board.send_samples(*finetune, F.KIND_FINETUNE, encoding)
        board.send_samples(*test, F.KIND_TEST, encoding)  # scored as they arrive: before training
        before = board.evaluate()["accuracy"]
        done = board.train()
        board.send_samples(*test, F.KIND_TEST, encoding)  # and after
        after = board.evaluate()
        stats = board.stats()
        saved = board.save()
        return {"accuracy_before": before, "accuracy": after["accuracy"], "confusion": after["confusion"],
                "epochs": done["epochs"], "loss": done["loss"], "samples": stats["samples"],
                "test_samples": after["samples"], "adapter_bytes": saved["bytes"]}, dict(board.counts)


def main(argv=None):
    """Runs the default scenario's job (a slice of it) on the emulator, over a clean link and then
    `--runs` times over a faulty one, and prints what it measured."""
    from ..data.catalog import load_scenario
    from ..runtimes.mpyrun import REPO
    from .emulator import Emulator
    p = argparse.ArgumentParser(prog="python -m skip2lora.link.relay", description=main.__doc__)
    p.add_argument("--flip", type=float, default=0.01, help="share of bytes with a bit flipped (default 0.01)")
    p.add_argument("--drop", type=float, default=0.005, help="share of bytes dropped (default 0.005)")
    p.add_argument("--duplicate", type=float, default=0.0, help="share of bytes sent twice (default 0)")
    p.add_argument("--delay", type=float, default=0.0, help="share of bytes held back up to 20 ms (default 0)")
    p.add_argument("--stray", type=float, default=0.001, help="share of bytes with a stray 0x7E before them (default 0.001)")
    p.add_argument("--truncate", type=float, default=0.001,
                   help="share of bytes where a frame is cut short: the rest of it dropped (default 0.001)")
    p.add_argument("--runs", type=int, default=3, help="runs over the faulty link (default 3)")
    p.add_argument("--limit", type=int, default=60, help="fine-tune and test samples streamed (default 60)")
    p.add_argument("--epochs", type=int, default=5, help="epochs (default 5)")
    p.add_argument("--runtime", default="micropython-unix",
                   help="emulator runtime (default micropython-unix: main.py's own reads, as on a board)")
    args = p.parse_args(argv)
    model_bytes = (REPO / "models" / "digits-rotate.s2lm").read_bytes()
    sc = load_scenario("rotate")
    finetune = tuple(v[:args.limit] for v in sc.finetune)
    test = tuple(v[:args.limit] for v in sc.test)
    config = {"method": "skip2-lora", "epochs": args.epochs, "path": "int"}  # a board's path, and its memory
    with Emulator(args.runtime) as emu:
        clean, _ = run_session(emu.port, model_bytes, finetune, test, config)
        clean_adapter = open(os.path.join(emu.board.flash.name, "adapter.s2la"), "rb").read() \
            if args.runtime != "micropython" else None  # the WebAssembly board's flash is in memory
        print("clean link: accuracy %.1f%% -> %.1f%%" % (100 * clean["accuracy_before"], 100 * clean["accuracy"]))
        completed = same = lost = 0
        faults, tried = 0, 0
        for run in range(args.runs):
            with FaultyRelay(emu.port, args.flip, args.drop, args.duplicate, args.delay, seed=run, stray=args.stray,
                             truncate=args.truncate) as relay:
                tried += 1
                t0 = time.monotonic()
                try:
                    got, counts = run_session(relay.port, model_bytes, finetune, test, config)
                except Exception as e:  # a failed run is a result here, printed
                    print("run %d failed: %s" % (run + 1, e))
                    continue
                finally:
                    faults += relay.faults
                completed += 1
                lost += (len(finetune[1]) - got["samples"]) + (len(test[1]) - got["test_samples"])
                adapter = open(os.path.join(emu.board.flash.name, "adapter.s2la"), "rb").read() \
                    if clean_adapter is not None else None
                identical = got["accuracy"] == clean["accuracy"] and adapter == clean_adapter
                same += identical
                print("run %d: %.1f s, %d faults injected (%s), accuracy %.1f%%, adapter %s; %d retransmissions "
                      "(%d damaged, %d timeouts), %d reply parts, frames shrunk %d times" % (
                          run + 1, time.monotonic() - t0, relay.faults,
                          ", ".join("%d %s" % (relay.counts[k], k) for k in FAULTS), 100 * got["accuracy"],
                          "identical" if identical else "DIFFERENT", counts["retransmissions"], counts["damaged"],
                          counts["timeouts"], counts["reply_parts"], counts["shrinks"]))
        restarts = 1 if emu.board.proc.poll() is not None else 0
    print("runs tried %d, faults injected %d, runs completed %d, identical to the clean link %d, samples lost %d, "
          "board restarts %d" % (tried, faults, completed, same, lost, restarts))
    return 0 if completed == tried == same and not lost and not restarts else 1


if __name__ == "__main__":
    sys.exit(main())
