# The skip-cache of Skip2-LoRA, and the encoding of stored per-sample vectors.
# Frozen layers never change, so each fine-tune sample's layer inputs and frozen logits are kept
# after the first epoch and read back in later ones. Two storage modes:
#   "float"    array('f'): exact, 4 bytes a value
#   "compact"  int8 with one float scale per vector (value = q * scale): 1 byte a value, for RAM
#              budgets where float does not fit; costs a little accuracy (reported by the bench)
from array import array

from s2l import kernels as K

MODES = ("float", "compact")


def encode(v, mode):
    if mode == "float":
        out = K.zeros(len(v))
        out[:] = v if isinstance(v, array) else array("f", v)
        return out
    top = 0.0
    for x in v:
        if abs(x) > top:
            top = abs(x)
    scale = top / 127.0 if top > 0.0 else 1.0
    q = bytearray(len(v))
    for k in range(len(v)):
        q[k] = int(round(v[k] / scale)) & 0xFF
    return (scale, q)


def decode(e, mode):
    if mode == "float":
        return e
    scale, q = e
    out = K.zeros(len(q))
    for k in range(len(q)):
        b = q[k]
        out[k] = (b - 256 if b > 127 else b) * scale
    return out


def nbytes(e, mode):
    return 4 * len(e) if mode == "float" else 4 + len(e[1])


class SkipCache:
    """Per sample: inputs of layers 1..n-1 and the frozen logits (layer 0's input is the sample)."""

    def __init__(self, dims, mode="float"):
        if mode not in MODES:
            raise ValueError("unknown cache mode %r (one of %s)" % (mode, ", ".join(MODES)))
        self.mode = mode
        self.entries = {}
        self.hits = 0
        self.bytes = 0

    def get(self, index, x0):
        entry = self.entries.get(index)
        if entry is None:
            return None
        self.hits += 1
        return [x0] + [decode(e, self.mode) for e in entry[:-1]], decode(entry[-1], self.mode)

    def put(self, index, inputs, logits):
        entry = [encode(v, self.mode) for v in inputs[1:]] + [encode(logits, self.mode)]
        self.entries[index] = entry
        self.bytes += sum(nbytes(e, self.mode) for e in entry)

    def __len__(self):
        return len(self.entries)
