import numpy as np
import pytest

from skip2lora.train import reference as R
from skip2lora.train.pretrain import init_network

DIMS = [6, 5, 4, 3]


def problem(n=24, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, DIMS[0])).astype(np.float32)
    y = rng.integers(0, DIMS[-1], n)
    return init_network(DIMS, seed=1), X, y


def trainable(tuner):
    """The arrays each method may change, in a stable order."""
    if isinstance(tuner, R.FineTune):
        method = tuner.cfg.method
        layers = range(len(tuner.net.W))
        if method == "ft-last":
            layers = [layers[-1]]
        params = [tuner.net.b[i] for i in layers]
        if method != "ft-bias":
            params += [tuner.net.W[i] for i in layers]
        return params
    return [p for pair in tuner.adapters if pair is not None for p in pair]


def in_float64(tuner):
    """Finite differences need double precision; the method's code is dtype-agnostic."""
    tuner.net.W = [w.astype(np.float64) for w in tuner.net.W]
    tuner.net.b = [b.astype(np.float64) for b in tuner.net.b]
    if hasattr(tuner, "adapters"):
        tuner.adapters = [pair and [p.astype(np.float64) for p in pair] for pair in tuner.adapters]
    return tuner


def loss(tuner, X, y):
    z = tuner.logits(X).astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean()


@pytest.mark.parametrize("method", R.METHODS)
def test_one_sgd_step_follows_the_numerical_gradient(method):
    net, X, y = problem()
    tuner = in_float64(R.make_tuner(net, R.Config(method, rank=2, lr=1.0, epochs=1, batch=len(X))))
    X = X.astype(np.float64)
    rng = np.random.default_rng(2)
    for p in trainable(tuner):  # nonzero B so that every adapter gets a gradient
        p[...] = rng.normal(scale=0.3, size=p.shape)
    before = [p.copy() for p in trainable(tuner)]
    tuner.step(X, y, list(range(len(X))))
    analytic = [b - p for b, p in zip(before, trainable(tuner))]
    for p, b in zip(trainable(tuner), before):
        p[...] = b
    eps = 1e-6
    for p, grad in zip(trainable(tuner), analytic):
        for k in rng.choice(p.size, size=min(6, p.size), replace=False):
            idx = np.unravel_index(k, p.shape)
            keep = p[idx]
            p[idx] = keep + eps
            up = loss(tuner, X, y)
            p[idx] = keep - eps
            down = loss(tuner, X, y)
            p[idx] = keep
            assert grad[idx] == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("method", R.METHODS)
def test_untrained_parameters_stay_frozen(method):
    net, X, y = problem()
    tuner = R.make_tuner(net, R.Config(method, rank=2, lr=0.1, epochs=2, batch=4))
    tuner.fit(X, y)
    changed = [not np.array_equal(a, b) for a, b in zip(tuner.net.W + tuner.net.b, net.W + net.b)]
    n = len(net.W)
    expected = {"ft-all": [True] * 2 * n, "ft-last": [False] * (n - 1) + [True] + [False] * (n - 1) + [True],
                "ft-bias": [False] * n + [True] * n}.get(method, [False] * 2 * n)
    assert changed == expected


def test_skip2_lora_gives_exactly_the_weights_of_skip_lora():
    net, X, y = problem(n=30)
    results = {}
    for method in ("skip-lora", "skip2-lora"):
        results[method] = R.make_tuner(net, R.Config(method, rank=3, lr=0.2, epochs=4, batch=4)).fit(X, y)
    skip, skip2 = results["skip-lora"], results["skip2-lora"]
    for (a1, b1), (a2, b2) in zip(skip.adapters, skip2.adapters):
        assert np.array_equal(a1, a2) and np.array_equal(b1, b2)
    assert np.any(skip.adapters[0][1] != 0)  # it did train
    assert skip2.cache_hits == len(X) * 3 and skip.cache_hits == 0
    assert skip2.cache_bytes == len(X) * 4 * (sum(DIMS[:-1]) + DIMS[-1])


def test_mac_counts_per_phase():
    net, X, y = problem(n=10)
    frozen = sum(a * b for a, b in zip(DIMS[:-1], DIMS[1:]))
    r, epochs, n = 2, 3, len(X)
    macs = {m: R.make_tuner(net, R.Config(m, rank=r, epochs=epochs, batch=5)).fit(X, y).meter.macs
            for m in ("skip-lora", "skip2-lora", "lora-all")}
    assert macs["skip-lora"]["frozen_forward"] == epochs * n * frozen
    assert macs["skip2-lora"]["frozen_forward"] == n * frozen  # the cache skips later epochs
    adapter = sum(d * r + r * DIMS[-1] for d in DIMS[:-1])  # A^T x, then B^T h
    assert macs["skip2-lora"]["adapter_forward"] == epochs * n * adapter
    backward = sum(d * r + 2 * r * DIMS[-1] for d in DIMS[:-1])  # B g, x (B g)^T, h g^T
    assert macs["skip2-lora"]["backward"] == macs["skip-lora"]["backward"] == epochs * n * backward
    assert macs["lora-all"]["frozen_forward"] == epochs * n * frozen
    # LoRA-All's backward also crosses the frozen layers (all but the first)
    assert macs["lora-all"]["backward"] > epochs * n * (frozen - DIMS[0] * DIMS[1])


def test_same_seed_same_result_and_other_seed_differs():
    net, X, y = problem()
    run = lambda seed: R.make_tuner(net, R.Config("lora-all", seed=seed, epochs=2)).fit(X, y).adapters[0][0]
    assert np.array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="unknown method"):
        R.Config("lora-middle")
    with pytest.raises(ValueError, match="rank"):
        R.Config("skip2-lora", rank=0)
