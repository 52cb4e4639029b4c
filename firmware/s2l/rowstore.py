# Fixed-width rows of float vectors (a fine-tune sample; a skip-cache entry: layer inputs + frozen
# logits), packed into a few large buffers rather than one heap object per vector, so that 250
# entries cost their bytes and not their object headers. Two encodings:
#   "float"    float32 values, exact; read back as zero-copy views
#   "compact"  per vector a float32 scale then int8 values q, value = q * scale: about 4x smaller,
#              costs a little accuracy (the benchmark reports how much)
# Rows live in RAM blocks up to a byte budget; rows beyond it spill to a file on flash, one record
# per row, laid out as in RAM. Compact blocks come from `alloc` (a board's arena, arena.py).
import struct
from array import array

from s2l import kernels as K
from s2l.tunerbase import CACHE_MODES as ENCODINGS
BLOCK_ROWS = 16


class RowStore:
    def __init__(self, widths, encoding="float", ram_budget=None, spill_path=None, alloc=bytearray):
        if encoding not in ENCODINGS:
            raise ValueError("unknown encoding %r (one of %s)" % (encoding, ", ".join(ENCODINGS)))
        self.widths = widths
        self.encoding = encoding
        self.compact = encoding == "compact"
        width = sum(widths)
        self.row_bytes = width + 4 * len(widths) if self.compact else 4 * width
        block_bytes = BLOCK_ROWS * self.row_bytes
        self.ram_rows = None if ram_budget is None else ram_budget // block_bytes * BLOCK_ROWS
        self.spill_path = spill_path
        self.alloc = alloc
        self.blocks = []
        self.n = 0
        self.spill = None  # open spill file, once a row has gone there
        # read-back scratch: decoded vectors (compact), one record (spilled rows)
        self.out = [K.zeros(w) for w in widths]
        self.record = bytearray(self.row_bytes) if self.compact else K.zeros(width)

    def __len__(self):
        return self.n

    @property
    def ram_bytes(self):
        return len(self.blocks) * BLOCK_ROWS * self.row_bytes

    @property
    def spilled_bytes(self):
        return max(0, self.n - self.ram_capacity()) * self.row_bytes

    def ram_capacity(self):
        return self.n if self.ram_rows is None else self.ram_rows

    def ram_bytes_for(self, rows):
        """Bytes (4-byte aligned blocks) that RAM needs to hold `rows` rows."""
        if self.ram_rows is not None:
            rows = min(rows, self.ram_rows)
        return (rows + BLOCK_ROWS - 1) // BLOCK_ROWS * ((BLOCK_ROWS * self.row_bytes + 3) & ~3)

    def reserve(self, rows):
        """Allocate RAM for `rows` rows now (MemoryError here, not halfway through filling)."""
        limit = rows if self.ram_rows is None else min(rows, self.ram_rows)
        if rows > limit and self.spill_path is None:
            raise MemoryError("%d rows exceed the RAM budget and there is no spill file" % rows)
        had = len(self.blocks)
        try:
            while len(self.blocks) * BLOCK_ROWS < limit:
                size = BLOCK_ROWS * self.row_bytes
                self.blocks.append(self.alloc(size) if self.compact else K.zeros(size // 4))
        except MemoryError:
            del self.blocks[had:]  # give back what this call took
            raise

    def append(self, vectors):
        """Store one row; returns its index. On MemoryError nothing is stored."""
        self.reserve(self.n + 1)
        i = self.n
        if self.ram_rows is None or i < self.ram_rows:
            block = self.blocks[i // BLOCK_ROWS]
            self._encode(vectors, block, (i % BLOCK_ROWS) * self._row_len())
        else:
            self._encode(vectors, self.record, 0)
            if self.spill is None:
                self.spill = open(self.spill_path, "w+b")
            self.spill.seek((i - self.ram_rows) * self.row_bytes)
            self.spill.write(self.record)
        self.n = i + 1
        return i

    def get(self, i):
        """The row's vectors, valid until the next get: views of RAM, or decoded scratch."""
        if self.ram_rows is None or i < self.ram_rows:
            buf, at = self.blocks[i // BLOCK_ROWS], (i % BLOCK_ROWS) * self._row_len()
        else:
            self.spill.seek((i - self.ram_rows) * self.row_bytes)
            self.spill.readinto(self.record)
            buf, at = self.record, 0
        if self.compact:
            return self._decode(buf, at)
        view, out = memoryview(buf), []
        for w in self.widths:
            out.append(view[at:at + w])
            at += w
        return out

    def close(self):
        if self.spill is not None:
            self.spill.close()
            self.spill = None

    def _row_len(self):
        # row length in the block's own items: bytes (compact) or floats
        return self.row_bytes if self.compact else self.row_bytes // 4

    def _encode(self, vectors, buf, at):
        for v in vectors:
            if not self.compact:
                for k in range(len(v)):
                    buf[at + k] = v[k]
                at += len(v)
                continue
            top = 0.0
            for x in v:
                if abs(x) > top:
                    top = abs(x)
            scale = top / 127.0 if top > 0.0 else 1.0
            struct.pack_into("<f", buf, at, scale)
            scale = struct.unpack_from("<f", buf, at)[0]  # quantize with the stored (float32) scale
            at += 4
            for k in range(len(v)):
                buf[at + k] = int(round(v[k] / scale)) & 0xFF
            at += len(v)

    def _decode(self, buf, at):
        for out in self.out:
            scale = struct.unpack_from("<f", buf, at)[0]
            at += 4
            for k in range(len(out)):
                q = buf[at + k]
                out[k] = (q - 256 if q > 127 else q) * scale
            at += len(out)
        return self.out
