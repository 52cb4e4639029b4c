"""Deterministic pretraining of the float network on the source domain (FT-All from a seeded He
initialisation: the reference's own backpropagation, so there is one training loop)."""
import numpy as np

from ..progress import bar
from .reference import Config, FineTune, Network

# 64-64-64-10: frozen forward is 8,832 MACs per sample, about 9 ms in viper integers on an RP2040
# (DESIGN.md: ~1M MAC/s), under the 15 ms budget; int8 weights take 9 KB, and a skip-cache entry
# (inputs of the three layers + logits) is 202 values, so 250 samples fit in 51 KB as int8.
DEFAULT_HIDDEN = (64, 64)


def init_network(dims, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return Network([(rng.normal(0, np.sqrt(2.0 / n_in), (n_out, n_in)), np.zeros(n_out))
                    for n_in, n_out in zip(dims[:-1], dims[1:])], dtype)


def pretrain(X, y, n_classes, hidden=DEFAULT_HIDDEN, epochs=60, lr=0.1, batch=32, seed=0, progress=True):
    dims = [X.shape[1], *hidden, n_classes]
    # float64: BLAS kernels differ between machines in summation order; in float64 those rounding
    # differences stay far below the 8-bit quantization step, so every machine exports the same file
    tuner = FineTune(init_network(dims, seed, np.float64), Config("ft-all", lr=lr, epochs=epochs, batch=batch, seed=seed))
    with bar(epochs, "pretrain %s" % "-".join(map(str, dims)), progress, "epochs") as b:
        def on_epoch(epoch, loss):
            b.set_postfix(loss="%.4f" % loss)
            b.update()
        tuner.fit(X, y, on_epoch=on_epoch)
    return tuner.net
