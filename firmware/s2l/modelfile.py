# Model file format v1: the single definition of its layout, used by the board's loader and by the
# host's writer and reader. All integers little-endian.
#
#   header   magic "S2LM" | u8 version | u8 n_layers | u16 flags (0)
#            u16 dims[n_layers + 1] | u8 bits[n_layers] | zero padding to a multiple of 4
#   layer i  f32 scales[out_i] | f32 bias[out_i] | packed weights, zero padded to a multiple of 4
#   trailer  u32 CRC32 of every byte before it
#
# Packed weights: out_i rows of in_i signed values, row-major (row = output channel). A value of
# b bits is two's complement q in [-(2^(b-1) - 1), 2^(b-1) - 1] (symmetric, so 2 bits = ternary);
# 8 // b values per byte, the first in the least significant bits; each row starts on a new byte.
# Weight w[o][j] = q[o][j] * scales[o].
import struct
import binascii

MAGIC = b"S2LM"
VERSION = 1
SUPPORTED_BITS = (8, 4, 2)
MAX_LAYERS = 16
MAX_DIM = 4096
_FIXED = "<4sBBH"
_FIXED_SIZE = 8
CRC_SIZE = 4


class ModelError(ValueError):
    pass


def row_bytes(n_in, bits):
    return (n_in * bits + 7) // 8


def pad4(n):
    return (n + 3) & ~3


def header_size(n_layers):
    return pad4(_FIXED_SIZE + 2 * (n_layers + 1) + n_layers)


def layer_size(n_in, n_out, bits):
    return 8 * n_out + pad4(n_out * row_bytes(n_in, bits))


def qmax(bits):
    return (1 << (bits - 1)) - 1


class Layout:
    """Validated description of a model file: dims, bits and where each layer's data starts."""

    def __init__(self, dims, bits, offsets, size):
        self.dims = dims
        self.bits = bits
        self.offsets = offsets  # per layer: (scales, bias, weights) byte offsets
        self.size = size

    @property
    def n_layers(self):
        return len(self.bits)


def encode_header(dims, bits):
    n = len(bits)
    out = struct.pack(_FIXED, MAGIC, VERSION, n, 0)
    out += struct.pack("<%dH" % (n + 1), *dims) + struct.pack("<%dB" % n, *bits)
    return out + bytes(header_size(n) - len(out))


def parse(buf):
    """Check magic, version, dims, bits, length and CRC of a whole model file; return its Layout."""
    if len(buf) < _FIXED_SIZE + CRC_SIZE:
        raise ModelError("model file truncated: %d bytes, shorter than a header" % len(buf))
    magic, version, n, _flags = struct.unpack_from(_FIXED, buf, 0)
    if magic != MAGIC:
        raise ModelError("wrong magic %r (expected %r): not a skip2lora model file" % (magic, MAGIC))
    if version != VERSION:
        raise ModelError("unsupported model format version %d (this reader supports %d)" % (version, VERSION))
    if not 1 <= n <= MAX_LAYERS:
        raise ModelError("bad layer count %d (1..%d)" % (n, MAX_LAYERS))
    hsize = header_size(n)
    if len(buf) < hsize + CRC_SIZE:
        raise ModelError("model file truncated: %d bytes, header needs %d" % (len(buf), hsize + CRC_SIZE))
    dims = list(struct.unpack_from("<%dH" % (n + 1), buf, _FIXED_SIZE))
    bits = list(struct.unpack_from("<%dB" % n, buf, _FIXED_SIZE + 2 * (n + 1)))
    for d in dims:
        if not 1 <= d <= MAX_DIM:
            raise ModelError("bad layer dimension %d (1..%d)" % (d, MAX_DIM))
    for i in range(n):
        if bits[i] not in SUPPORTED_BITS:
            raise ModelError("unsupported bit width %d in layer %d (supported: %s)" % (bits[i], i, SUPPORTED_BITS))
    offsets = []
    pos = hsize
    for i in range(n):
        offsets.append((pos, pos + 4 * dims[i + 1], pos + 8 * dims[i + 1]))
        pos += layer_size(dims[i], dims[i + 1], bits[i])
    size = pos + CRC_SIZE
    if len(buf) < size:
        raise ModelError("model file truncated: %d bytes, expected %d" % (len(buf), size))
    if len(buf) > size:
        raise ModelError("model file has %d trailing bytes after the CRC" % (len(buf) - size))
    stored = struct.unpack_from("<I", buf, pos)[0]
    actual = binascii.crc32(memoryview(buf)[:pos]) & 0xFFFFFFFF
    if stored != actual:
        raise ModelError("CRC mismatch: file says %08x, contents give %08x" % (stored, actual))
    return Layout(dims, bits, offsets, size)


def crc_trailer(body):
    return struct.pack("<I", binascii.crc32(body) & 0xFFFFFFFF)
