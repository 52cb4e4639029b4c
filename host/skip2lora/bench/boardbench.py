"""The board's own figures, per firmware runtime: how fast the protocol core takes SAMPLES frames
(bytes per second of the interpreter's own time, ticks_us), the heap left after the imports, after
the samples, after the skip-cache is filled, and at its lowest while training, and the kernel calls
and time of a cached training step. The default job of `run` on the integer path: the digits
rotate model, 200 fine-tune samples as int8, 10 epochs. Then the RP2040's Thumb routines on one
sample: their machine code run in an emulator, instructions counted, Cortex-M0+ cycles estimated.
Then the arena job after job: per emulated heap, the arena's size and the largest free block HELLO
reports before job 1 and after job 10 (ten `run`s without a reset).

    python -m skip2lora.bench.boardbench [--runtimes cpython,micropython,micropython-unix]
                                   [--granularity channel,16,32,tensor] [--no-thumb] [--arena-heaps 241k,...]

With --granularity, the rotate network (pretrained, seed 0) is quantized at 8 bits with each of
those scale granularities and every one is measured in the same run, with its frozen forward time
per sample as a ratio to the first one's.

A benchmark, not a test: it prints what it measured. Under the unix port the heap is an RP2040's
free heap at boot (BOARD_HEAP) and the viper kernels run for real; under CPython there is no GC
heap to report; the WebAssembly build grows its heap on demand (its figures are that build's)."""
import argparse
import binascii
import json
import struct

from s2l import frames as F

from ..data.catalog import load_scenario
from ..link.client import encode_samples
from ..runtimes.mpyrun import BOARD_HEAP, RUNTIMES, run_firmware_script

SCRIPT = """
import gc, json
from s2l.clock import mem_alloc, mem_free, ticks_diff, ticks_us
def heap():
    f = mem_free()
    return None if f is None or f > 1 << 26 else f  # None: no GC heap, or one that grows on demand
out = {"boot": heap()}
from s2l.protocol import Core
core = Core(".")
out["after_imports"] = heap()
rx_bytes = rx_us = 0
for line in open("frames.txt"):  # a frame at a time: the heap holds what a board's would
    kind, frame = line.split()
    frame = bytes.fromhex(frame)
    t0 = ticks_us()
    reply = core.feed(frame)
    if kind == "S":
        rx_us += ticks_diff(ticks_us(), t0)
        rx_bytes += len(frame)
out["after_samples"] = heap()
out["samples_bytes_per_s"] = rx_bytes * 1e6 / rx_us
core.feed(bytes.fromhex(open("train.txt").read()))
lowest, epoch_us = None, []
while core.busy:
    t0 = ticks_us()
    core.work()
    epoch_us.append(ticks_diff(ticks_us(), t0))
    h = heap()
    if len(epoch_us) == 1:
        out["after_cache"] = h
    lowest = h if lowest is None or (h is not None and h < lowest) else lowest
t = core.tuner
n = t.n_samples
out["lowest_while_training"] = lowest
out["kernels"] = t.kernels
# every kernel call the tuner made, less the first epoch's (a frozen layer each, then the step)
out["kernel_calls_per_cached_step"] = (t.kernel_calls - (len(t.layers) + 1) * n) / (n * (len(epoch_us) - 1))
out["cached_step_ms"] = sum(epoch_us[1:]) / (len(epoch_us) - 1) / n / 1000
out["first_epoch_ms_per_sample"] = epoch_us[0] / n / 1000
out["samples"] = n
# the frozen forward alone: every row's again (the same integers), the fastest of 5 passes
best = None
for _ in range(5):
    t0 = ticks_us()
    for i in range(n):
        at = t.rows.row(i)
        t._frozen_forward(t.rows.buf, at)
    us = ticks_diff(ticks_us(), t0)
    best = us if best is None or us < best else best
out["frozen_forward_ms_per_sample"] = best / n / 1000
print(json.dumps(out))
"""


def frames_for(model_bytes, X, y, epochs):
    """The requests of a `run`, as (kind, frame hex) lines: model upload, CONFIG, SAMPLES."""
    lines, seq = [], 0

    def add(kind, ftype, payload=b""):
        nonlocal seq
        seq += 1
        lines.append("%s %s" % (kind, F.encode(ftype, seq, payload).hex()))
    add("M", F.MODEL_BEGIN, json.dumps({"size": len(model_bytes), "crc": binascii.crc32(model_bytes)}).encode())
    for at in range(0, len(model_bytes), F.MAX_PAYLOAD - 4):
        add("M", F.MODEL_CHUNK, struct.pack("<I", at) + model_bytes[at:at + F.MAX_PAYLOAD - 4])
    add("M", F.MODEL_END)
    # unguarded (holdout 0), as the board-goal command runs: every sample trains, each work() an epoch
    add("C", F.CONFIG, json.dumps({"method": "skip2-lora", "path": "int", "epochs": epochs, "samples": len(y),
                                   "holdout": 0}).encode())
    for payload in encode_samples(X, y, F.KIND_FINETUNE, F.ENC_INT8)[0]:
        add("S", F.SAMPLES, payload)
    return "\n".join(lines) + "\n", F.encode(F.TRAIN, seq + 1).hex()


def measure(runtime, model_bytes, X, y, epochs=10):
    frames, train = frames_for(model_bytes, X, y, epochs)
    files = {"frames.txt": frames.encode(), "train.txt": train.encode()}
    kwargs = {"heap": BOARD_HEAP} if runtime == "micropython-unix" else {}
    return json.loads(run_firmware_script(SCRIPT, runtime, files=files, timeout=900, **kwargs))


THUMB_SCRIPT = """
import sys, thumb_spec
sys.modules["s2l.thumb_asm"] = thumb_spec  # the glue runs; its routines' calls are recorded
from s2l import ikernels as I
from s2l.protocol import Core
core = Core(".")
for line in open("frames.txt"):
    core.feed(bytes.fromhex(line.split()[1]))
t = core.tuner
at = t.rows.row(0)
thumb_spec.RECORD = True
print("P frozen forward")
t._frozen_forward(t.rows.buf, at)
print("P cached step")
I.step(t.rows.buf, at, t.rows.buf, at + t.e_at, t.w, t.meta, t.scratch, t.labels[0], 1)
"""


def thumb_estimate(model_bytes, X, y):
    """The Thumb flavour on one sample: a frozen forward and a training step, each routine call
    recorded (the glue on the unix port) and replayed on the machine code in the emulator.
    Returns {(phase, routine): [calls, multiply-accumulates, instructions, cycles]}."""
    from ..runtimes import thumb_spec
    from ..runtimes.thumbemu import Thumb
    frames, _ = frames_for(model_bytes, X[:1], y[:1], 1)
    files = {"frames.txt": frames.encode(), "thumb_spec.py": open(thumb_spec.__file__, "rb").read()}
    thumb, out, phase = Thumb(), {}, None
    for line in run_firmware_script(THUMB_SCRIPT, "micropython-unix", files=files, timeout=300,
                                    heap="8m").splitlines():
        if line.startswith("P "):
            phase = line[2:]
        elif line.startswith("T "):
            call = json.loads(line[2:])
            blk = call["blk"]
            _, instructions, cycles = thumb.call(call["f"], blk, [bytes.fromhex(h) for h in call["in"]],
                                                 call["alias"], count=True)
            macs = {"rowsums": blk[1] * blk[2], "wsum": blk[3] * blk[4], "outer": blk[3] * blk[4]}[call["f"]]
            row = out.setdefault((phase, call["f"]), [0, 0, 0, 0])
            for k, v in enumerate((1, macs, instructions, cycles)):
                row[k] += v
    return out


def print_thumb(label, estimate):
    from ..runtimes.thumbemu import CLOCK_HZ
    print("\nThumb routines on %s, one sample (mpy-cross -march=armv6m machine code run in unicorn; "
          "Cortex-M0+ cycles estimated)" % label)
    print("%-15s %-8s %5s %6s %12s %8s %10s %14s" % ("phase", "routine", "calls", "MACs", "instructions",
                                                     "cycles", "cycles/MAC", "M MAC/s@125MHz"))
    for (phase, name), (calls, macs, instructions, cycles) in estimate.items():
        print("%-15s %-8s %5d %6d %12d %8d %10.2f %14.2f" % (phase, name, calls, macs, instructions, cycles,
                                                             cycles / macs, macs / cycles * CLOCK_HZ / 1e6))
    for phase in dict.fromkeys(p for p, _ in estimate):
        cycles = sum(v[3] for (p, _), v in estimate.items() if p == phase)
        print("%s: %d cycles in the routines = %.3f ms at 125 MHz (the viper glue between calls "
              "not counted)" % (phase, cycles, cycles / CLOCK_HZ * 1e3))


def granularity_models(names):
    """(label, model bytes): the rotate network at 8 bits, one scale per channel, per group of
    16 or 32 inputs, or per tensor, as `names` lists them."""
    from s2l import modelfile as fmt
    from ..train.export import prepare
    from ..train.modelfile import quantize, write_model
    codes = {"channel": fmt.PER_CHANNEL, "16": 16, "32": 32, "tensor": fmt.PER_TENSOR}
    bad = [g for g in names if g not in codes]
    if bad:
        raise SystemExit("--granularity: %r is not one of %s" % (bad[0], ",".join(codes)))
    net = prepare("rotate", progress=False).float_net
    return [("8/%s" % g, write_model([quantize(w, b, 8, codes[g]) for w, b in zip(net.W, net.b)])) for g in names]


def _kb(v):
    return "n/a" if v is None else "%.1f" % (v / 1024)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m skip2lora.bench.boardbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated (default: %(default)s)")
    parser.add_argument("--model", default="models/digits-rotate.s2lm", help="model file (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=200, help="fine-tune samples (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs (default: %(default)s)")
    parser.add_argument("--granularity", default="", help="comma-separated scale granularities to measure "
                        "instead of --model: channel, 16, 32, tensor (default: none)")
    parser.add_argument("--no-thumb", action="store_true", help="skip the Thumb routines' cycle estimate")
    parser.add_argument("--arena-heaps", default="241k,160k,520k",
                        help="unix-port heaps to run ten jobs on, comma-separated; empty: none (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.granularity:
        models = granularity_models(args.granularity.split(","))
    else:
        models = [(args.model.rsplit("/", 1)[-1], open(args.model, "rb").read())]
    X, y = (v[:args.samples] for v in load_scenario("rotate").finetune)
    print("%-17s %-18s %9s %7s %9s %9s %9s %9s %10s %9s %7s %7s %6s" % (
        "runtime", "model", "kernels", "KB/s", "imports", "samples", "cache", "lowest", "calls/step", "step ms",
        "fwd ms", "frozen", "ratio"))
    print("%-17s %-18s %9s %7s %9s %9s %9s %9s %10s %9s %7s %7s %6s" % (
        "", "", "", "SAMPLES", "KB free", "KB free", "KB free", "KB free", "", "(cached)", "/sample", "ms", ""))
    for runtime in args.runtimes.split(","):
        first = None
        for label, model_bytes in models:
            r = measure(runtime, model_bytes, X, y, args.epochs)
            frozen = r["frozen_forward_ms_per_sample"]
            first = first or frozen
            print("%-17s %-18s %9s %7.1f %9s %9s %9s %9s %10.1f %9.3f %7.2f %7.3f %6.2f" % (
                runtime, label, r["kernels"], r["samples_bytes_per_s"] / 1024, _kb(r["after_imports"]),
                _kb(r["after_samples"]), _kb(r["after_cache"]), _kb(r["lowest_while_training"]),
                r["kernel_calls_per_cached_step"], r["cached_step_ms"], r["first_epoch_ms_per_sample"], frozen,
                frozen / first))
    print("(%d samples x %d epochs, integer path; fwd ms: the first epoch a sample, frozen ms: its frozen forward "
          "alone (the fastest of 5 passes over the rows), ratio: to the first model's in the same run; the wire at 115200 baud delivers 11.25 KB/s; times "
          "are this machine's, not a board's)" % (len(y), args.epochs))
    if not args.no_thumb:
        for label, model_bytes in models:
            print_thumb(label, thumb_estimate(model_bytes, X, y))
    if args.arena_heaps:
        print_arena([h for h in args.arena_heaps.split(",") if h], models[0][1], args.epochs)


def jobs_on_one_board(heap, model_bytes, epochs, jobs=10):
    """Ten jobs (`run` as a user types it: as many samples as fit, the guard on, then alternating a
    limit of 100 and 200 unguarded) on one emulated board with `heap` bytes of heap, no reset.
    Returns the first HELLO and the HELLO after each job."""
    from ..link.board import run_job
    from ..link.client import Client
    from ..link.emulator import Emulator
    scenario = load_scenario("rotate")
    with Emulator("micropython-unix", heap=heap) as emu:
        with Client(emu.port) as board:
            first = board.hello()
        after = []
        for k in range(jobs):
            limit, config = ((None, {"epochs": epochs}) if k % 3 == 0 else
                             (100 * (1 + k % 2), {"epochs": epochs, "holdout": 0}))
            run_job(emu.port, model_bytes, scenario, config, limit=limit)
            with Client(emu.port) as board:
                after.append(board.hello())
    return first, after


def print_arena(heaps, model_bytes, epochs):
    print("\nthe arena job after job: ten jobs without a reset on the unix port (the rotate model; objects twice a "
          "board's size)")
    print("%-6s %9s %12s %14s %14s %12s" % ("heap", "arena KB", "model KB", "largest KB", "largest KB", "change"))
    print("%-6s %9s %12s %14s %14s %12s" % ("", "", "", "before job 1", "after job 10", ""))
    for heap in heaps:
        try:
            first, after = jobs_on_one_board(heap, model_bytes, epochs)
        except (SystemExit, Exception) as e:  # a heap too small for a job: said, not a traceback
            print("%-6s %s" % (heap, str(e).splitlines()[0][:100]))
            continue
        last = after[-1]
        print("%-6s %9.1f %12.1f %14.1f %14.1f %+11.1f%%" % (
            heap, first["arena"]["size"] / 1024, last["arena"]["model"] / 1024, first["largest_free"] / 1024,
            last["largest_free"] / 1024, 100.0 * (last["largest_free"] - first["largest_free"]) / first["largest_free"]))


if __name__ == "__main__":
    main()
