"""CoA-LoRA (Ye, Tang, Ngai, "Configuration-Aware LoRA", arXiv 2509.25214) on this project's
Skip-LoRA adapters, in numpy.

For a quantization configuration c = ((b_1, g_1), .., (b_n, g_n)) of an n-layer network and skip
adapter i (A_i: in_i x r, B_i: r x C, shared by every configuration):

    u_i(c) = [e_bits(b_1); e_gran(g_1); ..; e_bits(b_n); e_gran(g_n); e_pos(i)]   (8 values each)
    M_i(c) = W_2^T SiLU(W_1^T LN(u_i(c)) + c_1) + c_2                            (read as r x r)
    z      = f_c(x) + sum_i B_i^T (s M_i(c) + I) A_i^T x_i

f_c is the frozen network quantized under c and x_i its layer inputs. This is the paper's
update B (s M(c) + I) A x written in Skip-LoRA's transposed convention. Each adapter sees the
whole configuration (quantizing layer 0 changes what reaches every later layer and the logits)
and its own position. LN has no gain or bias: W_1 right after it absorbs them. W_2 and c_2 start
at zero, so training starts from M = 0: one shared Skip-LoRA adapter.

A, B and the configuration model are trained together by Adam on the source domain: each step
draws a configuration from the training set and a mini-batch, runs the frozen network quantized
under that configuration, and steps on the cross-entropy against the float network's output
distribution (distillation: what quantization took is what the adapter gives back). Gradients are
written by hand (checked against finite differences in tests/host/coa/test_model.py). For a configuration c the board gets the
folded adapter A_i' = A_i (s M_i(c) + I)^T, B_i' = B_i (rebalanced, see CoA.adapter): plain
Skip-LoRA, so the board's tuner and model format need nothing new.
"""
import time

import numpy as np

from ..train import reference
from ..train.quantconfig import BITS, GRANULARITIES, QuantConfig, quantized_network

EMBED = 8
LN_EPS = 1e-5


def _silu_parts(p):
    sig = 1.0 / (1.0 + np.exp(-p))
    return p * sig, sig


def softmax(z):
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def soft_cross_entropy_grad(z, target):
    """d(mean cross-entropy against the distributions `target` [B, C])/dz and the mean loss."""
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # exact, even where p underflows
    return (np.exp(log_p) - target) / len(z), float(-(target * log_p).sum(axis=1).mean())


class Adam:
    def __init__(self, params, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        self.params, self.lr, self.b1, self.b2, self.eps = params, lr, beta1, beta2, eps
        self.m = dict((k, np.zeros_like(v)) for k, v in params.items())
        self.v = dict((k, np.zeros_like(v)) for k, v in params.items())
        self.t = 0

    def step(self, grads):
        self.t += 1
        for k, g in grads.items():
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            m_hat = self.m[k] / (1 - self.b1 ** self.t)
            v_hat = self.v[k] / (1 - self.b2 ** self.t)
            self.params[k] -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


class CoA:
    """Shared Skip-LoRA adapters plus, when `configured`, the configuration model M(c).
    configured=False is the per-configuration baseline: a plain Skip-LoRA adapter (M = 0)."""

    def __init__(self, dims, rank=4, hidden=32, scale=1.0, seed=0, configured=True, gains=False):
        rng = np.random.default_rng(seed)
        self.dims, self.rank, self.hidden, self.scale, self.configured = list(dims), rank, hidden, scale, configured
        self.gains = gains and configured
        n = self.n_layers
        p = {}
        for i in range(n):
            bound = np.sqrt(6.0 / dims[i])  # the board's He-uniform A, zero B
            p["a%d" % i] = rng.uniform(-bound, bound, (dims[i], rank))
            p["b%d" % i] = np.zeros((rank, dims[-1]))
        if configured:
            width = 2 * EMBED * n + EMBED
            p["e_bits"] = rng.normal(0, 1, (len(BITS), EMBED))
            p["e_gran"] = rng.normal(0, 1, (len(GRANULARITIES), EMBED))
            p["e_pos"] = rng.normal(0, 1, (n, EMBED))
            p["w1"] = rng.normal(0, 1 / np.sqrt(width), (width, hidden))
            p["c1"] = np.zeros(hidden)
            p["w2"] = np.zeros((hidden, self._head))
            p["c2"] = np.zeros(self._head)
        self.params = p

    @property
    def n_layers(self):
        return len(self.dims) - 1

    @property
    def _head(self):
        """The configuration model's outputs per adapter: M_i, and the gains g_i when asked for."""
        return self.rank * self.rank + (self.dims[-1] if self.gains else 0)

    # -- the configuration model ----------------------------------------------------------------
    def _config_forward(self, config):
        """T_i = s M_i(c) + I for every adapter, [n, r, r], the gains G_i = s g_i(c) + 1 on each
        adapter's outputs, [n, C] (ones unless `gains`), and what the backward pass needs."""
        n, r = self.n_layers, self.rank
        if not self.configured:
            return np.broadcast_to(np.eye(r), (n, r, r)), np.ones((n, self.dims[-1])), None
        p = self.params
        kb = [BITS.index(b) for b in config.bits]
        kg = [GRANULARITIES.index(g) for g in config.granularity]
        shared = np.concatenate([np.concatenate([p["e_bits"][b], p["e_gran"][g]]) for b, g in zip(kb, kg)])
        u = np.concatenate([np.tile(shared, (n, 1)), p["e_pos"]], axis=1)
        inv = 1.0 / np.sqrt(u.var(axis=1, keepdims=True) + LN_EPS)
        u_hat = (u - u.mean(axis=1, keepdims=True)) * inv
        pre = u_hat @ p["w1"] + p["c1"]
        act, sig = _silu_parts(pre)
        out = act @ p["w2"] + p["c2"]
        m = out[:, :r * r].reshape(n, r, r)
        gain = 1 + self.scale * out[:, r * r:] if self.gains else np.ones((n, self.dims[-1]))
        return self.scale * m + np.eye(r), gain, (kb, kg, u_hat, inv, pre, sig, act)

    def _config_backward(self, cache, d_t, d_gain, grads):
        kb, kg, u_hat, inv, pre, sig, act = cache
        p, n = self.params, self.n_layers
        d_m = self.scale * (np.concatenate([d_t.reshape(n, -1), d_gain], axis=1) if self.gains else d_t.reshape(n, -1))
        grads["w2"] = act.T @ d_m
        grads["c2"] = d_m.sum(axis=0)
        d_pre = (d_m @ p["w2"].T) * sig * (1 + pre * (1 - sig))
        grads["w1"] = u_hat.T @ d_pre
        grads["c1"] = d_pre.sum(axis=0)
        d_hat = d_pre @ p["w1"].T
        d_u = inv * (d_hat - d_hat.mean(axis=1, keepdims=True) - u_hat * (d_hat * u_hat).mean(axis=1, keepdims=True))
        grads["e_pos"] = d_u[:, 2 * EMBED * n:].copy()
        d_shared = d_u[:, :2 * EMBED * n].sum(axis=0)
        grads["e_bits"] = np.zeros_like(p["e_bits"])
        grads["e_gran"] = np.zeros_like(p["e_gran"])
        for j, (b, g) in enumerate(zip(kb, kg)):
            grads["e_bits"][b] += d_shared[2 * EMBED * j:2 * EMBED * j + EMBED]
            grads["e_gran"][g] += d_shared[2 * EMBED * j + EMBED:2 * EMBED * (j + 1)]

    # -- adapters ---------------------------------------------------------------------------------
    def loss_and_grads(self, config, inputs, z0, target, temperature=1.0):
        """Mean cross-entropy of softmax(z / temperature), z = z0 + sum_i B_i^T T_i A_i^T x_i,
        against the distributions `target` [B, C] on a batch, times temperature^2 (Hinton's
        distillation), and its gradients."""
        p, n = self.params, self.n_layers
        t, gain, cache = self._config_forward(config)
        h = [x @ p["a%d" % i] for i, x in enumerate(inputs)]  # A_i^T x_i, batch rows
        h2 = [hi @ t[i].T for i, hi in enumerate(h)]          # T_i A_i^T x_i
        h3 = [hi @ p["b%d" % i] for i, hi in enumerate(h2)]   # B_i^T T_i A_i^T x_i
        z = z0 + sum(hi * gain[i] for i, hi in enumerate(h3))
        g, loss = soft_cross_entropy_grad(z / temperature, target)
        g, loss = g * temperature, loss * temperature ** 2
        grads, d_t, d_gain = {}, np.zeros_like(t), np.zeros_like(gain)
        for i in range(n):
            d_h3 = g * gain[i]
            d_h2 = d_h3 @ p["b%d" % i].T
            grads["b%d" % i] = h2[i].T @ d_h3
            d_t[i] = d_h2.T @ h[i]
            d_gain[i] = (g * h3[i]).sum(axis=0)
            grads["a%d" % i] = inputs[i].T @ (d_h2 @ t[i])
        if cache is not None:
            self._config_backward(cache, d_t, d_gain, grads)
        return loss, grads

    def adapter(self, config):
        """The folded Skip-LoRA adapter for `config`: A_i' = A_i T_i^T D_i, B_i' = D_i^-1 B_i
        (float32). D_i is diagonal and balances the factors: column j of A_i' and row j of B_i'
        get equal norms. The product, hence the logits, is unchanged, and the board's SGD steps on
        A and B (each proportional to the other factor) stay in proportion, as in a factorisation
        SGD grew from a small start (measured on the 2-bit-heavy on-device configuration: with
        A_i' at the RMS of the board's own He draw, 0.18, B_0' had an RMS of 5.0, the first
        epoch's loss was 8.5-9.2 and fine-tuning from CoA fell behind the zero start; balanced,
        the first epoch's loss is 0.9-1.2)."""
        t, gain, _ = self._config_forward(config)
        a_list, b_list = [], []
        for i in range(self.n_layers):
            a = self.params["a%d" % i] @ t[i].T
            b = self.params["b%d" % i] * gain[i]
            norm_a, norm_b = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=1)
            d = np.where((norm_a > 0) & (norm_b > 0), np.sqrt(norm_b / np.where(norm_a > 0, norm_a, 1)), 1.0)
            a_list.append((a * d).astype(np.float32))
            b_list.append((b / d[:, None]).astype(np.float32))
        return a_list, b_list

    # -- training ---------------------------------------------------------------------------------
    def fit(self, net, configs, X, steps, batch=64, lr=5e-3, per_step=1, seed=0, weights=None, temperature=1.0,
            on_step=None):
        """Adam on the source domain X, `per_step` configurations drawn from `configs` each step
        (their gradients averaged), lr on a cosine schedule to zero. The target is the float
        network's own output distribution: the adapter learns to give back what quantization took
        (measured: on the hard labels of the pretraining set, which the float network already fits,
        longer training overfits and held-out accuracy falls below the no-adapter network's).
        `weights`: how often each configuration is drawn (default: equally often); `temperature`
        softens both distributions (default 1: none). Returns the
        seconds it took. net: the float reference.Network; the frozen network per configuration is
        its quantized copy."""
        rng = np.random.default_rng(seed)
        draw = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
        target = softmax(net.forward(X)[1] / temperature)
        frozen = {}
        opt = Adam(self.params, lr)
        t0 = time.perf_counter()
        for step in range(steps):
            opt.lr = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
            total = {}
            for _ in range(per_step):
                config = configs[rng.integers(len(configs)) if draw is None else rng.choice(len(configs), p=draw)]
                if config not in frozen:
                    frozen[config] = quantized_network(net, config)
                idx = rng.choice(len(X), min(batch, len(X)), replace=False)
                inputs, z0 = frozen[config].forward(X[idx])
                loss, grads = self.loss_and_grads(config, inputs, z0, target[idx], temperature)
                for k, g in grads.items():
                    total[k] = total.get(k, 0) + g / per_step
            opt.step(total)
            if on_step:
                on_step(step, loss)
        return time.perf_counter() - t0

    def logits(self, qnet, config, X, with_adapter=True):
        inputs, z = qnet.forward(X)
        if with_adapter:
            a_list, b_list = self.adapter(config)
            z = z + sum((x @ a) @ b for x, a, b in zip(inputs, a_list, b_list))
        return z

    # -- saving -----------------------------------------------------------------------------------
    def as_json(self):
        return {"dims": self.dims, "rank": self.rank, "hidden": self.hidden, "scale": self.scale,
                "configured": self.configured, "gains": self.gains, "params": dict((k, v.tolist()) for k, v in self.params.items())}

    @classmethod
    def from_json(cls, data):
        coa = cls(data["dims"], data["rank"], data["hidden"], data["scale"], configured=data["configured"],
                  gains=data.get("gains", False))
        if set(data["params"]) != set(coa.params):
            raise ValueError("CoA parameters %s do not match the model's %s" % (sorted(data["params"]), sorted(coa.params)))
        for k in coa.params:
            coa.params[k] = np.array(data["params"][k], np.float64).reshape(coa.params[k].shape)
        return coa


def damage(net, config, X, coa=None):
    """Mean KL divergence of the network quantized under `config` (with the CoA adapter if given)
    from the float network on X: what quantization loses, and what the adapter wins back."""
    target = softmax(net.forward(X)[1])
    qnet = quantized_network(net, config)
    z = coa.logits(qnet, config, X) if coa is not None else qnet.forward(X)[1]
    return float(soft_cross_entropy_grad(z, target)[1] + (target * np.log(target + 1e-12)).sum(axis=1).mean())


def evaluate(net, config, X, y, coa=None):
    """(loss, accuracy) of the network quantized under `config`, with the CoA adapter if given."""
    qnet = quantized_network(net, config)
    z = coa.logits(qnet, config, X) if coa is not None else qnet.forward(X)[1]
    _, loss = reference.softmax_grad(z, y)
    return loss, float((z.argmax(axis=1) == y).mean())


__all__ = ["CoA", "QuantConfig", "damage", "evaluate"]
