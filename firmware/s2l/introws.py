# Fixed-width byte rows, one per fine-tune sample (its int8 layer inputs, frozen logits and their
# exponents: the sample and its skip-cache entry), in one region of the arena for the rows RAM
# holds; the rest go to a file on flash, in order, one record each, read back through one scratch
# row (also from the arena).
class Rows:
    def __init__(self, stride, spill_path):
        self.stride = stride
        self.n = 0
        self.ram = None  # the RAM rows' region, once reserved
        self.ram_rows = 0
        self.capacity = 0  # rows reserved for, in RAM and on flash
        self.spill_path = spill_path
        self.spill = None  # the open spill file, once a row has gone there
        self.scratch = None  # a spilled row while it is in use
        self.buf = None  # the buffer holding the row that row() or append() last located

    def __len__(self):
        return self.n

    @property
    def spilled_rows(self):
        return max(0, self.n - self.ram_rows)

    def reserve(self, arena, ram_rows, rows):
        """Room for `rows` rows, the first `ram_rows` in RAM (from the arena), the rest on flash."""
        self.ram = arena.take(ram_rows * self.stride, "%d rows of %d bytes" % (ram_rows, self.stride))
        self.scratch = arena.take(self.stride, "a spilled row's scratch")
        self.ram_rows, self.capacity = ram_rows, rows

    def append(self):
        """A new row; returns its offset in self.buf, to fill, then call stored(index)."""
        k = self.n
        if k >= self.capacity:
            raise MemoryError("no room for row %d: %d reserved" % (k, self.capacity))
        self.n = k + 1
        return self.row(k, fresh=True)

    def row(self, k, fresh=False):
        """Row k's offset in self.buf: the RAM region, or the scratch row read from flash (an offset
        and an attribute rather than a tuple: a training step allocates nothing here)."""
        if k < self.ram_rows:
            self.buf = self.ram
            return k * self.stride
        self.buf = self.scratch
        if not fresh:  # a fresh row is written whole before it is read: nothing to load
            self.spill.seek((k - self.ram_rows) * self.stride)
            self.spill.readinto(self.scratch)
        return 0

    def stored(self, k):
        """Row k was written: a spilled row goes back to its file (RAM rows are already in place)."""
        if k < self.ram_rows:
            return
        if self.spill is None:
            if self.spill_path is None:
                raise MemoryError("no RAM left for sample %d and no spill file" % k)
            self.spill = open(self.spill_path, "w+b")
        self.spill.seek((k - self.ram_rows) * self.stride)
        self.spill.write(self.scratch)

    def truncate(self, n):
        """Forget the rows from n on (samples of a frame that was refused)."""
        self.n = min(self.n, n)

    def close(self):
        if self.spill is not None:
            self.spill.close()
            self.spill = None
