"""Drift benchmarks on real data: the UCI handwritten digits (8x8, 1,797 images, shipped offline by
scikit-learn), pretrained on the clean source domain and fine-tuned / tested on a drifted domain.

Split (fixed, seed 0, stratified by nothing but a permutation; every index used once):
    pretrain      1,000 clean images           the lab's training set
    source_test     297 clean images           quantized-vs-float accuracy on the source domain
    finetune        250 drifted images         streamed to the board for on-device fine-tuning
    test            250 drifted images         accuracy before / after fine-tuning
Drift is applied only to the finetune and test images, with the scenario's own fixed seed.

Scenarios (what a deployed camera/sensor meets):
    rotate   the sensor is mounted rotated by 10 degrees
    noise    additive Gaussian sensor noise, sigma 0.35 of full scale, clipped to [0, 1]
    gain     per-pixel gain and offset drift of the sensor (gain 0.4..1.1, offset 0..0.4)

A user's own data (own_data_scenario): a lab file (pretrain + source test) and what the board sees,
either one drifted file or a fine-tune file and a test file. A single file per domain is split by a
fixed permutation (seed 0) into disjoint parts: the lab file 80% pretrain / 20% source test, the
drifted file 50% fine-tune / 50% test. Its features are normalised (mean and 1/std per feature,
fitted on the pretrain part) with constants export writes into the model file: the board normalises
the raw readings it is sent.
"""
from dataclasses import dataclass

import numpy as np

SPLIT_SIZES = {"pretrain": 1000, "source_test": 297, "finetune": 250, "test": 250}
DEFAULT_SCENARIO = "rotate"
SPLIT_SEED = 0
LAB_SPLIT = 0.8    # pretrain share of a lab file; the rest is the source test
DRIFT_SPLIT = 0.5  # fine-tune share of a drifted file; the rest is the test set


@dataclass
class Scenario:
    name: str
    description: str
    pretrain: tuple
    source_test: tuple
    finetune: tuple
    test: tuple
    classes: list
    split: str = ""  # how the parts came from the user's files, printed (own data only)
    # fit input normalisation at export (into the model file): a user's features come in any units;
    # the built-in scenarios are scaled by fixed functions already (pixels / 16, log1p spectra)
    normalise: bool = False

    @property
    def n_features(self):
        return self.pretrain[0].shape[1]


def _rotate(images, rng):
    from scipy.ndimage import rotate
    return np.stack([rotate(im, 10.0, reshape=False, order=1, mode="constant") for im in images])


def _noise(images, rng):
    return images + rng.normal(0.0, 0.35, images.shape)


def _gain(images, rng):
    gain = rng.uniform(0.4, 1.1, images.shape[1:])
    offset = rng.uniform(0.0, 0.4, images.shape[1:])
    return images * gain + offset


DRIFTS = {
    "rotate": (_rotate, "sensor mounted rotated by 10 degrees"),
    "noise": (_noise, "additive Gaussian sensor noise, sigma 0.35 of full scale"),
    "gain": (_gain, "per-pixel sensor gain (0.4..1.1) and offset (0..0.4) drift"),
}


def load_digits_scenario(name=DEFAULT_SCENARIO):
    """The digits drift scenario `name` (one of DRIFTS), features scaled to [0, 1]."""
    if name not in DRIFTS:
        raise ValueError("unknown scenario %r (one of %s)" % (name, ", ".join(DRIFTS)))
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float64)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    parts, start = {}, 0
    for part, size in SPLIT_SIZES.items():
        parts[part] = order[start:start + size]
        start += size
    drift, description = DRIFTS[name]
    rng = np.random.default_rng(sum(map(ord, name)))

    def take(part, drifted):
        ims = images[parts[part]]
        if drifted:
            ims = np.clip(drift(ims, rng), 0.0, 1.0)
        return ims.reshape(len(ims), -1).astype(np.float32), labels[parts[part]]

    return Scenario(name, description, take("pretrain", False), take("source_test", False),
                    take("finetune", True), take("test", True), [str(c) for c in range(10)])


def _split(path, X, y, share):
    """Two disjoint parts of (X, y): a fixed permutation (SPLIT_SEED), the first `share` and the rest."""
    from .loaders import DataError
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    cut = int(round(share * len(y)))
    if cut < 1 or cut >= len(y):
        raise DataError("%s: %d rows are too few to split %d%% / %d%%" % (
            path, len(y), round(100 * share), 100 - round(100 * share)))
    return (X[order[:cut]], y[order[:cut]]), (X[order[cut:]], y[order[cut:]])


def _check_no_empty_class(path, y, names, given):
    """Refuse classes the lab file has no row of: the model would learn a class it never saw, and
    a board would predict it. Integer labels number the classes from 0; --classes names them all."""
    from .loaders import DataError
    empty = [k for k in range(len(names)) if not (y == k).any()]
    if not empty:
        return
    if given:
        raise DataError("%s: no row of class %r (label %d) of --classes %s: name only the classes the file has" % (
            path, names[empty[0]], empty[0], ",".join(names)))
    raise DataError("%s: no row is labelled %d (the labels are %s), so class %d would be empty: number the "
                    "classes 0..%d, or label the rows with names" % (
                        path, empty[0], ", ".join(map(str, np.unique(y))), empty[0], len(np.unique(y)) - 1))


def own_data_scenario(data, drift=None, finetune=None, test=None, classes=None):
    """A Scenario from the user's files (module docstring); without drifted data, finetune and test
    are None (enough to export). classes: names of 0..k-1, else the file's own or "0".."k-1"."""
    import os

    from .loaders import DataError, load_features
    if drift and (finetune or test):
        raise ValueError("give --drift FILE or --finetune FILE --test FILE, not both")
    if bool(finetune) != bool(test):
        raise ValueError("--finetune and --test go together (or give one drifted file with --drift)")
    X, y, names = load_features(data, classes)
    names = names or [str(k) for k in range(int(y.max()) + 1)]
    _check_no_empty_class(data, y, names, classes)
    pretrain, source_test = _split(data, X, y, LAB_SPLIT)
    split = ["%s: %d rows, %d features -> pretrain %d / source test %d (disjoint, seed %d)" % (
        data, len(y), X.shape[1], len(pretrain[1]), len(source_test[1]), SPLIT_SEED)]
    parts = [None, None]
    if drift:
        Xd, yd, _ = load_features(drift, names)
        parts = _split(drift, Xd, yd, DRIFT_SPLIT)
        split.append("%s: %d rows -> fine-tune %d / test %d (disjoint, seed %d)" % (
            drift, len(yd), len(parts[0][1]), len(parts[1][1]), SPLIT_SEED))
    elif finetune:
        parts = [load_features(path, names)[:2] for path in (finetune, test)]
        split.append("%s: fine-tune %d rows; %s: test %d rows" % (finetune, len(parts[0][1]), test, len(parts[1][1])))
    for path, part in zip((drift or finetune, drift or test), parts):
        if part is not None and part[0].shape[1] != X.shape[1]:
            raise DataError("%s: %d features, but %s has %d" % (path, part[0].shape[1], data, X.shape[1]))
    if len(names) < 2:
        raise DataError("%s: needs at least two classes" % data)
    name = os.path.splitext(os.path.basename(data))[0]
    return Scenario(name, "own data from " + data, pretrain, source_test, parts[0], parts[1], list(names),
                    "\n".join(split), normalise=True)
