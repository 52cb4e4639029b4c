# How much of the arena an integer-path job takes, as one formula: the board plans a job's samples
# with it (inttuner.plan) and the host's export quotes "room for N samples" with it, so that what
# the host promises the board keeps. Every region is carved 4-byte aligned (arena.py).
from s2l import ikernels as I
from s2l.arena import aligned

INT_SAMPLE_BYTES = 4  # a fine-tune sample's label, cached flag and order entry (u16), in RAM
MAX_SAMPLES = 65535  # the order entries are u16
FLASH_RESERVE = 24 * 1024  # flash a plan leaves for the model and adapter files' atomic writes


def int_exps_at(dims):
    """Where a row's exponents start: after x_0 .. x_{n-1} (int8) and the frozen logits (int16)."""
    return sum(dims[:-1]) + 2 * dims[-1]


def int_row_stride(dims):
    """A fine-tune sample's row: its layer inputs, frozen logits and their len(dims) exponents."""
    return int_exps_at(dims) + len(dims)


def int_fixed_bytes(dims, groups, rank, guarded):
    """The arena a tuner takes before its samples, in the order it takes it: per layer its
    parameters, scale multipliers (groups[i]: inputs a scale covers, 0 per channel) and biases;
    the frozen layers' sums; the adapters; their layout; a step's scratch; the probe row; and the
    guard's copy of the adapters."""
    n = len(dims) - 1
    nc = dims[-1]
    sizes = []
    n_acc = 0
    for i in range(n):
        per_row = (dims[i] + groups[i] - 1) // groups[i] if groups[i] else 1
        n_acc = max(n_acc, dims[i + 1] * per_row)
        sizes += [4 * 11, 4 * dims[i + 1] * per_row, 4 * dims[i + 1]]
    n_w = sum(dims[i] * rank + rank * nc for i in range(n))
    sizes += [4 * n_acc, 2 * n_w, 4 * (I.META_HEADER + I.META_LAYER * n), 4 * I.scratch_size(n, rank, nc),
              int_row_stride(dims)]
    if guarded:
        sizes.append(2 * n_w)
    return sum(aligned(s) for s in sizes)


def _ram_rows(free, stride, n):
    # the rows RAM holds beside n samples' labels, flags and order entries and the scratch row
    avail = free - 2 * aligned(n) - aligned(2 * n) - stride
    if avail < 0:
        return -1
    ram = min(n, avail // stride)
    while aligned(ram * stride) > avail:
        ram -= 1
    return ram


def int_plan(free, stride, flash_free, n):
    """{"samples", "ram_rows"}: the most of n fine-tune samples that `free` arena bytes hold, their
    rows in RAM first and the rest on flash (flash_free bytes, less FLASH_RESERVE; None: none)."""
    on_flash = 0 if flash_free is None else max(0, flash_free - FLASH_RESERVE) // stride

    def fits(k):
        ram = _ram_rows(free, stride, k)
        return ram >= 0 and k - ram <= on_flash

    low, high = 0, min(n, MAX_SAMPLES)
    while low < high:  # the largest k that fits: fits() is monotone in k
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return {"samples": low, "ram_rows": max(0, _ram_rows(free, stride, low))}
