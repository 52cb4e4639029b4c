# What fine-tuning learned, as a file on flash: the adapters (A, B of each; int16 values on the
# integer path, exact as float32), or for FT-* methods the float weights and biases they train. Layout, little-endian:
#   "S2LA" | u8 version | u8 n_arrays | u16 0 | u32 length[n_arrays] | f32 values... | u32 CRC32
import binascii
import struct

MAGIC = b"S2LA"
VERSION = 1


class AdapterError(ValueError):
    pass


def parameters(tuner):
    """The tuner's trained arrays, in a fixed order."""
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


def encode(arrays):
    out = bytearray(MAGIC + struct.pack("<BBH", VERSION, len(arrays), 0))
    for a in arrays:
        out += struct.pack("<I", len(a))
    for a in arrays:
        out += struct.pack("<%df" % len(a), *a)
    return bytes(out + struct.pack("<I", binascii.crc32(out) & 0xFFFFFFFF))


def restore(tuner, data):
    """Copy a saved file into the tuner's arrays; nothing changes unless the file fits them all."""
    arrays = parameters(tuner)
    if len(data) < 12 or data[:4] != MAGIC:
        raise AdapterError("not an adapter file")
    if struct.unpack_from("<I", data, len(data) - 4)[0] != binascii.crc32(data[:-4]) & 0xFFFFFFFF:
        raise AdapterError("adapter file failed its CRC")
    version, n = data[4], data[5]
    if version != VERSION:
        raise AdapterError("adapter file version %d, expected %d" % (version, VERSION))
    lengths = struct.unpack_from("<%dI" % n, data, 8)
    if list(lengths) != [len(a) for a in arrays]:
        raise AdapterError("saved shapes %s do not fit this tuner's %s" % (list(lengths), [len(a) for a in arrays]))
    at = 8 + 4 * n
    for a in arrays:
        values = struct.unpack_from("<%df" % len(a), data, at)
        whole = len(a) and isinstance(a[0], int)  # the integer path's int16 adapters
        for k in range(len(a)):
            a[k] = int(values[k]) if whole else values[k]
        at += 4 * len(a)
