# The skip-cache of Skip2-LoRA. Frozen layers never change, so each fine-tune sample's layer inputs
# (of layers 1..n-1; layer 0's input is the sample itself) and frozen logits are stored in the
# first epoch and read back in later ones, which skip the frozen forward pass.
from s2l import kernels as K
from s2l.rowstore import RowStore


class SkipCache:
    def __init__(self, dims, encoding="float", ram_budget=None, spill_path=None, alloc=bytearray):
        self.rows = RowStore(list(dims[1:]), encoding, ram_budget, spill_path, alloc)
        self.row_of = K.zeros(0, "i")  # sample index -> row, -1 while not cached
        self.hits = 0

    def reserve(self, n_samples):
        """Allocate for n samples up front, so running out of memory happens before training."""
        if len(self.row_of) < n_samples:
            self.rows.reserve(n_samples)
            row_of = K.zeros(n_samples, "i")
            for i in range(n_samples):
                row_of[i] = self.row_of[i] if i < len(self.row_of) else -1
            self.row_of = row_of

    def get(self, index, x0):
        """([x0, x1 .. x_{n-1}], frozen logits) of sample `index`, or None if not cached yet."""
        row = self.row_of[index]
        if row < 0:
            return None
        self.hits += 1
        vectors = self.rows.get(row)
        return [x0] + vectors[:-1], vectors[-1]

    def put(self, index, inputs, logits):
        self.row_of[index] = self.rows.append(inputs[1:] + [logits])

    @property
    def bytes(self):
        return len(self.rows) * self.rows.row_bytes

    @property
    def spilled_bytes(self):
        return self.rows.spilled_bytes

    def __len__(self):
        return len(self.rows)

    def close(self):
        self.rows.close()
