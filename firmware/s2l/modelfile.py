# Model file format: the single definition of its layout, used by the board's loader and by the
# host's writer and reader. Writers write version 2; readers accept versions 1 and 2. All integers
# little-endian, all floats f32.
#
#   header   magic "S2LM" | u8 version | u8 n_layers | u16 flags
#            u16 dims[n_layers + 1] | u8 bits[n_layers]
#            u8 granularity[n_layers]                          (version 2 only)
#            zero padding to a multiple of 4
#   layer i  f32 scales[n_scales(i)] | f32 bias[out_i] | packed weights, zero padded to a multiple of 4
#   adapter  (flag FLAG_ADAPTER) u32 rank | per layer i: f32 A_i[in_i * rank] (in_i x rank, row-major),
#            f32 B_i[rank * n_classes] (rank x n_classes, row-major): a starting Skip-LoRA adapter
#   norm     (flag FLAG_NORM) f32 mean[dims[0]] | f32 inv_std[dims[0]]: input normalisation
#            x' = (x - mean) * inv_std, applied by the board to raw readings (float samples)
#   lr       (flag FLAG_LR) f32 lr: the default learning rate (picked at export), in LR_RANGE
#   trailer  u32 CRC32 of every byte before it
# Optional sections appear in the order above, each only when its flag is set; unknown flag bits
# are an error. Version 1: flags 0, bits 8/4/2, granularity per output channel.
#
# Packed weights: out_i rows of in_i signed values, row-major (row = output channel). A value of
# b bits is two's complement q in [-(2^(b-1) - 1), 2^(b-1) - 1] (symmetric, so 2 bits = ternary).
# Each row is a little-endian bit stream of ceil(in_i * b / 8) bytes, starting on a byte: value c
# sits at bits c*b .. c*b+b-1, i.e. from bit (c*b) & 7 of byte (c*b) >> 3, spilling into the next
# byte when (c*b) & 7 + b > 8 (only 3-bit values do). For b = 8/4/2 this is 8 // b values per
# byte, the first in the least significant bits (version 1's layout). Rows are not padded; every
# packed block is followed by at least 4 more bytes of the file (padding, a later section or the
# CRC), so a reader that always loads two bytes at (c*b) >> 3 stays inside the file's buffer.
#
# Scale granularity per layer: PER_CHANNEL (0): n_scales = out_i, w[o][j] = q[o][j] * s[o];
# a group size G in GROUP_SIZES: n_scales = out_i * ceil(in_i / G), row-major, w[o][j] = q[o][j] *
# s[o * ceil(in_i / G) + j // G]; PER_TENSOR (255): n_scales = 1, w[o][j] = q[o][j] * s[0].
import struct
import binascii

MAGIC = b"S2LM"
VERSION = 2
SUPPORTED_BITS = {1: (8, 4, 2), 2: (8, 4, 3, 2)}
PER_CHANNEL = 0
PER_TENSOR = 255
GROUP_SIZES = (16, 32)
GRANULARITIES = (PER_CHANNEL, 16, 32, PER_TENSOR)
FLAG_ADAPTER = 1
FLAG_NORM = 2
FLAG_LR = 4
FLAGS = FLAG_ADAPTER | FLAG_NORM | FLAG_LR
LR_RANGE = (1e-6, 10.0)  # a learning rate the board accepts (the model file's and CONFIG's)
LR_SIZE = 4
MAX_LAYERS = 16
MAX_DIM = 4096
MAX_RANK = 64
_FIXED = "<4sBBH"
_FIXED_SIZE = 8
CRC_SIZE = 4


class ModelError(ValueError):
    pass


def row_bytes(n_in, bits):
    return (n_in * bits + 7) // 8


def pad4(n):
    return (n + 3) & ~3


def header_size(n_layers, version=VERSION):
    per_layer = 2 if version >= 2 else 1  # bits, and from version 2 the granularity
    return pad4(_FIXED_SIZE + 2 * (n_layers + 1) + per_layer * n_layers)


def n_scales(n_in, n_out, granularity):
    if granularity == PER_TENSOR:
        return 1
    if granularity == PER_CHANNEL:
        return n_out
    return n_out * ((n_in + granularity - 1) // granularity)


def layer_size(n_in, n_out, bits, granularity=PER_CHANNEL):
    return 4 * n_scales(n_in, n_out, granularity) + 4 * n_out + pad4(n_out * row_bytes(n_in, bits))


def adapter_size(dims, rank):
    return 4 + 4 * rank * (sum(dims[:-1]) + (len(dims) - 1) * dims[-1])


def norm_size(dims):
    return 8 * dims[0]


def qmax(bits):
    return (1 << (bits - 1)) - 1


def granularity_name(granularity):
    if granularity == PER_CHANNEL:
        return "channel"
    if granularity == PER_TENSOR:
        return "tensor"
    return "g%d" % granularity


def check_config(dims, bits, granularity, version=VERSION):
    """Raise ModelError naming the first layer setting this format version cannot hold."""
    for i in range(len(bits)):
        if bits[i] not in SUPPORTED_BITS[version]:
            raise ModelError("unsupported bit width %r in layer %d (supported: %s)" % (
                bits[i], i, ", ".join(str(b) for b in SUPPORTED_BITS[version])))
        if granularity[i] not in (GRANULARITIES if version >= 2 else (PER_CHANNEL,)):
            raise ModelError("unsupported scale granularity %r in layer %d (supported: per channel %d, "
                             "group of %s columns, per tensor %d)" % (
                                 granularity[i], i, PER_CHANNEL, " or ".join(str(g) for g in GROUP_SIZES),
                                 PER_TENSOR))


def file_size(dims, bits, granularity, rank=0, norm=False, lr=False):
    """Exact bytes of the version-2 file holding this configuration (and its optional sections)."""
    n = len(bits)
    size = header_size(n)
    for i in range(n):
        size += layer_size(dims[i], dims[i + 1], bits[i], granularity[i])
    if rank:
        size += adapter_size(dims, rank)
    if norm:
        size += norm_size(dims)
    if lr:
        size += LR_SIZE
    return size + CRC_SIZE


class Layout:
    """Validated description of a model file: dims, bits, scale granularity, where each layer's
    data starts, where the optional sections are (None when absent), and the default lr (None
    when absent)."""

    def __init__(self, version, dims, bits, granularity, offsets, rank, adapter_at, norm_at, lr, size):
        self.version = version
        self.dims = dims
        self.bits = bits
        self.granularity = granularity
        self.offsets = offsets  # per layer: (scales, bias, weights) byte offsets
        self.rank = rank  # of the starting adapter; 0 when there is none
        self.adapter_at = adapter_at  # A_0's first byte
        self.norm_at = norm_at
        self.lr = lr
        self.size = size

    @property
    def n_layers(self):
        return len(self.bits)


def encode_header(dims, bits, granularity, flags=0):
    n = len(bits)
    out = struct.pack(_FIXED, MAGIC, VERSION, n, flags)
    out += struct.pack("<%dH" % (n + 1), *dims) + struct.pack("<%dB" % n, *bits)
    out += struct.pack("<%dB" % n, *granularity)
    return out + bytes(header_size(n) - len(out))


def parse(buf):
    """Check a whole model file (magic, version, flags, dims, bits, granularity, sections, length,
    CRC); return its Layout."""
    if len(buf) < _FIXED_SIZE + CRC_SIZE:
        raise ModelError("model file truncated: %d bytes, shorter than a header" % len(buf))
    magic, version, n, flags = struct.unpack_from(_FIXED, buf, 0)
    if magic != MAGIC:
        raise ModelError("wrong magic %r (expected %r): not a skip2lora model file" % (magic, MAGIC))
    if version not in SUPPORTED_BITS:
        raise ModelError("unsupported model format version %d (this reader supports 1 and %d)" % (version, VERSION))
    if flags & ~(FLAGS if version >= 2 else 0):
        raise ModelError("unknown flags 0x%04x in a version %d model file" % (flags, version))
    if not 1 <= n <= MAX_LAYERS:
        raise ModelError("bad layer count %d (1..%d)" % (n, MAX_LAYERS))
    hsize = header_size(n, version)
    if len(buf) < hsize + CRC_SIZE:
        raise ModelError("model file truncated: %d bytes, header needs %d" % (len(buf), hsize + CRC_SIZE))
    at = _FIXED_SIZE
    dims = list(struct.unpack_from("<%dH" % (n + 1), buf, at))
    at += 2 * (n + 1)
    bits = list(struct.unpack_from("<%dB" % n, buf, at))
    granularity = list(struct.unpack_from("<%dB" % n, buf, at + n)) if version >= 2 else [PER_CHANNEL] * n
    for d in dims:
        if not 1 <= d <= MAX_DIM:
            raise ModelError("bad layer dimension %d (1..%d)" % (d, MAX_DIM))
    check_config(dims, bits, granularity, version)
    offsets = []
    pos = hsize
    for i in range(n):
        bias_at = pos + 4 * n_scales(dims[i], dims[i + 1], granularity[i])
        offsets.append((pos, bias_at, bias_at + 4 * dims[i + 1]))
        pos += layer_size(dims[i], dims[i + 1], bits[i], granularity[i])
    rank, adapter_at, norm_at, lr_at = 0, None, None, None
    sections = []  # optional sections (name, first byte, end): where a truncated file ends
    if flags & FLAG_ADAPTER:
        if len(buf) < pos + 4 + CRC_SIZE:
            raise ModelError("model file truncated: %d bytes, the adapter section starts at %d" % (len(buf), pos))
        rank = struct.unpack_from("<I", buf, pos)[0]
        if not 1 <= rank <= MAX_RANK:
            raise ModelError("bad adapter rank %d (1..%d)" % (rank, MAX_RANK))
        adapter_at = pos + 4
        sections.append(("adapter", pos, pos + adapter_size(dims, rank)))
        pos += adapter_size(dims, rank)
    if flags & FLAG_NORM:
        norm_at = pos
        sections.append(("normalisation", pos, pos + norm_size(dims)))
        pos += norm_size(dims)
    if flags & FLAG_LR:
        lr_at = pos
        sections.append(("lr", pos, pos + LR_SIZE))
        pos += LR_SIZE
    size = pos + CRC_SIZE
    if len(buf) < size:
        where = ""
        for name, start, end in sections:
            if start <= len(buf) < end:
                where = ", inside the %s section (bytes %d..%d)" % (name, start, end)
        raise ModelError("model file truncated: %d bytes, expected %d%s" % (len(buf), size, where))
    if len(buf) > size:
        raise ModelError("model file has %d trailing bytes after the CRC" % (len(buf) - size))
    stored = struct.unpack_from("<I", buf, pos)[0]
    actual = binascii.crc32(memoryview(buf)[:pos]) & 0xFFFFFFFF
    if stored != actual:
        raise ModelError("CRC mismatch: file says %08x, contents give %08x" % (stored, actual))
    if norm_at is not None:
        for k in range(2 * dims[0]):
            v = struct.unpack_from("<f", buf, norm_at + 4 * k)[0]
            if not -3.4028235e38 <= v <= 3.4028235e38:  # NaN or inf would reach every prediction
                raise ModelError("non-finite normalisation %s %r for input %d" % (
                    "mean" if k < dims[0] else "inv_std", v, k % dims[0]))
    lr = None
    if lr_at is not None:
        lr = struct.unpack_from("<f", buf, lr_at)[0]
        if not LR_RANGE[0] <= lr <= LR_RANGE[1]:  # also false for NaN
            raise ModelError("bad default lr %r (%g..%g)" % (lr, LR_RANGE[0], LR_RANGE[1]))
    return Layout(version, dims, bits, granularity, offsets, rank, adapter_at, norm_at, lr, size)


def crc_trailer(body):
    return struct.pack("<I", binascii.crc32(body) & 0xFFFFFFFF)
