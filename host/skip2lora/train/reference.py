"""numpy reference of the seven fine-tuning methods compared in the Skip2-LoRA paper.

The network is a stack of fully-connected layers, y_i = W_i x_i + b_i, ReLU between layers and a
softmax cross-entropy head on the logits z. Training is plain mini-batch SGD on the mean loss.

    FT-All     train every W_i, b_i
    FT-Last    train the last layer's W, b
    FT-Bias    train every b_i
    LoRA-All   y_i = W_i x_i + b_i + B_i^T A_i^T x_i on every layer     (A_i: in_i x r, B_i: r x out_i)
    LoRA-Last  the same on the last layer only
    Skip-LoRA  z = f(x) + sum_i B_i^T A_i^T x_i   (A_i: in_i x r, B_i: r x n_out): every layer's
               input goes straight to the logits; W, b frozen, backward touches adapters only
    Skip2-LoRA Skip-LoRA plus the skip-cache: epoch 1 stores each sample's layer inputs x_i and
               frozen logits f(x); later epochs read them and skip the frozen forward pass

Only adapters are trained by the LoRA methods (no bias). A_i is drawn He-uniform, uniform(-sqrt(6/in_i),
sqrt(6/in_i)), and B_i starts at zero, so every method starts from the pretrained function (with
B = 0 the first updates go to B, whose gradient grows with the spread of A^T x).
Randomness comes from s2l.rng.XorShift32(seed), the board's own PRNG, in a fixed order: adapter
A matrices layer by layer (row-major), then one shuffle of the sample order per epoch. The board
therefore sees the same initial adapters and the same sample order as this reference.

For Skip-LoRA and Skip2-LoRA the frozen forward runs one sample at a time, so a cached value is
bit-for-bit the value Skip-LoRA recomputes: the cache changes cost, never results.
"""
import contextlib
import time
from dataclasses import dataclass

import numpy as np

from s2l.rng import XorShift32

METHODS = ("ft-all", "ft-last", "ft-bias", "lora-all", "lora-last", "skip-lora", "skip2-lora")
PHASES = ("frozen_forward", "adapter_forward", "backward", "update")


@dataclass
class Config:
    method: str = "skip2-lora"
    rank: int = 4
    lr: float = 0.05
    epochs: int = 30
    batch: int = 1
    seed: int = 1

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError("unknown method %r (one of %s)" % (self.method, ", ".join(METHODS)))
        for name in ("rank", "epochs", "batch"):
            if getattr(self, name) < 1:
                raise ValueError("%s must be >= 1" % name)


class Meter:
    """Multiply-accumulates and seconds per phase."""

    def __init__(self):
        self.macs = dict.fromkeys(PHASES, 0)
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.phase = None

    def mm(self, a, b):
        self.macs[self.phase] += a.shape[0] * a.shape[1] * b.shape[-1]
        return a @ b

    @contextlib.contextmanager
    def timed(self, phase):
        self.phase, t0 = phase, time.perf_counter()
        yield
        self.seconds[phase] += time.perf_counter() - t0


class NullMeter:
    """Stands in for a Meter where nothing is measured (evaluation)."""

    @staticmethod
    def mm(a, b):
        return a @ b

    @staticmethod
    def timed(phase):
        return contextlib.nullcontext()


NULL_METER = NullMeter()


def relu(x):
    return np.maximum(x, 0)


def softmax_grad(z, y):
    """d(mean cross-entropy)/dz and the mean loss, for logits z [B, C] and integer labels y [B]."""
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
    p[np.arange(len(y)), y] -= 1
    return p / len(y), float(loss)


class Network:
    """Weights [(W [out, in], b [out]), ...]: float32 as on a board, or float64 for pretraining."""

    def __init__(self, weights, dtype=np.float32):
        weights = list(weights)
        self.W = [np.array(w, dtype) for w, _ in weights]
        self.b = [np.array(b, dtype) for _, b in weights]

    @property
    def dims(self):
        return [self.W[0].shape[1]] + [w.shape[0] for w in self.W]

    def forward(self, x, meter=NULL_METER):
        """Layer inputs [x_0 .. x_{n-1}] and logits for a batch x [B, in]."""
        mm = meter.mm
        inputs = []
        for i, (w, b) in enumerate(zip(self.W, self.b)):
            inputs.append(x)
            x = mm(x, w.T) + b
            if i < len(self.W) - 1:
                x = relu(x)
        return inputs, x


def _init_adapters(rng, shapes):
    adapters = []
    for n_in, n_out, rank in shapes:
        bound = np.sqrt(6.0 / n_in)
        a = np.array([rng.uniform(-bound, bound) for _ in range(n_in * rank)], np.float32)
        adapters.append([a.reshape(n_in, rank), np.zeros((rank, n_out), np.float32)])
    return adapters


class Tuner:
    """Fine-tunes a copy of `net` with one method; `fit` runs the epochs, `logits` predicts."""

    def __init__(self, net, config):
        self.cfg = config
        self.net = Network(zip(net.W, net.b), net.W[0].dtype)  # own copy: FT methods change it
        self.rng = XorShift32(config.seed)
        self.meter = Meter()
        self.losses = []

    def fit(self, X, y, on_epoch=None):
        for epoch in range(self.cfg.epochs):
            order = list(range(len(X)))  # each epoch shuffles 0..n-1 afresh, as the board does
            self.rng.shuffle(order)
            total = 0.0
            for start in range(0, len(order), self.cfg.batch):
                idx = order[start:start + self.cfg.batch]
                total += self.step(X, y, idx) * len(idx)
            self.losses.append(total / len(order))
            if on_epoch:
                on_epoch(epoch, self.losses[-1])
        return self

    def accuracy(self, X, y):
        return float((self.logits(X).argmax(axis=1) == y).mean())

    def sgd(self, params, grads):
        with self.meter.timed("update"):
            for p, g in zip(params, grads):
                p -= self.cfg.lr * g


class FineTune(Tuner):
    """FT-All, FT-Last, FT-Bias: backpropagation into the network's own weights."""

    def logits(self, X):
        return self.net.forward(X)[1]

    def step(self, X, y, idx):
        net, m, last = self.net, self.meter, len(self.net.W) - 1
        with m.timed("frozen_forward"):
            inputs, z = net.forward(X[idx], m)
        g, loss = softmax_grad(z, y[idx])
        first = last if self.cfg.method == "ft-last" else 0
        params, grads = [], []
        with m.timed("backward"):
            for i in range(last, first - 1, -1):
                if self.cfg.method != "ft-bias":
                    params.append(net.W[i])
                    grads.append(m.mm(g.T, inputs[i]))
                params.append(net.b[i])
                grads.append(g.sum(axis=0))
                if i > first:
                    g = m.mm(g, net.W[i]) * (inputs[i] > 0)
        self.sgd(params, grads)
        return loss


class LoRA(Tuner):
    """LoRA-All, LoRA-Last: y_i = W_i x_i + b_i + B_i^T A_i^T x_i, backward through the layers."""

    def __init__(self, net, config):
        super().__init__(net, config)
        dims, n = self.net.dims, len(self.net.W)
        self.first = n - 1 if config.method == "lora-last" else 0
        shapes = [(dims[i], dims[i + 1], config.rank) for i in range(self.first, n)]
        self.adapters = [None] * self.first + _init_adapters(self.rng, shapes)

    def _forward(self, x, m):
        """Returns layer inputs, adapter hidden values h_i = A_i^T x_i, logits."""
        inputs, hidden = [], []
        for i, (w, b) in enumerate(zip(self.net.W, self.net.b)):
            inputs.append(x)
            with m.timed("frozen_forward"):
                x = m.mm(x, w.T) + b
            if self.adapters[i] is not None:
                a, bb = self.adapters[i]
                with m.timed("adapter_forward"):
                    h = m.mm(inputs[i], a)
                    x = x + m.mm(h, bb)
                hidden.append(h)
            else:
                hidden.append(None)
            if i < len(self.net.W) - 1:
                x = relu(x)
        return inputs, hidden, x

    def logits(self, X):
        return self._forward(X, NULL_METER)[2]

    def step(self, X, y, idx):
        m, last = self.meter, len(self.net.W) - 1
        inputs, hidden, z = self._forward(X[idx], m)
        g, loss = softmax_grad(z, y[idx])
        params, grads = [], []
        with m.timed("backward"):
            for i in range(last, self.first - 1, -1):
                a, bb = self.adapters[i]
                gh = m.mm(g, bb.T)
                params += [a, bb]
                grads += [m.mm(inputs[i].T, gh), m.mm(hidden[i].T, g)]
                if i > self.first:
                    g = (m.mm(g, self.net.W[i]) + m.mm(gh, a.T)) * (inputs[i] > 0)
        self.sgd(params, grads)
        return loss


class SkipLoRA(Tuner):
    """Skip-LoRA and Skip2-LoRA: z = f(x) + sum_i B_i^T A_i^T x_i, the frozen network untouched."""

    def __init__(self, net, config):
        super().__init__(net, config)
        dims = self.net.dims
        shapes = [(dims[i], dims[-1], config.rank) for i in range(len(self.net.W))]
        self.adapters = _init_adapters(self.rng, shapes)
        self.cache = {} if config.method == "skip2-lora" else None
        self.cache_hits = 0

    def _frozen(self, X, i):
        """Layer inputs and frozen logits of sample i, from the skip-cache when there is one."""
        if self.cache is not None and i in self.cache:
            self.cache_hits += 1
            return self.cache[i]
        with self.meter.timed("frozen_forward"):
            entry = self.net.forward(X[i:i + 1], self.meter)
        if self.cache is not None:
            self.cache[i] = entry
        return entry

    @property
    def cache_bytes(self):
        return sum(sum(x.nbytes for x in xs) + z.nbytes for xs, z in (self.cache or {}).values())

    def _adapter_logits(self, inputs, z, m):
        hidden = [m.mm(x, a) for x, (a, _) in zip(inputs, self.adapters)]
        for h, (_, bb) in zip(hidden, self.adapters):
            z = z + m.mm(h, bb)
        return hidden, z

    def logits(self, X):
        inputs, z = self.net.forward(X)
        return self._adapter_logits(inputs, z, NULL_METER)[1]

    def step(self, X, y, idx):
        m = self.meter
        entries = [self._frozen(X, i) for i in idx]
        inputs = [np.concatenate([e[0][k] for e in entries]) for k in range(len(self.adapters))]
        z0 = np.concatenate([e[1] for e in entries])
        with m.timed("adapter_forward"):
            hidden, z = self._adapter_logits(inputs, z0, m)
        g, loss = softmax_grad(z, y[idx])
        params, grads = [], []
        with m.timed("backward"):
            for x, h, (a, bb) in zip(inputs, hidden, self.adapters):
                params += [a, bb]
                grads += [m.mm(x.T, m.mm(g, bb.T)), m.mm(h.T, g)]
        self.sgd(params, grads)
        return loss


def make_tuner(net, config):
    family = {"ft": FineTune, "lora": LoRA, "skip": SkipLoRA, "skip2": SkipLoRA}
    return family[config.method.split("-")[0]](net, config)


def run(net, config, train, test, on_epoch=None, curve=False):
    """Fine-tune with one method; return its accuracy, seconds, MACs and losses as a dict. With
    `curve`, also the test accuracy after each epoch (its evaluation time is not counted)."""
    tuner = make_tuner(net, config)
    accuracies, evaluating = [], [0.0]

    def epoch_done(epoch, loss):
        if curve:
            t = time.perf_counter()
            accuracies.append(tuner.accuracy(*test))
            evaluating[0] += time.perf_counter() - t
        if on_epoch:
            on_epoch(epoch, loss)
    t0 = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported, not warned about
        tuner.fit(*train, on_epoch=epoch_done)
        seconds = time.perf_counter() - t0 - evaluating[0]
        accuracy = tuner.accuracy(*test)
    result = {
        "method": config.method, "rank": config.rank, "lr": config.lr, "epochs": config.epochs,
        "batch": config.batch, "seed": config.seed,
        "accuracy": accuracy, "finetune_seconds": seconds,
        "diverged": not np.isfinite(tuner.losses[-1]),
        "macs": dict(tuner.meter.macs), "phase_seconds": dict(tuner.meter.seconds),
        "losses": tuner.losses,
    }
    if curve:
        result["accuracy_per_epoch"] = accuracies
    if isinstance(tuner, SkipLoRA) and tuner.cache is not None:
        result.update(cache_hits=tuner.cache_hits, cache_bytes=tuner.cache_bytes)
    return result, tuner
