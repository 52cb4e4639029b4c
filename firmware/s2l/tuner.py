# The on-device tuner: the seven fine-tuning methods over a frozen Model, step for step the host's
# numpy reference (host/skip2lora/train/reference.py): same adapter init and sample order (XorShift32),
# per-sample forward, gradients summed over a mini-batch, then one SGD update.
import math
import struct
from array import array

from s2l import clock
from s2l import kernels as K
from s2l.rng import XorShift32
from s2l.rowstore import ENCODINGS, RowStore
from s2l.skipcache import SkipCache
from s2l.arena import ON_BOARD
from s2l.tunerbase import METHODS, SPILL_PATH, TunerBase, TunerError, softmax_top

PHASES = ("frozen_forward", "adapter_forward", "backward", "update", "cache")
# On a board (RP2040: ~190 KB free heap) samples and the skip-cache are stored compact (int8), and
# cache rows beyond this budget spill to flash; elsewhere float32, exact, with no limit.
BOARD_CACHE_BUDGET = 64 * 1024
DEFAULT_CACHE_MODE = "compact" if ON_BOARD else "float"
DEFAULT_CACHE_BUDGET = BOARD_CACHE_BUDGET if ON_BOARD else None


class Adapter:
    """A: n_in x rank, B: rank x n_out (row-major), where their gradients go, per-sample scratch."""

    def __init__(self, n_in, n_out, rank, rng, fused):
        bound = math.sqrt(6.0 / n_in)
        self.a = K.zeros(n_in * rank)
        for k in range(n_in * rank):
            self.a[k] = rng.uniform(-bound, bound)
        self.b = K.zeros(rank * n_out)
        self.ga = self.a if fused else K.zeros(n_in * rank)
        self.gb = self.b if fused else K.zeros(rank * n_out)
        self.h = K.zeros(rank)   # A^T x
        self.gh = K.zeros(rank)  # B g
        self.n_in, self.n_out, self.rank = n_in, n_out, rank


def _relu(v):
    for k in range(len(v)):
        if v[k] < 0.0:
            v[k] = 0.0


def _softmax_grad(z, label, scale, g):
    # g = scale * (softmax(z) - onehot(label)); returns the cross-entropy loss
    top = max(z)
    total = 0.0
    for c in range(len(z)):
        g[c] = math.exp(z[c] - top)
        total += g[c]
    loss = -math.log(g[label] / total + 1e-12)
    for c in range(len(z)):
        g[c] = (g[c] / total - (1.0 if c == label else 0.0)) * scale
    return loss


class Tuner(TunerBase):
    def __init__(self, model, method="skip2-lora", rank=4, lr=0.05, epochs=30, batch=1, seed=1,
                 cache_mode=DEFAULT_CACHE_MODE, cache_budget=DEFAULT_CACHE_BUDGET, spill_path=SPILL_PATH, arena=None):
        if method not in METHODS:
            raise TunerError("unknown method %r (one of %s)" % (method, ", ".join(METHODS)))
        for name, value in (("rank", rank), ("epochs", epochs), ("batch", batch)):
            if value < 1:
                raise TunerError("%s must be >= 1, got %r" % (name, value))
        self.model, self.method = model, method
        self.path = "float"
        self.rank, self.lr, self.epochs, self.batch = rank, lr, epochs, batch
        self.rng = XorShift32(seed)
        # Batch 1: the SGD step goes straight into the parameters. Backprop is linear in the output
        # gradient, so seeding it with -lr * dL/dz makes every "gradient" an update: no gradient
        # buffers (they alias the parameters) and no separate pass over them.
        self.fused = batch == 1
        dims, n = model.dims, model.n_layers
        self.n_classes = dims[-1]
        self.family = method.split("-")[0]
        # which layers carry adapters / trained float weights
        first = n - 1 if method in ("ft-last", "lora-last") else 0
        self.first = first
        self.adapters = [None] * n
        if self.family == "lora":
            for i in range(first, n):
                self.adapters[i] = Adapter(dims[i], dims[i + 1], rank, self.rng, self.fused)
        elif self.family in ("skip", "skip2"):
            for i in range(n):
                self.adapters[i] = Adapter(dims[i], dims[-1], rank, self.rng, self.fused)
            if model.adapter is not None:
                self._start_from(model.adapter)
        # FT-*: a float copy only of what is trained
        self.weights = [None] * n
        self.bias = list(model.bias)
        self.gw = [None] * n
        self.gbias = [None] * n
        if self.family == "ft":
            for i in range(first, n):
                self.bias[i] = K.zeros(dims[i + 1])
                self.bias[i][:] = model.bias[i]
                self.gbias[i] = self.bias[i] if self.fused else K.zeros(dims[i + 1])
                if method != "ft-bias":
                    self.weights[i] = model.dequantized(i)
                    self.gw[i] = self.weights[i] if self.fused else K.zeros(dims[i] * dims[i + 1])
        if cache_mode not in ENCODINGS:
            raise TunerError("unknown cache mode %r (one of %s)" % (cache_mode, ", ".join(ENCODINGS)))
        self.cache_mode = cache_mode  # also how fine-tune samples are stored
        self.cache = None
        # compact rows (a board's) are carved from the arena when there is one; float32 rows, read
        # back as float views, stay on the heap
        self.arena = arena if cache_mode == "compact" else None
        alloc = self.arena.take if self.arena else bytearray
        if method == "skip2-lora":
            self.cache = SkipCache(dims, cache_mode, cache_budget, spill_path, alloc)
        self.samples, self.labels = RowStore([dims[0]], cache_mode, alloc=alloc), bytearray()
        self.g = K.zeros(self.n_classes)
        self.macs = dict((p, 0) for p in PHASES)
        self.us = dict((p, 0) for p in PHASES)
        # the method's training step for one sample
        self._step = {"ft": self._step_ft, "lora": self._step_lora}.get(self.family, self._step_skip)
        self.order = array("H")  # an epoch's sample order
        self.kernels = K.FLAVOUR
        self.peak_alloc = clock.mem_alloc()

    def _start_from(self, adapter):
        # the model file's starting adapter (e.g. CoA-LoRA's, folded for this configuration)
        # replaces the drawn one; the draws above still happen, so the sample order is the same
        rank, a_list, b_list = adapter
        if rank != self.rank:
            raise TunerError("the model's starting adapter has rank %d, the tuner rank %d" % (rank, self.rank))
        for ad, a, b in zip(self.adapters, a_list, b_list):
            ad.a[:] = a
            ad.b[:] = b

    # -- samples ---------------------------------------------------------------------------------
    def _int8(self, src, at):
        # an int8 sample in the wire's layout (f32 scale, then the values) as floats
        scale = struct.unpack_from("<f", src, at)[0]
        x = K.zeros(self.model.dims[0])
        for k in range(len(x)):
            q = src[at + 4 + k]
            x[k] = (q - 256 if q > 127 else q) * scale
        return x

    def check_int8(self, src, at, label):
        self.check_sample(self._int8(src, at), label)

    def add_int8(self, src, at, label):
        # int8 samples carry the network's input (already normalised by the host)
        x = self._int8(src, at)
        self.check_sample(x, label)
        self._store(x, label)

    def predict_int8(self, src, at):
        return self.predict_input(self._int8(src, at))

    @property
    def n_samples(self):
        return len(self.labels)

    def sample_order(self):
        """The order array, one entry per stored sample."""
        if len(self.order) != self.n_samples:
            self.order = array("H", bytes(2 * self.n_samples))
        return self.order

    def _plan_bytes(self, n):
        # the arena n samples take: their rows, and their skip-cache rows up to the cache's budget
        return self.samples.ram_bytes_for(n) + (self.cache.rows.ram_bytes_for(n) if self.cache else 0)

    def plan(self, n, flash_free=None, fit=False):
        """Allocate for n fine-tune samples (and their skip-cache rows) now; with an arena, as many
        as it holds when `fit` (else TunerError saying how many fit); cache rows past the cache's
        RAM budget spill to flash."""
        if self.arena is not None:
            low, high = 0, n
            while low < high:  # the most samples whose rows the arena holds
                mid = (low + high + 1) // 2
                if self._plan_bytes(mid) <= self.arena.free:
                    low = mid
                else:
                    high = mid - 1
            if low < n and (not fit or low < 1):
                raise TunerError("%d fine-tune samples do not fit: %d bytes of the arena free; at most %d fit" % (
                    n, self.arena.free, low))
            n = low
        try:
            self.samples.reserve(n)
            if self.cache is not None:
                self.cache.reserve(n)
        except MemoryError as e:
            raise TunerError("no memory for %d samples (%s; %s bytes free)" % (n, e, clock.mem_free()))
        return {"samples": n}

    def add_sample(self, x, label):
        """A float sample in raw sensor units: normalised by the model's constants, if it has them."""
        self.check_sample(x, label)
        self._store(self.model.normalised(x), label)

    def _store(self, x, label):
        try:
            self.samples.append([x])
        except MemoryError:
            raise TunerError("out of memory storing sample %d" % len(self.labels))
        self.labels.append(label)

    def truncate(self, n):
        """Forget the fine-tune samples from n on (those of a frame that was refused)."""
        self.samples.n = min(self.samples.n, n)
        del self.labels[n:]

    def sample(self, index):
        return self.samples.get(index)[0]

    # -- forward passes --------------------------------------------------------------------------
    def _layer(self, i, x):
        # frozen (or FT float copy) layer i: W x + b, ReLU unless last
        out = K.zeros(len(self.bias[i]))
        out[:] = self.bias[i]
        if self.weights[i] is not None:
            K.mv(self.weights[i], self.model.dims[i + 1], self.model.dims[i], x, out)
        else:
            self.model.mv(i, x, out)
        self.macs["frozen_forward"] += self.model.dims[i] * self.model.dims[i + 1]
        return out

    def frozen_forward(self, x):
        """Layer inputs [x_0 .. x_{n-1}] and logits of the (frozen or FT) network, no adapters."""
        inputs = []
        n = self.model.n_layers
        for i in range(n):
            inputs.append(x)
            x = self._layer(i, x)
            if i < n - 1:
                _relu(x)
        return inputs, x

    def _lora_forward(self, x):
        inputs = []
        n = self.model.n_layers
        for i in range(n):
            inputs.append(x)
            t0 = clock.ticks_us()
            x = self._layer(i, x)
            t1 = clock.ticks_us()
            self.us["frozen_forward"] += clock.ticks_diff(t1, t0)
            ad = self.adapters[i]
            if ad is not None:
                self._adapter_out(ad, inputs[i], x)
                self.us["adapter_forward"] += clock.ticks_diff(clock.ticks_us(), t1)
            if i < n - 1:
                _relu(x)
        return inputs, x

    def _adapter_out(self, ad, x, out):
        # h = A^T x; out += B^T h
        for k in range(ad.rank):
            ad.h[k] = 0.0
        K.mtv(ad.a, ad.n_in, ad.rank, x, ad.h)
        K.mtv(ad.b, ad.rank, ad.n_out, ad.h, out)
        self.macs["adapter_forward"] += ad.n_in * ad.rank + ad.rank * ad.n_out

    def _reserve_cache(self):
        if self.cache is not None:
            try:
                self.cache.reserve(len(self.labels))
            except MemoryError as e:
                raise TunerError("the skip-cache for %d samples does not fit (%s); use cache mode "
                                 "compact, or a cache budget with a spill file" % (len(self.labels), e))

    def _skip_frozen(self, index):
        """Layer inputs and frozen logits of sample `index`, from the skip-cache when it has them."""
        x0 = self.sample(index)
        if self.cache is not None:
            t0 = clock.ticks_us()
            entry = self.cache.get(index, x0)
            self.us["cache"] += clock.ticks_diff(clock.ticks_us(), t0)
            if entry is not None:
                return entry
        t0 = clock.ticks_us()
        entry = self.frozen_forward(x0)
        self.us["frozen_forward"] += clock.ticks_diff(clock.ticks_us(), t0)
        if self.cache is not None:
            t0 = clock.ticks_us()
            self.cache.put(index, entry[0], entry[1])
            self.us["cache"] += clock.ticks_diff(clock.ticks_us(), t0)
        return entry

    def logits(self, x):
        """Prediction logits for one sample with the current adapters / weights."""
        if self.family == "lora":
            return self._lora_forward(x)[1]
        inputs, z = self.frozen_forward(x)
        if self.family != "ft":
            for i, ad in enumerate(self.adapters):
                self._adapter_out(ad, inputs[i], z)
        return z

    # -- training --------------------------------------------------------------------------------
    def _skip_logits(self, index):
        """Layer inputs and logits of stored sample `index`: the frozen part from the skip-cache."""
        inputs, z0 = self._skip_frozen(index)
        t0 = clock.ticks_us()
        z = K.zeros(self.n_classes)
        for c in range(self.n_classes):  # z0 may be a view of the cache: copy, never write into it
            z[c] = z0[c]
        for i, ad in enumerate(self.adapters):
            self._adapter_out(ad, inputs[i], z)
        self.us["adapter_forward"] += clock.ticks_diff(clock.ticks_us(), t0)
        return inputs, z

    def _step_skip(self, index, scale):
        inputs, z = self._skip_logits(index)
        t1 = clock.ticks_us()
        loss = _softmax_grad(z, self.labels[index], scale, self.g)
        for i, ad in enumerate(self.adapters):
            self._adapter_backward(ad, inputs[i], self.g)
        self.us["backward"] += clock.ticks_diff(clock.ticks_us(), t1)
        return loss

    def _adapter_backward(self, ad, x, g, gx=None):
        # gh = B g; gx += A gh (LoRA: into the layer below); then gB += h g^T, gA += x gh^T.
        # A and B are read before they take their gradients, which may be their update (fused).
        for k in range(ad.rank):
            ad.gh[k] = 0.0
        K.mv(ad.b, ad.rank, ad.n_out, g, ad.gh)
        if gx is not None:
            K.mv(ad.a, ad.n_in, ad.rank, ad.gh, gx)
            self.macs["backward"] += ad.rank * ad.n_in
        K.outer_add(ad.gb, ad.rank, ad.n_out, ad.h, g)
        K.outer_add(ad.ga, ad.n_in, ad.rank, x, ad.gh)
        self.macs["backward"] += ad.n_in * ad.rank + 2 * ad.rank * ad.n_out

    def _step_lora(self, index, scale):
        inputs, z = self._lora_forward(self.sample(index))
        t0 = clock.ticks_us()
        loss = _softmax_grad(z, self.labels[index], scale, self.g)
        g, dims = self.g, self.model.dims
        for i in range(self.model.n_layers - 1, self.first - 1, -1):
            ad = self.adapters[i]
            if i > self.first:
                gx = K.zeros(dims[i])
                self.model.mtv(i, g, gx)
                self.macs["backward"] += dims[i] * dims[i + 1]
                self._adapter_backward(ad, inputs[i], g, gx)
                g = self._relu_grad(gx, inputs[i])
            else:
                self._adapter_backward(ad, inputs[i], g)
        self.us["backward"] += clock.ticks_diff(clock.ticks_us(), t0)
        return loss

    @staticmethod
    def _relu_grad(gx, x):
        for k in range(len(gx)):
            if x[k] <= 0.0:
                gx[k] = 0.0
        return gx

    def _step_ft(self, index, scale):
        t0 = clock.ticks_us()
        inputs, z = self.frozen_forward(self.sample(index))
        t1 = clock.ticks_us()
        self.us["frozen_forward"] += clock.ticks_diff(t1, t0)
        loss = _softmax_grad(z, self.labels[index], scale, self.g)
        g, dims = self.g, self.model.dims
        for i in range(self.model.n_layers - 1, self.first - 1, -1):
            gx = None
            if i > self.first:  # through W before W takes its gradient (its update, when fused)
                gx = K.zeros(dims[i])
                if self.weights[i] is not None:
                    K.mtv(self.weights[i], dims[i + 1], dims[i], g, gx)
                else:
                    self.model.mtv(i, g, gx)
                self.macs["backward"] += dims[i] * dims[i + 1]
            if self.gw[i] is not None:
                K.outer_add(self.gw[i], dims[i + 1], dims[i], g, inputs[i])
                self.macs["backward"] += dims[i] * dims[i + 1]
            gb = self.gbias[i]
            for k in range(len(gb)):
                gb[k] += g[k]
            if gx is not None:
                g = self._relu_grad(gx, inputs[i])
        self.us["backward"] += clock.ticks_diff(clock.ticks_us(), t1)
        return loss

    def _update(self):
        # the mini-batch's summed gradients, unfused (fused, each step applied its own)
        t0 = clock.ticks_us()
        for ad in self.adapters:
            if ad is not None:
                K.sub_scaled(ad.a, ad.ga, self.lr)
                K.sub_scaled(ad.b, ad.gb, self.lr)
        for i in range(self.model.n_layers):
            if self.gw[i] is not None:
                K.sub_scaled(self.weights[i], self.gw[i], self.lr)
            if self.gbias[i] is not None:
                K.sub_scaled(self.bias[i], self.gbias[i], self.lr)
        self.us["update"] += clock.ticks_diff(clock.ticks_us(), t0)

    def epoch_order(self, count):
        order = super().epoch_order(count)
        self._reserve_cache()  # and room in the skip-cache for every stored sample
        return order

    def train(self, order, start, end):
        """Train the mini-batch order[start:end] (the epoch loop's step, tunerbase.py); its summed loss."""
        scale = -self.lr if self.fused else 1.0 / (end - start)
        total = 0.0
        for k in range(start, end):
            total += self._step(order[k], scale)
        if not self.fused:
            self._update()
        return total

    def set_lr(self, lr):
        self.lr = lr

    def predict(self, x):
        """The class of a raw reading (float sensor units, as add_sample takes them)."""
        return self.predict_input(self.model.normalised(x))

    def predict_logits(self, x):
        """The logits of a raw reading (what predict's argmax picks from)."""
        return self.logits(self.model.normalised(x))

    def predict_input(self, x):
        # x: the network's input (normalised), e.g. a stored sample
        return softmax_top(self.logits(x))[0]

    def predict_stored(self, index):
        """The prediction for stored sample `index` (a validation sample)."""
        return softmax_top(self.stored_logits(index))[0]

    def stored_logits(self, index):
        """The logits of stored sample `index`; Skip2-LoRA's from the skip-cache."""
        if self.family != "skip2":
            return self.logits(self.sample(index))
        self._reserve_cache()
        return self._skip_logits(index)[1]
