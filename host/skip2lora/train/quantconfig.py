"""The quantization configuration space of a network: per layer, weight bits in {2, 3, 4, 8} and a
scale granularity (per output channel, per group of 16 or 32 input columns, per tensor). A
configuration's storage is the exact size of its model file (s2l.modelfile.file_size)."""
import itertools
from dataclasses import dataclass

import numpy as np

from s2l import modelfile as fmt

from . import reference
from .modelfile import quantize, write_model

BITS = (2, 3, 4, 8)
GRANULARITIES = (fmt.PER_CHANNEL, 16, 32, fmt.PER_TENSOR)
CHOICES = tuple(itertools.product(BITS, GRANULARITIES))  # one layer's options


@dataclass(frozen=True)
class QuantConfig:
    bits: tuple         # per layer
    granularity: tuple  # per layer: fmt.PER_CHANNEL, a group size, or fmt.PER_TENSOR

    def __post_init__(self):
        if len(self.bits) != len(self.granularity):
            raise ValueError("a configuration needs as many granularities as bit widths")
        fmt.check_config([1] * (len(self.bits) + 1), self.bits, self.granularity)

    @property
    def label(self):
        return " ".join("%d/%s" % (b, fmt.granularity_name(g)) for b, g in zip(self.bits, self.granularity))

    def file_bytes(self, dims, rank=0):
        """Bytes of this configuration's model file (with a starting adapter of `rank`, if any)."""
        return fmt.file_size(dims, self.bits, self.granularity, rank)

    def average_bits(self, dims):
        """Weight bits averaged over the network's weights (scales not counted)."""
        counts = np.array([i * o for i, o in zip(dims[:-1], dims[1:])])
        return float((counts * np.array(self.bits)).sum() / counts.sum())

    def as_json(self):
        return [[b, fmt.granularity_name(g)] for b, g in zip(self.bits, self.granularity)]

    @classmethod
    def from_json(cls, layers):
        names = dict((fmt.granularity_name(g), g) for g in GRANULARITIES)
        return cls(tuple(int(b) for b, _ in layers), tuple(names[g] for _, g in layers))

    @classmethod
    def uniform(cls, n_layers, bits, granularity=fmt.PER_CHANNEL):
        return cls((bits,) * n_layers, (granularity,) * n_layers)


def space(n_layers):
    """Every configuration of an n-layer network (16 ** n_layers of them)."""
    for combo in itertools.product(CHOICES, repeat=n_layers):
        yield QuantConfig(tuple(b for b, _ in combo), tuple(g for _, g in combo))


def random_configs(n_layers, count, rng):
    """`count` distinct random configurations."""
    seen = set()
    while len(seen) < min(count, len(CHOICES) ** n_layers):
        picks = rng.integers(0, len(CHOICES), n_layers)
        seen.add(QuantConfig(tuple(CHOICES[k][0] for k in picks), tuple(CHOICES[k][1] for k in picks)))
    return sorted(seen, key=lambda c: (c.bits, c.granularity))


def quantize_network(net, config):
    """The QuantizedLayers of a float reference.Network under `config`."""
    if len(config.bits) != len(net.W):
        raise ValueError("configuration has %d layers, the network %d" % (len(config.bits), len(net.W)))
    return [quantize(w, b, bits, g) for w, b, bits, g in zip(net.W, net.b, config.bits, config.granularity)]


def quantized_network(net, config):
    """The frozen network a board holds under `config`: dequantized weights."""
    return reference.Network([(layer.dequantized(), layer.bias) for layer in quantize_network(net, config)])


def model_bytes(net, config, adapter=None):
    return write_model(quantize_network(net, config), adapter)
