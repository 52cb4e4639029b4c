# Skip2-LoRA in integers: the board's fast path. A plain-MicroPython float is a heap object and an
# RP2040 has no FPU, while viper integer loops run ~50x faster (DESIGN.md), so every
# multiply-accumulate here is integer; floats appear only per vector or per class (exponents, the
# output bias, the softmax and loss).
#
# Number formats (block floating point with power-of-two exponents: value = q * 2^-e):
#   samples, cached layer inputs   int8 range (|q| <= 127), one exponent per vector
#   adapter activations h, gradients  int12 range (|q| <= 2047), one exponent per vector
#   frozen logits (cached)         int12 range, one exponent
#   adapters A, B                  int16, fixed exponents FA, FB per tensor
# Rounding is to nearest (half up); weights saturate at +-32767. The ranges keep every kernel sum
# inside int32 (see ikernels.py).
import math
from array import array

from s2l import clock
from s2l import ikernels as I
from s2l.tuner import Tuner, TunerError, _softmax_grad

INT8 = 127
INT12 = 2047
FB = 12  # B starts at zero and stays within +-8: 1/4096 resolution


def _bitlen(v):
    n = 0
    while v:
        v >>= 1
        n += 1
    return n


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


def _fit(v, n, limit, relu, out):
    """Requantize int sums v into `limit` range: returns the shift taken (exponent drops by it)."""
    top = I.max_abs(v, n)
    shift = max(0, _bitlen(top) - _bitlen(limit))
    if shift and I.rshift(top, shift) > limit:
        shift += 1
    I.requantize(v, n, shift, limit, relu, out)
    return shift


class IntRows:
    """Rows of int8-range vectors, each with its exponent, and optionally one int16 vector (the
    frozen logits) at the end; packed in one bytearray that grows by whole rows."""

    def __init__(self, widths, wide=0):
        self.widths, self.wide = widths, wide
        self.row_bytes = sum(1 + w for w in widths) + (1 + 2 * wide if wide else 0)
        self.buf = bytearray()
        self.n = 0

    def reserve(self, rows):
        need = rows * self.row_bytes - len(self.buf)
        if need > 0:
            self.buf.extend(bytes(need))  # MemoryError here, before a row is half-written

    def append(self, vectors, exps, wide=None, wide_exp=0):
        self.reserve(self.n + 1)
        buf, at = self.buf, self.n * self.row_bytes
        for v, e in zip(vectors, exps):
            buf[at] = e & 0xFF
            for k in range(len(v)):
                buf[at + 1 + k] = v[k] & 0xFF
            at += 1 + len(v)
        if self.wide:
            buf[at] = wide_exp & 0xFF
            for k in range(self.wide):
                buf[at + 1 + 2 * k] = wide[k] & 0xFF
                buf[at + 2 + 2 * k] = (wide[k] >> 8) & 0xFF
        self.n += 1
        return self.n - 1

    def get(self, row, vectors, exps, wide=None):
        """Decode a row into int16 arrays; returns the wide vector's exponent (0 if none)."""
        buf, at = self.buf, row * self.row_bytes
        for j, v in enumerate(vectors):
            exps[j] = buf[at] - 256 if buf[at] > 127 else buf[at]
            for k in range(len(v)):
                q = buf[at + 1 + k]
                v[k] = q - 256 if q > 127 else q
            at += 1 + len(v)
        if not self.wide:
            return 0
        for k in range(self.wide):
            q = buf[at + 1 + 2 * k] | (buf[at + 2 + 2 * k] << 8)
            wide[k] = q - 65536 if q > 32767 else q
        return buf[at] - 256 if buf[at] > 127 else buf[at]

    @property
    def bytes(self):
        return self.n * self.row_bytes


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
        self.acc = array("i", [0] * max(dims))
        self.xs = [array("h", [0] * d) for d in dims[:-1]]  # a sample's layer inputs
        self.exps = array("b", [0] * n)
        self.z0 = array("h", [0] * dims[-1])
        self.zsum = [0] * dims[-1]
        self.gq = array("h", [0] * dims[-1])
        self.zf = [0.0] * dims[-1]

    # -- samples: int8 with an exponent, as the cache holds them --------------------------------------
    def add_sample(self, x, label):
        self.check_sample(x, label)
        q = array("h", [0] * len(x))
        e = _quantize(x, INT8, q)
        try:
            self.samples.append([q], [e])
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
        pre = max(0, _bitlen(I.max_abs(acc, n_out)) - 15, exp - self.bias_exp[i])
        exp -= pre
        I.scale_bias(acc, n_out, pre, self.mult[i], self.bias_q[i], self.bias_exp[i] - exp)
        return exp - _fit(acc, n_out, limit, relu, out)

    def _frozen_forward(self, index):
        """Fill self.xs (layer inputs) / self.exps and self.z0 for sample `index`; returns z0's exponent."""
        n = self.model.n_layers
        e = self.exps[0]
        for i in range(n - 1):
            e = self._frozen_layer(i, self.xs[i], e, self.xs[i + 1], INT8, True)
            self.exps[i + 1] = e
        return self._frozen_layer(n - 1, self.xs[n - 1], e, self.z0, INT12, False)

    def _inputs(self, index):
        """Layer inputs and frozen logits of sample `index`: from the skip-cache after epoch 1."""
        exp0 = array("b", [0])
        self.samples.get(index, self.xs[:1], exp0)
        self.exps[0] = exp0[0]
        cache = self.cache
        row = cache.row_of[index]
        t0 = clock.ticks_us()
        if row >= 0:
            cache.hits += 1
            rest = array("b", [0] * (len(self.xs) - 1))
            ez = cache.rows.get(row, self.xs[1:], rest, self.z0)
            for j in range(len(rest)):
                self.exps[j + 1] = rest[j]
            self.us["cache"] += clock.ticks_diff(clock.ticks_us(), t0)
            return ez
        ez = self._frozen_forward(index)
        t1 = clock.ticks_us()
        self.us["frozen_forward"] += clock.ticks_diff(t1, t0)
        cache.row_of[index] = cache.rows.append(self.xs[1:], self.exps[1:], self.z0, ez)
        self.us["cache"] += clock.ticks_diff(clock.ticks_us(), t1)
        return ez

    # -- adapters ----------------------------------------------------------------------------------
    def _adapters_forward(self, ez):
        """The logits as floats for the softmax: frozen ones plus every adapter's, summed in
        integers at the coarsest of their exponents (10 conversions a sample, not 10 per adapter)."""
        nc = self.n_classes
        low = ez
        for i, ad in enumerate(self.adapters):
            for k in range(ad.rank):
                ad.hacc[k] = 0
            I.mtv(ad.qa, ad.n_in, ad.rank, self.xs[i], ad.hacc)
            ad.he = self.fa[i] + self.exps[i] - _fit(ad.hacc, ad.rank, INT12, False, ad.hq)
            for c in range(nc):
                ad.zacc[c] = 0
            I.mtv(ad.qb, ad.rank, nc, ad.hq, ad.zacc)
            low = min(low, FB + ad.he)
            self.macs["adapter_forward"] += ad.n_in * ad.rank + ad.rank * nc
        zsum = self.zsum
        for c in range(nc):
            zsum[c] = I.rshift(self.z0[c], ez - low)
        for ad in self.adapters:
            shift = FB + ad.he - low
            for c in range(nc):
                zsum[c] += I.rshift(ad.zacc[c], shift)
        z, scale = self.zf, 2.0 ** -low
        for c in range(nc):
            z[c] = zsum[c] * scale
        return z

    def _step_skip(self, index, scale):
        ez = self._inputs(index)
        t0 = clock.ticks_us()
        z = self._adapters_forward(ez)
        t1 = clock.ticks_us()
        self.us["adapter_forward"] += clock.ticks_diff(t1, t0)
        g = self.g
        loss = _softmax_grad(z, self.labels[index], scale, g)  # scale = -lr: g is the update
        eg = _quantize(g, INT12, self.gq)
        nc = self.n_classes
        for i, ad in enumerate(self.adapters):
            # gh = B g with B before its update; then B += h g^T, A += x gh^T, in B's and A's units
            for k in range(ad.rank):
                ad.ghacc[k] = 0
            I.mv(ad.qb, ad.rank, nc, self.gq, ad.ghacc)
            egh = FB + eg - _fit(ad.ghacc, ad.rank, INT12, False, ad.ghq)
            I.outer_update(ad.qb, ad.rank, nc, ad.hq, self.gq, ad.he + eg - FB)
            I.outer_update(ad.qa, ad.n_in, ad.rank, self.xs[i], ad.ghq, self.exps[i] + egh - self.fa[i])
            self.macs["backward"] += ad.n_in * ad.rank + 2 * ad.rank * nc
        self.us["backward"] += clock.ticks_diff(clock.ticks_us(), t1)
        return loss

    def logits(self, x):
        self.exps[0] = _quantize(x, INT8, self.xs[0])
        ez = self._frozen_forward(-1)
        return self._adapters_forward(ez)

