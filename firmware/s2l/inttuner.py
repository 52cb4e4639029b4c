# Skip2-LoRA in integers: the board's fast path. A plain-MicroPython float is a heap object and an
# RP2040 has no FPU, while viper integer loops run ~50x faster (DESIGN.md), so fine-tuning is a few
# large integer kernels (ikernels.py): a sample arrives in one call, a frozen layer is one call,
# and a training step from the skip-cache is one call; floats appear only per sample as it arrives
# from floats, per layer at set-up, and in the loss (one log a step).
#
# Number formats (block floating point with power-of-two exponents: value = q * 2^-e):
#   samples, cached layer inputs   int8 range (|q| <= 127), one exponent per vector
#   adapter activations h, gradients  int12 range (|q| <= 2047), one exponent per vector
#   frozen logits (cached)         int12 range, one exponent
#   adapters A, B                  int16, fixed exponents fa_i (A) and FB (B) per tensor
#   logits for the softmax         int32, summed at the coarsest exponent of their parts
#   softmax                        Q15 (exp by table), its gradient times lr (an int16 multiplier)
# Each fine-tune sample has one row (introws.py): its layer inputs, its frozen logits and their
# exponents, i.e. the sample and its skip-cache entry, written once, read by every later epoch.
# Every buffer of the tuner is carved from the job's arena (arena.py): nothing it holds comes from
# the heap, so the next job finds the memory this one had.
import math
import struct

from s2l import clock, memplan
from s2l import ikernels as I
from s2l.arena import Arena, default_size, typed
from s2l.introws import Rows
from s2l.rng import XorShift32
from s2l.tunerbase import SPILL_PATH, TunerBase, TunerError, check_label

# |z| <= 2047 + n_layers * rank * 32767 * 2047 must stay under 2^30, so that the softmax's
# differences of logits (and their rounding) stay inside int32
MAX_LAYERS_X_RANK = 16
OUT_OF_RANGE = 2  # a sample's cached flag when its frozen layers' outputs leave the integer range


def _int32s(arena, values, what):
    # an int32 array in the arena holding `values`: (its bytes for the kernels, its typed view)
    raw = arena.take(4 * len(values), what)
    view = typed(raw, "i")
    for k in range(len(values)):
        view[k] = values[k]
    return raw, view


def _exponent(values, limit, zero=0):
    """The largest e with max|values| * 2^e <= limit (`zero` when all are zero)."""
    top = 0.0
    for v in values:
        if abs(v) > top:
            top = abs(v)
    return zero if top == 0.0 else int(math.floor(math.log(limit / top) / math.log(2)))


class Adapter:
    """One layer's A (n_in x rank) and B (rank x n_classes): int16 little-endian bytes, views of the
    tuner's adapter region (kernels, copies and files take them as they are)."""

    def __init__(self, w, at, n_in, rank, n_classes):
        self.n_in, self.rank = n_in, rank
        self.qa = w[2 * at:2 * (at + n_in * rank)]
        self.qb = w[2 * (at + n_in * rank):2 * (at + n_in * rank + rank * n_classes)]


class IntSkip2Tuner(TunerBase):
    """Skip2-LoRA with the float Tuner's initialisation and sample order (the same adapters,
    rounded to int16), computed in integers. Batch 1: each step updates the adapters."""
    method, family, path, cache_mode = "skip2-lora", "skip2", "int", "int8"

    def __init__(self, model, arena=None, rank=4, lr=0.05, epochs=30, batch=1, seed=1, cache_mode=None,
                 spill_path=SPILL_PATH):
        # samples and cache are int8 on this path: a float cache mode does not apply
        dims, n = model.dims, model.n_layers
        for name, value, top in (("rank", rank, MAX_LAYERS_X_RANK // n), ("epochs", epochs, None)):
            if value < 1 or (top is not None and value > top):
                raise TunerError("%s must be 1..%s on the integer path, got %r" % (name, top or "", value))
        if batch != 1:
            raise TunerError("the integer path trains with batch 1 (got %d)" % batch)
        if max(dims[:-1]) > 512 or dims[-1] > 32:
            raise TunerError("the integer path takes layers of up to 512 inputs and 32 classes")
        arena = arena or Arena(default_size())  # a tuner of its own, outside a board's protocol core
        self.model, self.arena, self.rank, self.lr, self.epochs, self.batch = model, arena, rank, lr, epochs, 1
        self.n_classes = nc = dims[-1]
        self.rng = XorShift32(seed)
        # the row of a sample: x_0 .. x_{n-1} int8, then z0 int16, then their n + 1 exponents (int8)
        self.x_at = [sum(dims[:i]) for i in range(n)]
        self.z_at = sum(dims[:-1])
        self.e_at = memplan.int_exps_at(dims)
        self.rows = Rows(memplan.int_row_stride(dims), spill_path)
        self.labels = self.cached = self.order = None  # per sample, carved by plan()
        self.n_planned = None  # samples allocated for up front by plan()
        # ring: past the plan, a new sample overwrites the oldest (a board in the field keeps the
        # latest); otherwise it is refused
        self.ring, self.oldest = False, 0
        self.last = None  # the index of the sample stored last
        self.hits = 0
        # frozen layers: scales (per channel, or per group of G inputs) as integer multipliers
        # round(scale * 2^K), |M| <= 2^14, biases as int32 at exponent KB, |bias| <= 2^29; the rest
        # of a layer's parameters in lp; acc holds a layer's sums, one per output and group
        self.layers = []
        n_acc = 0
        for i in range(n):
            size = model.group[i] or dims[i]
            n_acc = max(n_acc, dims[i + 1] * ((dims[i] + size - 1) // size))
            k = _exponent(model.scales[i], 16384.0)
            kb = _exponent(model.bias[i], 2.0 ** 29, zero=64)  # zero biases never limit the exponent
            last = i == n - 1
            lp = [model.row_bytes[i], model.bits[i], dims[i + 1], dims[i], k, kb, self.x_at[i],
                  self.z_at if last else self.x_at[i + 1], 1 if last else 0, I.INT12 if last else I.INT8, size]
            self.layers.append((_int32s(arena, lp, "a layer's parameters")[0],
                                _int32s(arena, [int(math.floor(s * 2 ** k + 0.5)) for s in model.scales[i]],
                                        "a layer's scales")[0],
                                _int32s(arena, [int(math.floor(b * 2 ** kb + 0.5)) for b in model.bias[i]],
                                        "a layer's biases")[0]))
        self.acc = arena.take(4 * n_acc, "the frozen layers' sums")
        # adapters in one int16 array, A from the float path's init (uniform +-sqrt(6 / n_in), the
        # same PRNG draws) or the model's starting adapter, at an exponent whose bound uses a quarter
        # of int16; B zero or the starting adapter's, at FB
        start = model.adapter
        if start is not None and start[0] != rank:
            raise TunerError("the model's starting adapter has rank %d, not %d" % (start[0], rank))
        n_w = sum(dims[i] * rank + rank * nc for i in range(n))
        self.w = arena.take(2 * n_w, "the adapters")
        w = typed(self.w, "h")
        self.adapters, self.fa = [], []
        meta = [n, rank, nc, self.z_at, 0, 0]
        at = 0
        for i in range(n):
            bound = math.sqrt(6.0 / dims[i])
            a = b = None
            if start is not None:
                a, b = start[1][i], start[2][i]
                bound = max(bound, max(abs(v) for v in a))
            fa = int(math.floor(math.log(8191.0 / bound) / math.log(2)))
            scale = 2 ** fa
            for k in range(dims[i] * rank):  # the PRNG is drawn either way: the same sample order
                v = self.rng.uniform(-bound, bound)
                w[at + k] = int(math.floor((v if a is None else a[k]) * scale + 0.5))
            if b is not None:
                if max(abs(v) for v in b) * 2 ** I.FB > I.INT16_MAX:
                    raise TunerError("the model's starting adapter B of layer %d leaves the integer path's "
                                     "range (|B| <= %g)" % (i, I.INT16_MAX / 2.0 ** I.FB))
                for k in range(rank * nc):
                    w[at + dims[i] * rank + k] = int(math.floor(b[k] * 2 ** I.FB + 0.5))
            self.adapters.append(Adapter(self.w, at, dims[i], rank, nc))
            self.fa.append(fa)
            meta += [dims[i], self.x_at[i], at, at + dims[i] * rank, fa]
            at += dims[i] * rank + rank * nc
        self.meta, self.meta_view = _int32s(arena, meta, "the adapters' layout")
        self.set_lr(lr)
        self.scratch = arena.take(4 * I.scratch_size(n, rank, nc), "a step's scratch")
        self.scratch_view = typed(self.scratch, "i")
        self.probe = arena.take(self.rows.stride, "a sample being predicted")
        self.macs = {"frozen_forward": 0, "adapter_forward": 0, "backward": 0, "update": 0, "cache": 0}
        self.us = {"frozen_forward": 0, "step": 0, "cache": 0}
        # MACs per step, counted once: the adapter forward and backward do the same work each step
        self.macs_forward = sum(d * rank + rank * nc for d in dims[:-1])
        self.macs_backward = sum(d * rank + 2 * rank * nc for d in dims[:-1])
        self.kernel_calls = 0
        self.kernels = I.FLAVOUR
        self.peak_alloc = clock.mem_alloc()

    # -- memory ----------------------------------------------------------------------------------
    @property
    def row_bytes(self):
        """Bytes a fine-tune sample costs in RAM: its row, label, cached flag and order entry."""
        return self.rows.stride + memplan.INT_SAMPLE_BYTES

    def plan(self, n, flash_free=None, fit=False):
        """Carve room for n fine-tune samples from the arena now: rows in RAM while the arena
        holds them, the rest on flash (memplan.int_plan, the formula export uses too). Returns
        the plan. When they do not fit even with flash: with `fit`, plan for as many as fit; else
        TunerError saying how many."""
        if len(self.rows) or self.n_planned is not None:
            raise TunerError("plan before the first sample")
        on_flash = None if self.rows.spill_path is None else flash_free
        plan = memplan.int_plan(self.arena.free, self.rows.stride, on_flash, n)
        if plan["samples"] < n:
            if not fit or plan["samples"] < 1:
                raise TunerError("%d fine-tune samples do not fit: %d bytes each, %d bytes of the arena free, "
                                 "%s bytes of flash; at most %d fit" % (n, self.row_bytes, self.arena.free,
                                                                       flash_free, plan["samples"]))
        n, ram = plan["samples"], plan["ram_rows"]
        self.labels = self.arena.take(n, "labels")
        self.cached = self.arena.take(n, "cached flags")
        self.order = typed(self.arena.take(2 * n, "the epoch order"), "H")
        self.rows.reserve(self.arena, ram, n)
        self.n_planned = n
        return {"samples": n, "ram_rows": ram, "spilled_rows": n - ram, "row_bytes": self.row_bytes,
                "ram_bytes": ram * self.rows.stride + n * memplan.INT_SAMPLE_BYTES}

    # -- samples: int8 rows with an exponent, as the skip-cache holds them ------------------------
    def check_int8(self, src, at, label):
        """An int8 sample in the wire's layout (f32 scale, then the values) and its label."""
        field = (struct.unpack_from("<I", src, at)[0] >> 23) & 0xFF
        if field == 0xFF:
            raise TunerError("sample has a non-finite scale")
        if field and not -127 <= field - 142 <= 105:  # the stored exponent -(shift + field - 142) fits int8
            raise TunerError("sample scale out of the integer path's range (2^%d)" % (field - 127))
        check_label(label, self.n_classes)

    @staticmethod
    def _q8(x, out, at):
        # out[at + k] = round(x[k] * 2^e) as int8 with the largest e keeping |q| <= 127
        e = _exponent(x, 127.0)
        scale = 2.0 ** e
        for k in range(len(x)):
            q = int(math.floor(x[k] * scale + 0.5))
            out[at + k] = (127 if q > 127 else (-127 if q < -127 else q)) & 0xFF
        return e

    def _ingest(self, buf, at, src, src_at):
        # an int8 sample in the wire's layout, f32 scale then values: scale = mant * 2^(E - 150),
        # mant 24 bits, taken to 16 bits so that q * mant stays within 2^23; ingest8 picks the shift
        scale = struct.unpack_from("<I", src, src_at)[0]
        mant = ((scale & 0x7FFFFF) | 0x800000) if scale & 0x7F800000 else 0
        exp16 = ((scale >> 23) & 0xFF) - 142
        mant = (mant + 128) >> 8
        if mant == 65536:
            mant, exp16 = 32768, exp16 + 1
        shift = I.ingest8(src, src_at + 4, self.model.dims[0], -mant if scale & 0x80000000 else mant, buf, at)
        return -(shift + exp16) if mant else 0

    def _add(self, label, fill):
        # fill(buf, at) writes the sample's int8 values at buf[at:] and returns their exponent: into
        # the probe row first, so that a sample refused here leaves every stored row as it was
        if self.n_planned is None:  # no plan: as many as the arena holds in RAM beside a guard made later
            free = self.arena.free - len(self.w)
            self.plan(memplan.int_plan(free, self.rows.stride, None, memplan.MAX_SAMPLES)["samples"], fit=True)
        k = len(self.rows)
        if k >= self.n_planned and not self.ring:
            raise TunerError("more fine-tune samples than the %d planned" % self.n_planned)
        e = fill(self.probe, 0)
        if not -128 <= e <= 127:
            raise TunerError("sample %d is out of the integer path's range (exponent %d)" % (k, e))
        if k < self.n_planned:
            at = self.rows.append()
        else:  # a ring: the oldest sample's row takes the new one
            k = self.oldest
            self.oldest = (k + 1) % self.n_planned
            at = self.rows.row(k, fresh=True)
        buf, n_in = self.rows.buf, self.model.dims[0]
        buf[at:at + n_in] = self.probe[0:n_in]
        buf[at + self.e_at] = e & 0xFF
        self.rows.stored(k)
        self.labels[k], self.cached[k] = label, 0
        self.last = k

    def truncate(self, n):
        """Forget the fine-tune samples from n on (those of a frame that was refused)."""
        self.rows.truncate(n)

    def add_sample(self, x, label):
        """A float sample in raw sensor units (the host's scripts, float32 on the wire): normalised
        by the model's constants, if it has them."""
        self.check_sample(x, label)
        x = self.model.normalised(x)
        self._add(label, lambda buf, at: self._q8(x, buf, at))

    def add_int8(self, src, at, label):
        """An int8 sample as the wire carries it at src[at:]: a f32 scale, then the int8 values of
        the network's input (already normalised by the host)."""
        self.check_int8(src, at, label)
        self._add(label, lambda buf, row_at: self._ingest(buf, row_at, src, at))

    def add_record(self, record, label):
        """A sample as record() wrote it (a sample file on flash): its input's exponent, then its int8
        input; its frozen layers run again at its first epoch."""
        n_in = self.model.dims[0]

        def fill(buf, at):
            buf[at:at + n_in] = record[1:1 + n_in]
            return (record[0] ^ 0x80) - 0x80
        self._add(label, fill)

    def record(self, k, out):
        """Sample k's input as add_record() takes it, into out (1 + n_in bytes); returns its label."""
        at, n_in = self.rows.row(k), self.model.dims[0]
        out[0] = self.rows.buf[at + self.e_at]
        out[1:1 + n_in] = self.rows.buf[at:at + n_in]
        return self.labels[k]

    def ring_order(self):
        """The stored samples' indices, oldest first."""
        n = len(self.rows)
        start = self.oldest if self.ring and n == self.n_planned else 0
        for j in range(n):
            yield (start + j) % n

    @property
    def n_samples(self):
        return len(self.rows)

    def sample_order(self):
        """The order array (carved by plan(), one entry per planned sample)."""
        return self.order

    # -- training --------------------------------------------------------------------------------
    def _frozen_forward(self, buf, at):
        """Fill the row's layer inputs 1..n-1 and frozen logits from its x_0, and their exponents;
        False when a layer's outputs leave the integer path's range (the sample cannot be used)."""
        eo = at + self.e_at
        e = (buf[eo] ^ 0x80) - 0x80
        for i in range(len(self.layers)):
            lp, mult, bias = self.layers[i]
            e = I.frozen_layer(self.model.packed(i), lp, mult, bias, buf, at, e, self.acc)
            self.kernel_calls += 1
            self.macs["frozen_forward"] += self.model.dims[i] * self.model.dims[i + 1]
            if not -128 <= e <= 127:
                return False
            buf[eo + i + 1] = e & 0xFF
        return True

    def train(self, order, start, end):
        """Train sample order[start] (batch 1: the epoch loop's step, tunerbase.py); its loss. The
        first visit of a sample runs the frozen layers into its row (fresh work); later ones only
        step. A sample whose frozen layers' outputs or logits leave the integer range is skipped."""
        index = order[start]
        self.fresh = not self.cached[index]
        self.kernel_calls += 1
        self.macs["adapter_forward"] += self.macs_forward
        self.macs["backward"] += self.macs_backward
        at = self._cached_row(index)
        if at < 0:  # its frozen layers' outputs are out of range: it never trains
            self.skipped += 1
            return 0.0
        t1 = clock.ticks_us()
        label = self.labels[index]
        s = I.step(self.rows.buf, at, self.rows.buf, at + self.e_at, self.w, self.meta, self.scratch, label, 1)
        self.us["step"] += clock.ticks_diff(clock.ticks_us(), t1)
        if s < 0:  # the logits left the range the softmax takes: no step was taken
            self.skipped += 1
            return 0.0
        # the cross-entropy, -log(p[label] / sum p); a label whose p rounds to 0 counts as 1/32767
        p_at = I.scratch_size(len(self.layers), self.rank, self.n_classes) - 2 * self.n_classes
        return math.log(s / max(self.scratch_view[p_at + label], 1))

    def _cached_row(self, index):
        """The offset of sample `index`'s row in rows.buf, its frozen layers run into it on the
        first visit (a skip-cache miss), read back from the cache on later ones; -1 for a sample
        whose frozen layers' outputs are out of the integer path's range (marked so, never rerun)."""
        if self.cached[index] == OUT_OF_RANGE:
            return -1
        t0 = clock.ticks_us()
        at = self.rows.row(index)
        t1 = clock.ticks_us()
        self.us["cache"] += clock.ticks_diff(t1, t0)
        if self.cached[index]:
            self.hits += 1
            return at
        fits = self._frozen_forward(self.rows.buf, at)
        self.rows.stored(index)
        self.cached[index] = 1 if fits else OUT_OF_RANGE
        self.us["frozen_forward"] += clock.ticks_diff(clock.ticks_us(), t1)
        return at if fits else -1

    def predict_stored(self, index):
        """The prediction for stored sample `index` (a validation sample), from the skip-cache."""
        at = self._cached_row(index)
        if at < 0:
            return -1
        self.kernel_calls += 1
        return I.step(self.rows.buf, at, self.rows.buf, at + self.e_at, self.w, self.meta, self.scratch, 0, 0)

    def stored_logits(self, index):
        """The logits of stored sample `index` as floats, from the skip-cache; None out of range."""
        if self.predict_stored(index) < 0:
            return None
        return self._logits(self.rows.buf, self.rows.row(index) + self.e_at)

    def _logits(self, buf, eo):
        # the logits a prediction step left in its scratch, int32 at the coarsest exponent of their
        # parts (ikernels.step), as floats; buf[eo:] holds the sample's exponents
        n, r, sv = len(self.layers), self.rank, self.scratch_view
        low = (buf[eo + n] ^ 0x80) - 0x80
        for i in range(n):
            low = min(low, I.FB + sv[n * r + i])
        z = n * r + n + r
        return [sv[z + c] * 2.0 ** -low for c in range(self.n_classes)]

    def set_lr(self, lr):
        # the learning rate as lr_mult * 2^-lr_exp, lr_mult < 2^14
        self.lr = lr
        self.meta_view[5] = _exponent([lr], 16383.0)
        self.meta_view[4] = int(math.floor(lr * 2 ** self.meta_view[5] + 0.5))

    # -- prediction --------------------------------------------------------------------------------
    def _predict_probe(self, e):
        # -1 when the sample is out of the integer path's range (its logits, or an exponent)
        if not -128 <= e <= 127:
            return -1
        self.probe[self.e_at] = e & 0xFF
        if not self._frozen_forward(self.probe, 0):
            return -1
        self.kernel_calls += 1
        return I.step(self.probe, 0, self.probe, self.e_at, self.w, self.meta, self.scratch, 0, 0)

    def predict(self, x):
        """The class of a raw reading (float sensor units, as add_sample takes them); -1 for a
        reading the integer path cannot represent."""
        self.check_sample(x, 0)
        return self._predict_probe(self._q8(self.model.normalised(x), self.probe, 0))

    def predict_logits(self, x):
        """The logits of a raw reading as floats (what predict's argmax picked from); None for a
        reading the integer path cannot represent."""
        if self.predict(x) < 0:
            return None
        return self._logits(self.probe, self.e_at)

    def predict_int8(self, src, at):
        return self._predict_probe(self._ingest(self.probe, 0, src, at))

    # -- what the protocol reports -------------------------------------------------------------------
    @property
    def cache(self):
        return self  # the rows are the skip-cache: hits, bytes and spilled bytes are the tuner's

    @property
    def bytes(self):
        cached = 0
        for k in range(len(self.rows)):
            cached += self.cached[k] == 1
        return cached * (self.rows.stride - self.model.dims[0] - 1)

    @property
    def spilled_bytes(self):
        return self.rows.spilled_rows * self.rows.stride

    def close(self):
        self.rows.close()
