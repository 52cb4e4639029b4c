"""The Pareto configuration search: front bookkeeping, the surrogate, and that the search finds,
on a problem whose whole space can be enumerated, the best loss within a byte budget."""
import numpy as np

from s2l import modelfile as fmt
from skip2lora.coa.pareto import Surrogate, front_per_bin, neighbours, non_dominated, search
from skip2lora.train.quantconfig import BITS, CHOICES, QuantConfig, space

DIMS = [40, 24, 5]


def synthetic_loss(config):
    # fewer bits and coarser scales cost loss; layer 0 (the biggest) matters most
    cost = {2: 1.0, 3: 0.4, 4: 0.15, 8: 0.01}
    coarse = {fmt.PER_CHANNEL: 1.0, 16: 0.8, 32: 0.9, fmt.PER_TENSOR: 1.6}
    return 0.05 + sum(w * cost[b] * coarse[g] for w, b, g in zip((1.0, 0.5), config.bits, config.granularity))


def test_non_dominated_keeps_exactly_the_front():
    points = [(10, 5.0), (12, 4.0), (12, 6.0), (15, 4.0), (20, 1.0), (9, 9.0)]
    assert sorted(non_dominated(points)) == [0, 1, 4, 5]


def test_front_per_bin_is_non_dominated_within_each_bin():
    configs = list(space(2))
    evaluated = dict((c, (c.file_bytes(DIMS), synthetic_loss(c))) for c in configs)
    kept = front_per_bin(evaluated, 4)
    assert len(kept) > 4
    sizes = [evaluated[c][0] for c in configs]
    edges = np.linspace(min(sizes), max(sizes) + 1, 5)
    for c in kept:
        b, loss = evaluated[c]
        k = np.searchsorted(edges, b, side="right") - 1
        same_bin = [d for d in configs if edges[k] <= evaluated[d][0] < edges[k + 1]]
        assert not any(evaluated[d][0] <= b and evaluated[d][1] < loss for d in same_bin)


def test_surrogate_fits_an_additive_loss():
    configs = list(space(2))
    s = Surrogate(ridge=1e-6).fit(configs, [synthetic_loss(c) for c in configs])
    errs = [abs(np.log(s.predict(c)) - np.log(synthetic_loss(c))) for c in configs]
    assert np.mean(errs) < 0.2


def test_search_finds_the_best_loss_within_the_uniform_4_bit_budget():
    evaluated, front = search(DIMS, synthetic_loss, rounds=3, initial=20, per_round=10, trials=150, seed=1)
    assert len(evaluated) < 120  # of 256: a search, not an enumeration
    budget = QuantConfig.uniform(2, 4).file_bytes(DIMS)
    best_possible = min(synthetic_loss(c) for c in space(2) if c.file_bytes(DIMS) <= budget)
    found = min(evaluated[c][1] for c in front if evaluated[c][0] <= budget)
    assert found <= synthetic_loss(QuantConfig.uniform(2, 4))
    assert found <= best_possible * 1.25


def test_neighbours_change_exactly_one_layer():
    c = QuantConfig((4, 2, 8), (fmt.PER_CHANNEL, 16, fmt.PER_TENSOR))
    near = list(neighbours([c]))
    assert len(set(near)) == len(near) == 3 * (len(CHOICES) - 1) and c not in near
    for d in near:
        assert sum((b, g) != (b2, g2) for b, g, b2, g2 in zip(c.bits, c.granularity, d.bits, d.granularity)) == 1


def test_search_evaluates_the_uniform_configurations_it_must_beat():
    evaluated, _ = search(DIMS, synthetic_loss, rounds=1, initial=8, per_round=4, trials=40, seed=0)
    assert all(QuantConfig.uniform(2, b) in evaluated for b in BITS)
