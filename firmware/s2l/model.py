# A frozen network loaded from a format-v1 model file. Weights stay packed (8/4/2 bits per value)
# in the file's own buffer and are dequantized on the fly, row by row; only scales and biases are
# float arrays.
import struct
from array import array

from s2l import kernels, modelfile


def floats(buf, offset, n):
    return array("f", struct.unpack_from("<%df" % n, buf, offset))


class Model:
    def __init__(self, buf):
        layout = modelfile.parse(buf)  # raises ModelError before anything is kept
        self.buf = buf
        self.dims = layout.dims
        self.bits = layout.bits
        self.scales, self.bias, self.weights_at, self.row_bytes = [], [], [], []
        for i, (scales_at, bias_at, weights_at) in enumerate(layout.offsets):
            n_out = self.dims[i + 1]
            self.scales.append(floats(buf, scales_at, n_out))
            self.bias.append(floats(buf, bias_at, n_out))
            self.weights_at.append(weights_at)
            self.row_bytes.append(modelfile.row_bytes(self.dims[i], self.bits[i]))
        self.row = kernels.zeros(max(self.dims), "i")  # scratch for one unpacked weight row

    @property
    def n_layers(self):
        return len(self.bits)

    def packed(self, i):
        start = self.weights_at[i]
        return memoryview(self.buf)[start:start + self.dims[i + 1] * self.row_bytes[i]]

    def mv(self, i, x, out):
        # out += W_i x
        kernels.mv_packed(self.packed(i), self.row_bytes[i], self.bits[i], self.scales[i],
                          self.dims[i + 1], self.dims[i], x, out, self.row)

    def mtv(self, i, g, out):
        # out += W_i^T g
        kernels.mtv_packed(self.packed(i), self.row_bytes[i], self.bits[i], self.scales[i],
                           self.dims[i + 1], self.dims[i], g, out, self.row)

    def dequantized(self, i):
        # float copy of layer i's weights, for the methods that train them (FT-*)
        n_out, n_in = self.dims[i + 1], self.dims[i]
        w = kernels.zeros(n_out * n_in)
        for r in range(n_out):
            kernels.unpack_row(self.packed(i), r * self.row_bytes[i], self.bits[i], n_in, self.row)
            s = self.scales[i][r]
            for c in range(n_in):
                w[r * n_in + c] = self.row[c] * s
        return w


def load(path):
    with open(path, "rb") as f:
        return Model(f.read())
