# One block of RAM for a job's buffers, taken once (at boot on a board: boot_arena) and carved by
# offset, never freed: TensorFlow Lite Micro's tensor arena. MicroPython's heap never moves an
# object, so buffers a job took from it, freed around what outlived the job, left the heap in pieces
# (measured on an RP2040: one job cut the largest free block from 149 KB to 15.6 KB). Carved from
# one block, job N gets job 1's memory: a new job moves the carve pointer back (release), and that
# is all. Regions are 4-byte aligned bytes views; typed() reads one as int16/int32 in place, where
# the kernels' pointers see raw memory anyway.
import gc
import sys

ALIGN = 4
_ZEROS = bytes(256)  # zeroing a region: copied in, not a new zero block of the region's size
# a MicroPython with a board's fixed heap takes a board's defaults: the boards, and the unix port
# (the emulator that holds a board's heap); the WebAssembly build's heap grows on demand
ON_BOARD = sys.implementation.name == "micropython" and sys.platform != "webassembly"
# the heap a board keeps outside its arena: frames, replies, JSON, events, the tuner's small objects
# and the float path's arrays (the model, the integer tuner's buffers and its samples are the arena's).
# Of it, SMALL_OBJECTS lie below the arena: MicroPython allocates first fit from the bottom, so what
# outlives a request (a tuner's objects, events, the last reply) lands there, and the block above
# the arena stays whole job after job
GENERAL_HEAP = 40 * 1024
SMALL_OBJECTS = 16 * 1024
MIN_GENERAL_HEAP = 16 * 1024  # a small board's (a quarter of its largest block, at least this)


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


def largest_free_block(limit):
    """The largest bytearray the heap can give now (up to `limit`), found by trying: MicroPython
    has no call that tells, and what fragmentation leaves decides which buffers can exist. None on
    the WebAssembly build, whose heap grows on demand and is collected only between calls."""
    if sys.platform == "webassembly":
        return None
    low, high = 0, limit
    while low <= high:
        # the last try is a small block: the collector scans the stack conservatively, and a stale
        # copy of the pointer to a large trial block, left where this same call runs, would keep it
        size = (low + high + 1) // 2 if low < high else 16
        try:
            block = bytearray(size)
            del block
            if low == high:
                break
            low = size
        except MemoryError:
            high = size - 1
    gc.collect()
    return low


def free_heap():
    gc.collect()
    return gc.mem_free() if hasattr(gc, "mem_free") else None


def boot_arena():
    """The arena a runtime gets at boot: on a board, its largest free block less GENERAL_HEAP, placed
    above SMALL_OBJECTS of it."""
    if not ON_BOARD:
        return Arena(default_size())
    largest = largest_free_block(free_heap())
    general = max(MIN_GENERAL_HEAP, min(GENERAL_HEAP, largest // 4))
    if largest <= general:  # a board too small for any job: an empty arena, and every job says so
        return Arena(0)
    # the probe's blocks are garbage now, but a stale pointer to one (the collector scans the stack
    # conservatively) can keep part of the heap a while: every allocation here steps down on failure
    try:
        below = bytearray(min(SMALL_OBJECTS, general * 2 // 5))  # held while the arena is taken above it
    except MemoryError:
        below = b""
    size = largest_free_block(largest) - (general - len(below))  # measured again: below is placed
    while size > 0:
        try:
            arena = Arena(size)
            break
        except MemoryError:
            size -= max(1024, size // 16)
    else:
        arena = Arena(0)
    del below
    gc.collect()
    return arena
