# A frozen network loaded from a model file (format in modelfile.py). Weights stay packed (8/4/3/2
# bits per value) in the file's own buffer and are dequantized on the fly, row by row; only scales,
# biases and the optional sections are float arrays.
#
# scales[i]: per output channel (a per-tensor scale is expanded to one per channel here, it is
# tiny), so group[i] = 0; for a layer with a scale per group of G input columns, group[i] = G and
# scales[i] holds rows * ceil(cols / G) floats, row-major.
# adapter: None, or (rank, [A_i: in_i x rank], [B_i: rank x n_classes]), flat row-major floats.
# norm: None, or (mean, inv_std), one float per input: raw readings become the network's input
# (x - mean) * inv_std in normalised(), the one place the board normalises.
# lr: None, or the default learning rate the file carries (a tuner's lr when CONFIG gives none).
import struct
from array import array

from s2l import modelfile


def floats(buf, offset, n):
    return array("f", struct.unpack_from("<%df" % n, buf, offset))


def _kernels():
    # the float path's kernels, imported when the float path first needs them: the integer path
    # reads the packed weights with its own kernels and must not pay their heap
    from s2l import kernels
    return kernels


class Model:
    def __init__(self, buf):
        layout = modelfile.parse(buf)  # raises ModelError before anything is kept
        self.buf = buf
        self.dims = layout.dims
        self.bits = layout.bits
        self.scales, self.group, self.bias, self.weights_at, self.row_bytes = [], [], [], [], []
        for i, (scales_at, bias_at, weights_at) in enumerate(layout.offsets):
            n_in, n_out, gran = self.dims[i], self.dims[i + 1], layout.granularity[i]
            if gran == modelfile.PER_TENSOR:
                self.scales.append(array("f", [floats(buf, scales_at, 1)[0]] * n_out))
            else:
                self.scales.append(floats(buf, scales_at, modelfile.n_scales(n_in, n_out, gran)))
            self.group.append(0 if gran == modelfile.PER_TENSOR else gran)
            self.bias.append(floats(buf, bias_at, n_out))
            self.weights_at.append(weights_at)
            self.row_bytes.append(modelfile.row_bytes(n_in, self.bits[i]))
        self.adapter = None
        if layout.adapter_at is not None:
            rank, at, a_list, b_list = layout.rank, layout.adapter_at, [], []
            for n_in in self.dims[:-1]:
                a_list.append(floats(buf, at, n_in * rank))
                at += 4 * n_in * rank
                b_list.append(floats(buf, at, rank * self.dims[-1]))
                at += 4 * rank * self.dims[-1]
            self.adapter = (rank, a_list, b_list)
        self.norm = None
        if layout.norm_at is not None:
            n0 = self.dims[0]
            self.norm = (floats(buf, layout.norm_at, n0), floats(buf, layout.norm_at + 4 * n0, n0))
        self.lr = layout.lr
        self._row = None  # scratch for one unpacked weight row (the float path's)

    @property
    def row(self):
        if self._row is None:
            self._row = _kernels().zeros(max(self.dims), "i")
        return self._row

    def normalised(self, x):
        # the network's input for a raw reading x (float samples are raw sensor units): a new
        # array('f') when the file has normalisation constants, else x itself
        if self.norm is None:
            return x
        mean, inv_std = self.norm
        out = array("f", bytes(4 * len(mean)))
        for k in range(len(out)):
            out[k] = (x[k] - mean[k]) * inv_std[k]
        return out

    @property
    def n_layers(self):
        return len(self.bits)

    def packed(self, i):
        start = self.weights_at[i]
        return memoryview(self.buf)[start:start + self.dims[i + 1] * self.row_bytes[i]]

    def mv(self, i, x, out):
        # out += W_i x
        kernels = _kernels()
        kernels.mv_packed(self.packed(i), self.row_bytes[i], self.bits[i], self.scales[i], self.group[i],
                          self.dims[i + 1], self.dims[i], x, out, self.row)

    def mtv(self, i, g, out):
        # out += W_i^T g
        kernels = _kernels()
        kernels.mtv_packed(self.packed(i), self.row_bytes[i], self.bits[i], self.scales[i], self.group[i],
                           self.dims[i + 1], self.dims[i], g, out, self.row)

    def dequantized(self, i):
        # float copy of layer i's weights, for the methods that train them (FT-*)
        n_out, n_in, group = self.dims[i + 1], self.dims[i], self.group[i]
        per_row = (n_in + group - 1) // group if group else 1
        kernels = _kernels()
        w = kernels.zeros(n_out * n_in)
        for r in range(n_out):
            kernels.unpack_row(self.packed(i), r * self.row_bytes[i], self.bits[i], n_in, self.row)
            for c in range(n_in):
                s = self.scales[i][r * per_row + c // group] if group else self.scales[i][r]
                w[r * n_in + c] = self.row[c] * s
        return w


def load(path):
    with open(path, "rb") as f:
        return Model(f.read())
