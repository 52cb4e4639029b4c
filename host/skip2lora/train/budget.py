"""Whether a model leaves a board room to fine-tune: the arena's budget, checked at export."""
from s2l import memplan
from s2l import modelfile as fmt
from s2l.arena import aligned

from . import reference

# The board budget export checks for a user's data, before any board is asked, with the formula the
# board plans a job with (s2l/memplan.py): the board's arena (the block it takes at boot for jobs)
# holds the model file (weights stay packed in it), the integer tuner's fixed part (adapters, their
# guard copy, layer parameters, scratch) and, per fine-tune sample, one row (its int8 layer inputs,
# int16 frozen logits and their exponents: the sample and its skip-cache entry) with its label, flag
# and order entry. Rows that RAM cannot hold go to flash, slower; this counts what fits in RAM.
# An RP2040's arena, estimated: 241 KB free at boot under MicroPython 1.28 (measured on a Pico), less
# the firmware's imports (35.5 KB measured before the integer path's modules joined them at boot;
# 57 KB scaled from the unix port's 75.6 KB by the 0.76 the old imports measured board/unix), less
# the 15% of the free heap the imports' holes leave outside the largest block (the unix port's), less
# the heap the board keeps beside the arena (arena.GENERAL_HEAP). `export --port` reads a board's
# own arena from its HELLO instead.
RP2040_ARENA_BYTES = 112 * 1024


def board_budget(dims, bits, rank=reference.Config.rank, arena=RP2040_ARENA_BYTES, guarded=True):
    """Bytes the board's arena gives the model and the tuner before samples, and how many fine-tune
    samples then fit in RAM (memplan's formula, the board's own)."""
    n_layers = len(dims) - 1
    model = fmt.file_size(dims, bits, [fmt.PER_CHANNEL] * n_layers, norm=True, lr=True)  # as export writes a user's
    tuner = memplan.int_fixed_bytes(dims, [0] * n_layers, rank, guarded)
    fixed = aligned(model) + tuner
    stride = memplan.int_row_stride(dims)
    fit = memplan.int_plan(arena - fixed, stride, None, memplan.MAX_SAMPLES)["samples"] if arena > fixed else 0
    return {"arena": arena, "model": model, "tuner": tuner, "fixed": fixed,
            "sample": stride + memplan.INT_SAMPLE_BYTES, "samples_that_fit": fit}


def check_board_budget(dims, bits, n_finetune=None, arena=RP2040_ARENA_BYTES):
    """One line about the budget; ValueError when the model and adapters leave no room to train."""
    b = board_budget(dims, bits, arena=arena)
    line = ("board budget (RP2040, a %d KB arena%s; a sample and its skip-cache row %d bytes, in RAM while it "
            "holds them, then on flash): model %.1f KB + tuner %.1f KB = %.1f KB; room for %d fine-tune "
            "samples of %d features" % (
                b["arena"] // 1024, " (estimated)" if arena == RP2040_ARENA_BYTES else "", b["sample"],
                b["model"] / 1024, b["tuner"] / 1024, b["fixed"] / 1024, b["samples_that_fit"], dims[0]))
    if b["samples_that_fit"] < 10:
        raise ValueError(line + ": too little for fine-tuning; use fewer features (or coarser --bits)")
    if n_finetune is not None and n_finetune > b["samples_that_fit"]:
        line += " in RAM; of your %d fine-tune samples the rest go to flash (or run --limit %d)" % (
            n_finetune, b["samples_that_fit"])
    return line
