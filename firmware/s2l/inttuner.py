# Skip2-LoRA in integers: the board's fast path. A plain-MicroPython float is a heap object and an
# RP2040 has no FPU, while viper integer loops run ~50x faster (DESIGN.md), so a training step is
# integer kernel calls (ikernels.py) from the skip-cache to the adapters' update, softmax included;
# floats appear only per sample as it arrives (its exponent), per layer at set-up, and in the loss.
#
# Number formats (block floating point with power-of-two exponents: value = q * 2^-e):
#   samples, cached layer inputs   int8 range (|q| <= 127), one exponent per vector
#   adapter activations h, gradients  int12 range (|q| <= 2047), one exponent per vector
#   frozen logits (cached)         int12 range, one exponent
#   adapters A, B                  int16, fixed exponents FA, FB per tensor
#   logits for the softmax         int32, summed at the coarsest exponent of their parts
#   softmax                        Q15 (exp by table), its gradient times lr (an int16 multiplier)
# Rounding is to nearest (half up); weights saturate at +-32767. The ranges keep every kernel sum
# inside int32 (see ikernels.py).
import math
from array import array

from s2l import clock
from s2l import ikernels as I
from s2l.tuner import Tuner, TunerError

INT8 = 127
INT12 = 2047
FB = 12  # B starts at zero and stays within +-8: 1/4096 resolution


def _quantize(x, limit, out):
    """out = x * 2^e rounded, with the largest e such that max|x| * 2^e <= limit; returns e."""
    e = _exponent(x, limit)
    scale = 2.0 ** e
    for k in range(len(x)):
        q = int(math.floor(x[k] * scale + 0.5))
        out[k] = limit if q > limit else (-limit if q < -limit else q)
    return e


def _exponent(values, limit, zero=0):
    """The largest e with max|values| * 2^e <= limit (`zero` when all are zero)."""
    top = 0.0
    for v in values:
        if abs(v) > top:
            top = abs(v)
    return zero if top == 0.0 else int(math.floor(math.log(limit / top) / math.log(2)))


def _signed8(b):
    return b - 256 if b > 127 else b


class IntRows:
    """Rows of int8-range vectors, each with its exponent, and optionally one int16 vector (the
    frozen logits) with its exponent: values in one bytearray, exponents in another, the int16
    vectors in an array('h'), each growing by whole rows."""

    def __init__(self, widths, wide=0):
        self.widths, self.wide = widths, wide
        self.stride = sum(widths)
        self.n_exps = len(widths) + (1 if wide else 0)
        self.vals, self.exps, self.wides = bytearray(), bytearray(), array("h")
        self.n = 0

    def reserve(self, rows):
        # MemoryError here, before a row is half-written; a partial reserve is only spare room
        for buf, width in ((self.vals, self.stride), (self.exps, self.n_exps)):
            need = rows * width - len(buf)
            if need > 0:
                buf.extend(bytes(need))
        need = rows * self.wide - len(self.wides)
        if need > 0:
            self.wides.extend(array("h", bytearray(2 * need)))

    def append(self, vectors, exps, first, wide=None, wide_exp=0):
        """Store vectors[j] (exponent exps[first + j]) and the wide vector; returns the row."""
        self.reserve(self.n + 1)
        at, e = self.n * self.stride, self.n * self.n_exps
        for j in range(len(vectors)):
            I.pack8(vectors[j], self.widths[j], self.vals, at)
            self.exps[e + j] = exps[first + j] & 0xFF
            at += self.widths[j]
        if self.wide:
            self.exps[e + len(vectors)] = wide_exp & 0xFF
            for k in range(self.wide):
                self.wides[self.n * self.wide + k] = wide[k]
        self.n += 1
        return self.n - 1

    def get(self, row, vectors, exps, first):
        """Decode a row's vectors into int16 arrays, their exponents into exps[first:]; returns
        the wide vector's exponent (0 if none); the wide vector stays at self.wides[row * wide:]."""
        at, e = row * self.stride, row * self.n_exps
        for j in range(len(vectors)):
            I.unpack8(self.vals, at, self.widths[j], vectors[j])
            exps[first + j] = _signed8(self.exps[e + j])
            at += self.widths[j]
        return _signed8(self.exps[e + len(vectors)]) if self.wide else 0

    @property
    def bytes(self):
        return self.n * (self.stride + self.n_exps + 2 * self.wide)


class IntSkipCache:
    def __init__(self, dims):
        self.rows = IntRows(list(dims[1:-1]), dims[-1])
        self.row_of = array("h")
        self.hits = 0
        self.spilled_bytes = 0

    def reserve(self, n_samples):
        self.rows.reserve(n_samples)
        while len(self.row_of) < n_samples:
            self.row_of.append(-1)

    @property
    def bytes(self):
        return self.rows.bytes

    def __len__(self):
        return self.rows.n

    def close(self):
        pass  # all in RAM: no spill file to close


class IntSkip2Tuner(Tuner):
    """Skip2-LoRA with the float Tuner's interface, initialisation and sample order (the same
    adapters, rounded to int16), computed in integers. Batch 1: each step updates the adapters."""

    def __init__(self, model, rank=4, lr=0.05, epochs=30, batch=1, seed=1, cache_mode=None, **storage):
        # samples and cache are int8 on this path: a float cache mode or budget does not apply
        if batch != 1:
            raise TunerError("the integer path trains with batch 1 (got %d)" % batch)
        Tuner.__init__(self, model, "skip2-lora", rank, lr, epochs, 1, seed, cache_mode="float")
        self.path = "int"
        dims, n = model.dims, model.n_layers
        self.cache_mode = "int8"
        self.cache = IntSkipCache(dims)
        self.samples = IntRows([dims[0]])
        # frozen layers: per-channel scales as integer multipliers M = round(scale * 2^K), |M| <= 2^14,
        # and biases as int32 at exponent KB, |bias| <= 2^29
        self.mult, self.mult_exp, self.bias_q, self.bias_exp = [], [], [], []
        for i in range(n):
            k = _exponent(model.scales[i], 16384.0)
            self.mult.append(array("i", [int(math.floor(s * 2 ** k + 0.5)) for s in model.scales[i]]))
            self.mult_exp.append(k)
            kb = _exponent(model.bias[i], 2.0 ** 29, zero=64)  # zero biases never limit the exponent
            self.bias_q.append(array("i", [int(math.floor(b * 2 ** kb + 0.5)) for b in model.bias[i]]))
            self.bias_exp.append(kb)
        # the learning rate as lr_mult * 2^-lr_exp, lr_mult < 2^14
        self.lr_exp = _exponent([lr], 16383.0)
        self.lr_mult = int(math.floor(lr * 2 ** self.lr_exp + 0.5))
        # adapters: A from the float init at FA (its bound uses a quarter of int16), B zero at FB
        self.fa = []
        for ad in self.adapters:
            bound = math.sqrt(6.0 / ad.n_in)
            fa = int(math.floor(math.log(8191.0 / bound) / math.log(2)))
            qa = array("h", [0] * len(ad.a))
            for k in range(len(ad.a)):
                qa[k] = int(math.floor(ad.a[k] * 2 ** fa + 0.5))
            ad.qa, ad.qb = qa, array("h", [0] * len(ad.b))
            ad.hq, ad.hacc = array("h", [0] * ad.rank), array("i", [0] * ad.rank)
            ad.ghq, ad.ghacc = array("h", [0] * ad.rank), array("i", [0] * ad.rank)
            ad.zacc = array("i", [0] * dims[-1])
            self.fa.append(fa)
        nc = dims[-1]
        self.acc = array("i", [0] * max(dims))
        self.xs = [array("h", [0] * d) for d in dims[:-1]]  # a sample's layer inputs
        self.input, self.hidden = self.xs[:1], self.xs[1:]  # what the samples and the cache hold
        self.exps = array("b", [0] * n)
        self.z0 = array("h", [0] * nc)
        self.zsum, self.p, self.gacc = array("i", [0] * nc), array("i", [0] * nc), array("i", [0] * nc)
        self.gq = array("h", [0] * nc)
        # MACs per step, counted once: the adapter forward and backward do the same work each step
        self.macs_forward = sum(ad.n_in * ad.rank + ad.rank * nc for ad in self.adapters)
        self.macs_backward = sum(ad.n_in * ad.rank + 2 * ad.rank * nc for ad in self.adapters)

    # -- samples: int8 with an exponent, as the cache holds them --------------------------------------
    def add_sample(self, x, label):
        self.check_sample(x, label)
        q = array("h", [0] * len(x))
        e = _quantize(x, INT8, q)
        try:
            self.samples.append([q], [e], 0)
        except MemoryError:
            raise TunerError("out of memory storing sample %d" % len(self.labels))
        self.labels.append(label)

    # -- the frozen network in integers --------------------------------------------------------------
    def _frozen_layer(self, i, x, e, out, limit, relu):
        """out (int `limit` range) = layer i of x (exponent e); returns out's exponent."""
        model, acc = self.model, self.acc
        n_in, n_out = model.dims[i], model.dims[i + 1]
        I.mv_packed(model.packed(i), model.row_bytes[i], model.bits[i], n_out, n_in, x, acc)
        self.macs["frozen_forward"] += n_in * n_out
        # acc * M at exponent K + e - pre: |acc >> pre| <= 2^15 keeps the product under 2^29, and
        # pre also keeps that exponent at or below the bias's, so the bias only shifts right
        exp = self.mult_exp[i] + e
        pre = max(0, I.top_bits(acc, n_out) - 15, exp - self.bias_exp[i])
        exp -= pre
        I.scale_bias(acc, n_out, pre, self.mult[i], self.bias_q[i], self.bias_exp[i] - exp)
        return exp - I.fit(acc, n_out, limit, relu, out)

    def _frozen_forward(self):
        """From self.xs[0] / self.exps[0], fill the other layer inputs and self.z0; returns z0's exponent."""
        n = self.model.n_layers
        e = self.exps[0]
        for i in range(n - 1):
            e = self._frozen_layer(i, self.xs[i], e, self.xs[i + 1], INT8, True)
            self.exps[i + 1] = e
        return self._frozen_layer(n - 1, self.xs[n - 1], e, self.z0, INT12, False)

    def _inputs(self, index):
        """Layer inputs of sample `index` into self.xs, from the skip-cache after epoch 1; returns
        the frozen logits as (exponent, int16 array, offset)."""
        self.samples.get(index, self.input, self.exps, 0)
        cache = self.cache
        row = cache.row_of[index]
        t0 = clock.ticks_us()
        if row >= 0:
            cache.hits += 1
            ez = cache.rows.get(row, self.hidden, self.exps, 1)
            self.us["cache"] += clock.ticks_diff(clock.ticks_us(), t0)
            return ez, cache.rows.wides, row * cache.rows.wide
        ez = self._frozen_forward()
        t1 = clock.ticks_us()
        self.us["frozen_forward"] += clock.ticks_diff(t1, t0)
        cache.row_of[index] = cache.rows.append(self.hidden, self.exps, 1, self.z0, ez)
        self.us["cache"] += clock.ticks_diff(clock.ticks_us(), t1)
        return ez, self.z0, 0

    # -- adapters ----------------------------------------------------------------------------------
    def _adapters_forward(self, ez, z0, at):
        """self.zsum = the frozen logits (z0[at:], exponent ez) plus every adapter's, summed in
        integers at the coarsest of their exponents, which is returned."""
        nc = self.n_classes
        low = ez
        for i in range(len(self.adapters)):
            ad = self.adapters[i]
            I.mtv(ad.qa, ad.n_in, ad.rank, self.xs[i], ad.hacc)
            ad.he = self.fa[i] + self.exps[i] - I.fit(ad.hacc, ad.rank, INT12, 0, ad.hq)
            I.mtv(ad.qb, ad.rank, nc, ad.hq, ad.zacc)
            if FB + ad.he < low:
                low = FB + ad.he
        if not -4 <= low <= 30:  # the softmax kernel's range: logits within about +-2^20 and not all ~0
            raise TunerError("logits out of the integer path's range (exponent %d)" % low)
        I.widen(z0, at, nc, ez - low, self.zsum)
        for ad in self.adapters:
            I.add_rshift(ad.zacc, nc, FB + ad.he - low, self.zsum)
        self.macs["adapter_forward"] += self.macs_forward
        return low

    def _step_skip(self, index, scale):
        # scale is -lr (batch 1, fused): applied here as the integer lr_mult
        ez, z0, at = self._inputs(index)
        t0 = clock.ticks_us()
        low = self._adapters_forward(ez, z0, at)
        t1 = clock.ticks_us()
        self.us["adapter_forward"] += clock.ticks_diff(t1, t0)
        nc, label = self.n_classes, self.labels[index]
        total = I.softmax_exp(self.zsum, nc, low, I.EXP2_COARSE, I.EXP2_FINE, self.p)
        I.softmax_grad(self.p, nc, label, (1 << 29) // total, self.lr_mult, self.gacc)
        eg = 15 + self.lr_exp - I.fit(self.gacc, nc, INT12, 0, self.gq)  # gq: the step on the logits
        for i in range(len(self.adapters)):
            ad = self.adapters[i]
            # gh = B g with B before its update; then B += h g^T, A += x gh^T, in B's and A's units
            I.mv(ad.qb, ad.rank, nc, self.gq, ad.ghacc)
            egh = FB + eg - I.fit(ad.ghacc, ad.rank, INT12, 0, ad.ghq)
            I.outer_update(ad.qb, ad.rank, nc, ad.hq, self.gq, ad.he + eg - FB)
            I.outer_update(ad.qa, ad.n_in, ad.rank, self.xs[i], ad.ghq, self.exps[i] + egh - self.fa[i])
        self.macs["backward"] += self.macs_backward
        self.us["backward"] += clock.ticks_diff(clock.ticks_us(), t1)
        # the cross-entropy, -log(p[label] / total); a label whose p rounds to 0 counts as 1/32767
        return math.log(total / max(self.p[label], 1))

    def logits(self, x):
        self.exps[0] = _quantize(x, INT8, self.xs[0])
        ez = self._frozen_forward()
        low = self._adapters_forward(ez, self.z0, 0)
        scale = 2.0 ** -low
        return [self.zsum[c] * scale for c in range(self.n_classes)]
