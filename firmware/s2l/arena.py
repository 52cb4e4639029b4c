# One block of RAM for a job's buffers, taken once (at boot on a board) and carved by offset, never
# freed: TensorFlow Lite Micro's tensor arena. MicroPython's heap never moves an object, so buffers
# a job took from it, freed around what outlived the job, left the heap in pieces (measured on an
# RP2040: one job cut the largest free block from 149 KB to 15.6 KB). Carved from one block, job N
# gets job 1's memory: a new job moves the carve pointer back (release), and that is all.
# Regions are 4-byte aligned bytes views; typed() reads one as int16/int32 in place, where the
# kernels' pointers see raw memory anyway.
import sys

ALIGN = 4
_ZEROS = bytes(256)  # zeroing a region: copied in, not a new zero block of the region's size


class ArenaFull(MemoryError):
    pass


class Arena:
    def __init__(self, size):
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.top = 0  # the carve pointer: bytes in use

    @property
    def size(self):
        return len(self.buf)

    @property
    def free(self):
        return max(0, len(self.buf) - aligned(self.top))

    def take(self, n, what="a buffer"):
        """n zeroed bytes, 4-byte aligned; ArenaFull (a MemoryError) when they are not there."""
        at = aligned(self.top)
        if at + n > len(self.buf):
            raise ArenaFull("%s needs %d bytes; the arena has %d of %d free" % (what, n, self.free, len(self.buf)))
        self.top = at + n
        region = self.view[at:at + n]
        for k in range(0, n, len(_ZEROS)):
            end = min(n, k + len(_ZEROS))
            region[k:end] = _ZEROS[:end - k]
        return region

    def mark(self):
        return self.top

    def release(self, mark):
        """Give back everything taken after mark() returned `mark`."""
        self.top = mark


def aligned(n):
    return (n + ALIGN - 1) & ~(ALIGN - 1)


SIZES = {"b": 1, "h": 2, "H": 2, "i": 4, "f": 4}

if hasattr(memoryview, "cast"):  # CPython
    def typed(buf, code):
        """buf's bytes read as `code` items in place (an array is typed already)."""
        return memoryview(buf).cast("B").cast(code)
else:  # MicroPython: no memoryview.cast; uctypes indexes raw memory nearly as fast as an array
    import uctypes
    from array import array
    _UC = {"b": uctypes.INT8, "h": uctypes.INT16, "H": uctypes.UINT16, "i": uctypes.INT32, "f": uctypes.FLOAT32}

    def typed(buf, code):
        """buf's bytes read as `code` items in place (an array is typed already). The view holds an
        address, not buf: buf must outlive it (arena regions do)."""
        if isinstance(buf, array):
            return buf
        layout = {"v": (uctypes.ARRAY | 0, _UC[code] | len(buf) // SIZES[code])}
        return uctypes.struct(uctypes.addressof(buf), layout, uctypes.LITTLE_ENDIAN).v


def default_size():
    """The arena a runtime without a board's heap (CPython, the WebAssembly build) gets: room for
    any job the tests and benchmarks run there."""
    return 4 * 1024 * 1024 if sys.implementation.name != "micropython" else 256 * 1024
