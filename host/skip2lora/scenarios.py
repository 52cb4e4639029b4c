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
"""
from dataclasses import dataclass

import numpy as np

SPLIT_SIZES = {"pretrain": 1000, "source_test": 297, "finetune": 250, "test": 250}
DEFAULT_SCENARIO = "rotate"


@dataclass
class Scenario:
    name: str
    description: str
    pretrain: tuple
    source_test: tuple
    finetune: tuple
    test: tuple
    classes: list

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
