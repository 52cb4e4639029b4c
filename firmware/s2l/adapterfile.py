# What fine-tuning learned, as a file on flash: the adapters (A, B of each), or for FT-* methods
# the float weights and biases they train. The file records its arithmetic path: the integer
# path's int16 adapters (fixed exponents) mean nothing to the float tuner, and the reverse; and
# the CRC32 of the model file it was trained on: adapters of another model of the same shapes fit
# its arrays but not its weights.
# Layout, little-endian:
#   "S2LA" | u8 version | u8 n_arrays | u8 path (0 float, 1 int) | u8 0 | u32 model file's CRC32
#   | u32 length[n_arrays] | values: f32 (float path) or i16 (integer path) | u32 CRC32 of everything before it
import binascii
import struct

MAGIC = b"S2LA"
VERSION = 3
PATHS = ("float", "int")
_VALUE = ("f", "h")  # struct code of a value, per path
_HEAD = "<4sBBBBI"
_HEAD_SIZE = 12


class AdapterError(ValueError):
    pass


def parameters(tuner):
    """The tuner's trained arrays, in a fixed order: float arrays, or on the integer path int16
    little-endian bytes (views of its arena), as the file holds them."""
    arrays = []
    for ad in tuner.adapters:
        if ad is not None:
            arrays += [ad.qa, ad.qb] if tuner.path == "int" else [ad.a, ad.b]
    if tuner.family == "ft":
        for i in range(tuner.first, len(tuner.bias)):
            if tuner.weights[i] is not None:
                arrays.append(tuner.weights[i])
            arrays.append(tuner.bias[i])
    return arrays


def _count(a, path):
    return len(a) // 2 if path == "int" else len(a)


def encode(arrays, path, model_crc):
    code = _VALUE[PATHS.index(path)]
    out = bytearray(struct.pack(_HEAD, MAGIC, VERSION, len(arrays), PATHS.index(path), 0, model_crc))
    for a in arrays:
        out += struct.pack("<I", _count(a, path))
    for a in arrays:
        out += a if path == "int" else struct.pack("<%d%s" % (len(a), code), *a)
    return bytes(out + struct.pack("<I", binascii.crc32(out) & 0xFFFFFFFF))


def check(data):
    """(path, lengths, model file's CRC32) of a whole, uncorrupted adapter file; AdapterError otherwise."""
    if len(data) < _HEAD_SIZE + 4 or data[:4] != MAGIC:
        raise AdapterError("not an adapter file")
    if struct.unpack_from("<I", data, len(data) - 4)[0] != binascii.crc32(data[:-4]) & 0xFFFFFFFF:
        raise AdapterError("adapter file failed its CRC")
    _, version, n, path, _, model_crc = struct.unpack_from(_HEAD, data, 0)
    if version != VERSION:
        raise AdapterError("adapter file version %d, expected %d: train and SAVE again" % (version, VERSION))
    if path >= len(PATHS) or len(data) < _HEAD_SIZE + 4 * n + 4:
        raise AdapterError("adapter file header is malformed")
    lengths = struct.unpack_from("<%dI" % n, data, _HEAD_SIZE)
    width = 4 if PATHS[path] == "float" else 2
    if len(data) != _HEAD_SIZE + 4 * n + width * sum(lengths) + 4:
        raise AdapterError("adapter file is %d bytes, its header says %d" % (
            len(data), _HEAD_SIZE + 4 * n + width * sum(lengths) + 4))
    return PATHS[path], list(lengths), model_crc


def restore(tuner, data, model_crc):
    """Copy a saved file into the tuner's arrays; nothing changes unless it was trained on the model
    whose file has CRC32 `model_crc` and every array fits."""
    path, lengths, saved_crc = check(data)
    if saved_crc != model_crc:
        raise AdapterError("the saved adapter was trained on another model (model file CRC32 %08x, the loaded "
                           "one's %08x): train and SAVE with this model" % (saved_crc, model_crc))
    if path != tuner.path:
        raise AdapterError("the saved adapter is from the %s path, this tuner runs the %s path" % (path, tuner.path))
    arrays = parameters(tuner)
    counts = [_count(a, path) for a in arrays]
    if lengths != counts:
        raise AdapterError("saved shapes %s do not fit this tuner's %s" % (lengths, counts))
    at = _HEAD_SIZE + 4 * len(lengths)
    if path == "int":  # int16 bytes as the tuner holds them: any value is valid
        for a in arrays:
            a[:] = memoryview(data)[at:at + len(a)]
            at += len(a)
        return
    values = []
    for a in arrays:  # decode and check everything before the first array is touched
        v = struct.unpack_from("<%df" % len(a), data, at)
        for x in v:
            if x != x or x in (float("inf"), float("-inf")):
                raise AdapterError("the saved adapter holds a non-finite value")
        values.append(v)
        at += 4 * len(a)
    for a, v in zip(arrays, values):
        for k in range(len(a)):
            a[k] = v[k]
