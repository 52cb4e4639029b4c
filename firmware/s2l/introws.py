# Fixed-width byte rows, one per fine-tune sample (its int8 layer inputs and frozen logits: the
# sample and its skip-cache entry), kept in RAM chunks of about CHUNK_BYTES, never in one large
# buffer: on a board whose heap is in use, a 25 KB block may not exist while 100 KB are free, but
# 2 KB blocks do. Chunks are allocated up front by reserve() (a plan for n samples) or one at a
# time as rows arrive; rows that RAM cannot hold go to a file on flash, in order, one record each.
CHUNK_BYTES = 2048


class Rows:
    def __init__(self, stride, spill_path):
        self.stride = stride
        self.per_chunk = max(1, CHUNK_BYTES // stride)
        self.chunks = []
        self.n = 0
        self.ram_limit = None  # rows RAM may hold; None: as many as memory allows
        self.spill_path = spill_path
        self.spill = None  # the open spill file, once a row has gone there
        self.scratch = bytearray(stride)  # a spilled row while it is in use
        self.buf = None  # the buffer holding the row that row() or append() last located

    def __len__(self):
        return self.n

    @property
    def ram_rows(self):
        return len(self.chunks) * self.per_chunk if self.ram_limit is None else min(
            self.ram_limit, len(self.chunks) * self.per_chunk)

    @property
    def spilled_rows(self):
        return max(0, self.n - self.ram_rows)

    def _chunk(self):
        self.chunks.append(bytearray(self.stride * self.per_chunk))

    def reserve(self, ram_rows):
        """Allocate the chunks for `ram_rows` rows now; later rows go to flash (MemoryError here,
        with nothing kept, rather than halfway through a stream)."""
        had = len(self.chunks)
        try:
            while len(self.chunks) * self.per_chunk < ram_rows:
                self._chunk()
        except MemoryError:
            del self.chunks[had:]
            raise
        self.ram_limit = ram_rows

    def release(self, ram_rows):
        """Hold only `ram_rows` rows in RAM (before any row is stored): the chunks past them go."""
        keep = (ram_rows + self.per_chunk - 1) // self.per_chunk
        del self.chunks[keep:]
        self.ram_limit = ram_rows

    def append(self):
        """A new row; returns its offset in self.buf, to fill, then call stored(index)."""
        k = self.n
        if self.ram_limit is None and k == len(self.chunks) * self.per_chunk:
            try:
                self._chunk()
            except MemoryError:  # RAM runs short: this row and the next go to flash
                self.ram_limit = k
        self.n = k + 1
        return self.row(k, fresh=True)

    def row(self, k, fresh=False):
        """Row k's offset in self.buf: its RAM chunk, or the scratch row read from flash (an offset
        and an attribute rather than a tuple: a training step allocates nothing here)."""
        if k < self.ram_rows:
            self.buf = self.chunks[k // self.per_chunk]
            return (k % self.per_chunk) * self.stride
        self.buf = self.scratch
        if fresh:
            for i in range(self.stride):
                self.scratch[i] = 0
        else:
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

    def drop_last(self):
        """Forget the newest row (a sample that failed after append)."""
        self.n -= 1

    def close(self):
        if self.spill is not None:
            self.spill.close()
            self.spill = None
