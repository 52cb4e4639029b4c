"""The Pareto configuration search of CoA-LoRA: objectives (model file bytes, source-domain loss).

Start from configurations spread over the byte range and evaluate them; then, each round, fit a
surrogate of the loss (ridge regression on one-hot layer choices), let NSGA-II (optuna's
NSGAIISampler: a maintained, seeded implementation of the multi-objective search over categorical
per-layer choices, rather than one of our own) search the surrogate's (bytes, loss) front,
evaluate the truly new configurations of that front, spread over bytes, and refit. What is kept:
the non-dominated configurations within each bytes bin (the paper bins by average bit width;
bytes are what a board's budget limits, and they include the scale overhead of a granularity).
"""
import numpy as np
import optuna

from ..train.quantconfig import BITS, CHOICES, GRANULARITIES, QuantConfig, random_configs

optuna.logging.set_verbosity(optuna.logging.WARNING)


def features(config):
    """One-hot layer choices: per layer its bits, its granularity and the (bits, granularity) pair."""
    out = []
    for b, g in zip(config.bits, config.granularity):
        pair = np.zeros(len(CHOICES))
        pair[CHOICES.index((b, g))] = 1
        out += [np.eye(len(BITS))[BITS.index(b)], np.eye(len(GRANULARITIES))[GRANULARITIES.index(g)], pair]
    return np.concatenate(out + [np.ones(1)])


class Surrogate:
    """Ridge regression of log(loss) on the one-hot features."""

    def __init__(self, ridge=0.1):
        self.ridge = ridge
        self.w = None

    def fit(self, configs, losses):
        F = np.stack([features(c) for c in configs])
        t = np.log(np.asarray(losses, np.float64))
        self.w = np.linalg.solve(F.T @ F + self.ridge * np.eye(F.shape[1]), F.T @ t)
        return self

    def predict(self, config):
        return float(np.exp(features(config) @ self.w))


def non_dominated(points):
    """Indices of the (bytes, loss) points no other point beats in both (ties kept once)."""
    order = sorted(range(len(points)), key=lambda k: (points[k][0], points[k][1]))
    keep, best = [], np.inf
    for k in order:
        if points[k][1] < best:
            keep.append(k)
            best = points[k][1]
    return keep


def front_per_bin(evaluated, bins):
    """The non-dominated configurations within each of `bins` equal-width bytes bins.
    evaluated: {config: (bytes, loss)}."""
    configs = list(evaluated)
    sizes = np.array([evaluated[c][0] for c in configs])
    edges = np.linspace(sizes.min(), sizes.max() + 1, bins + 1)
    kept = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        members = [c for c in configs if lo <= evaluated[c][0] < hi]
        kept += [members[k] for k in non_dominated([evaluated[c] for c in members])]
    return sorted(kept, key=lambda c: evaluated[c][0])


def spread_by_bytes(configs, dims, count):
    """`count` of `configs` at evenly spaced quantiles of their bytes."""
    ordered = sorted(configs, key=lambda c: c.file_bytes(dims))
    if len(ordered) <= count:
        return ordered
    return [ordered[int(k)] for k in np.linspace(0, len(ordered) - 1, count).round()]


def neighbours(configs):
    """The configurations one layer's choice away from any of `configs`."""
    for c in configs:
        for i in range(len(c.bits)):
            for b, g in CHOICES:
                if (b, g) != (c.bits[i], c.granularity[i]):
                    yield QuantConfig(c.bits[:i] + (b,) + c.bits[i + 1:], c.granularity[:i] + (g,) + c.granularity[i + 1:])


def _suggest(trial, n_layers):
    bits = tuple(trial.suggest_categorical("bits%d" % i, list(BITS)) for i in range(n_layers))
    gran = tuple(trial.suggest_categorical("gran%d" % i, list(GRANULARITIES)) for i in range(n_layers))
    return QuantConfig(bits, gran)


def search(dims, loss_of, rounds=4, initial=40, per_round=16, trials=400, bins=10, seed=0, on_round=None):
    """(bytes, loss) search. loss_of(config) -> float. Returns ({config: (bytes, loss)} of every
    evaluated configuration, the kept front per bytes bin)."""
    n = len(dims) - 1
    rng = np.random.default_rng(seed)
    evaluated = {}

    def evaluate(configs):
        for c in configs:
            if c not in evaluated:
                evaluated[c] = (c.file_bytes(dims), float(loss_of(c)))
    # the uniform per-channel configurations are the reference points a search must beat
    evaluate([QuantConfig.uniform(n, b) for b in BITS])
    evaluate(spread_by_bytes(random_configs(n, 40 * initial, rng), dims, initial))
    for r in range(rounds):
        surrogate = Surrogate().fit(list(evaluated), [v[1] for v in evaluated.values()])
        study = optuna.create_study(directions=["minimize", "minimize"],
                                    sampler=optuna.samplers.NSGAIISampler(population_size=40, seed=seed + r))
        for c in front_per_bin(evaluated, bins):  # the population starts from what is known
            study.enqueue_trial(dict([("bits%d" % i, b) for i, b in enumerate(c.bits)]
                                     + [("gran%d" % i, g) for i, g in enumerate(c.granularity)]))

        def objective(trial):
            c = _suggest(trial, n)
            return c.file_bytes(dims), surrogate.predict(c)
        study.optimize(objective, n_trials=trials)
        proposed = set(_suggest(optuna.trial.FixedTrial(t.params), n) for t in study.best_trials)
        proposed |= set(neighbours(front_per_bin(evaluated, bins)))  # NSGA-II explores; this refines
        known = list(evaluated.values())
        promising = [c for c in proposed if c not in evaluated and not any(
            b <= c.file_bytes(dims) and loss <= surrogate.predict(c) for b, loss in known)]
        evaluate(spread_by_bytes(promising, dims, per_round))
        if on_round:
            on_round(r, len(evaluated))
    return evaluated, front_per_bin(evaluated, bins)


__all__ = ["search", "front_per_bin", "non_dominated", "Surrogate"]
