"""Quantize a float network and write/read model files (the format is defined in s2l.modelfile:
version 2 written, versions 1 and 2 read)."""
from dataclasses import dataclass

import numpy as np

from s2l import modelfile as fmt
from s2l.modelfile import ModelError  # re-exported: the one error type for bad model files

__all__ = ["ModelError", "QuantizedLayer", "ModelFile", "quantize", "write_model", "read_model",
           "read_model_file", "quantization_report", "fit_norm", "normalise"]


@dataclass
class QuantizedLayer:
    q: np.ndarray       # int8 [out, in], values in [-qmax, qmax]
    scales: np.ndarray  # float32: [out] per channel, [1] per tensor, [out, ceil(in / G)] per group of G
    bias: np.ndarray    # float32 [out]
    bits: int
    granularity: int = fmt.PER_CHANNEL

    def column_scales(self):
        """The scale of every weight, [out, in] (float32)."""
        n_out, n_in = self.q.shape
        if self.granularity == fmt.PER_TENSOR:
            return np.full((n_out, n_in), self.scales[0], np.float32)
        if self.granularity == fmt.PER_CHANNEL:
            return np.repeat(self.scales[:, None], n_in, axis=1)
        return np.repeat(self.scales, self.granularity, axis=1)[:, :n_in]

    def dequantized(self):
        return self.q.astype(np.float32) * self.column_scales()


# Below 8 bits the scale is searched: absmax / qmax wastes the few levels on the rare largest
# weight (a ternary layer scaled by its absmax rounds most weights to zero), so each scale group
# takes the fraction of its absmax, from this grid, that gives the least squared error. At 8 bits
# absmax keeps every weight unclipped and the rounding error is already small.
CLIP_RATIOS = np.linspace(0.2, 1.0, 41)


def _group_scales(groups, bits):
    """One scale per row of `groups` [..., size] (zero-padded weights): the least-squared-error
    clip of CLIP_RATIOS below 8 bits, absmax / qmax at 8."""
    top = fmt.qmax(bits)
    absmax = np.abs(groups).max(axis=-1)
    absmax = np.where(absmax > 0, absmax, top)  # an all-zero group: any scale, 1.0
    if bits == 8:
        return (absmax / top).astype(np.float32)
    scales = absmax[None] * CLIP_RATIOS.reshape(-1, *[1] * absmax.ndim) / top
    q = np.clip(np.rint(groups[None] / scales[..., None]), -top, top)
    errors = ((q * scales[..., None] - groups[None]) ** 2).sum(axis=-1)
    return np.take_along_axis(scales, errors.argmin(axis=0)[None], axis=0)[0].astype(np.float32)


def quantize(weight, bias, bits, granularity=fmt.PER_CHANNEL):
    """Symmetric quantization of weight [out, in] to `bits` bits, one scale per output channel,
    per group of `granularity` input columns, or per tensor (fmt.PER_TENSOR)."""
    weight = np.asarray(weight)
    n_out, n_in = weight.shape
    fmt.check_config([n_in, n_out], [bits], [granularity])
    top = fmt.qmax(bits)
    if granularity == fmt.PER_TENSOR:
        scales = _group_scales(weight.reshape(1, -1), bits)
        per_weight = np.full(weight.shape, scales[0], np.float32)
    elif granularity == fmt.PER_CHANNEL:
        scales = _group_scales(weight, bits)
        per_weight = scales[:, None]
    else:
        groups = -(-n_in // granularity)
        padded = np.zeros((n_out, groups * granularity), weight.dtype)
        padded[:, :n_in] = weight
        scales = _group_scales(padded.reshape(n_out, groups, granularity), bits)
        per_weight = np.repeat(scales, granularity, axis=1)[:, :n_in]
    q = np.clip(np.rint(weight / per_weight), -top, top).astype(np.int8)
    return QuantizedLayer(q, scales, np.asarray(bias, np.float32), bits, granularity)


def _pack_rows(q, bits):
    # each row a little-endian bit stream: value c at bits c*b .. c*b+b-1
    n_out, n_in = q.shape
    fields = q.astype(np.uint8) & ((1 << bits) - 1)
    stream = ((fields[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(n_out, n_in * bits)
    padded = np.zeros((n_out, 8 * fmt.row_bytes(n_in, bits)), np.uint8)
    padded[:, :n_in * bits] = stream
    return np.packbits(padded, axis=1, bitorder="little").tobytes()


def _unpack_rows(raw, n_out, n_in, bits):
    data = np.frombuffer(raw, np.uint8).reshape(n_out, -1)
    stream = np.unpackbits(data, axis=1, bitorder="little")[:, :n_in * bits].reshape(n_out, n_in, bits)
    signed = (stream.astype(np.int16) << np.arange(bits, dtype=np.int16)).sum(axis=2)
    signed[signed > fmt.qmax(bits)] -= 1 << bits
    return signed.astype(np.int8)


@dataclass
class ModelFile:
    layers: list        # QuantizedLayer per layer
    adapter: tuple = None  # (A list [in_i, r], B list [r, n_classes]) float32, or None
    norm: tuple = None     # (mean [n0], inv_std [n0]) float32, or None
    lr: float = None       # the default learning rate (picked at export), or None


def write_model(layers, adapter=None, norm=None, lr=None):
    """Serialize QuantizedLayers to format-v2 bytes, with an optional starting adapter
    (A list [in_i, r], B list [r, n_classes]), input normalisation (mean, inv_std) and default lr."""
    dims = [layers[0].q.shape[1]] + [layer.q.shape[0] for layer in layers]
    bits, granularity = [layer.bits for layer in layers], [layer.granularity for layer in layers]
    fmt.check_config(dims, bits, granularity)
    flags = ((fmt.FLAG_ADAPTER if adapter is not None else 0) | (fmt.FLAG_NORM if norm is not None else 0)
             | (fmt.FLAG_LR if lr is not None else 0))
    body = bytearray(fmt.encode_header(dims, bits, granularity, flags))
    for layer in layers:
        start = len(body)
        body += layer.scales.astype("<f4").tobytes() + layer.bias.astype("<f4").tobytes()
        body += _pack_rows(layer.q, layer.bits)
        n_in, n_out = layer.q.shape[1], layer.q.shape[0]
        body += bytes(start + fmt.layer_size(n_in, n_out, layer.bits, layer.granularity) - len(body))
    if adapter is not None:
        a_list, b_list = adapter
        rank = a_list[0].shape[1]
        shapes = [(n_in, rank) for n_in in dims[:-1]], [(rank, dims[-1])] * len(layers)
        if [a.shape for a in a_list] != shapes[0] or [b.shape for b in b_list] != shapes[1]:
            raise ModelError("adapter shapes %s / %s do not fit dims %s at rank %d" % (
                [a.shape for a in a_list], [b.shape for b in b_list], dims, rank))
        if not 1 <= rank <= fmt.MAX_RANK:
            raise ModelError("bad adapter rank %d (1..%d)" % (rank, fmt.MAX_RANK))
        body += np.uint32(rank).astype("<u4").tobytes()
        for a, b in zip(a_list, b_list):
            body += np.asarray(a, "<f4").tobytes() + np.asarray(b, "<f4").tobytes()
    if norm is not None:
        mean, inv_std = (np.asarray(v, "<f4").reshape(-1) for v in norm)
        if len(mean) != dims[0] or len(inv_std) != dims[0]:
            raise ModelError("normalisation needs %d means and inverse deviations" % dims[0])
        body += mean.tobytes() + inv_std.tobytes()
    if lr is not None:
        if not fmt.LR_RANGE[0] <= lr <= fmt.LR_RANGE[1]:
            raise ModelError("bad default lr %r (%g..%g)" % (lr, *fmt.LR_RANGE))
        body += np.float32(lr).astype("<f4").tobytes()
    data = bytes(body) + fmt.crc_trailer(body)
    fmt.parse(data)  # what the board will refuse (a non-finite constant, an lr rounded out of range) is refused here
    return data


def fit_norm(X):
    """Input normalisation constants (mean, inv_std), float32 per feature, from the lab's data X
    [n, features]; a constant feature keeps its scale (inv_std 1)."""
    X = np.asarray(X, np.float64)
    mean, std = X.mean(axis=0), X.std(axis=0)
    with np.errstate(divide="ignore"):
        inv_std = np.where(std > 0, 1.0 / std, 1.0).astype(np.float32)
    inv_std[~np.isfinite(inv_std)] = 1.0
    return mean.astype(np.float32), inv_std


def normalise(X, norm):
    """The network's input for raw readings X [n, features]: (X - mean) * inv_std in float32, as
    the board computes it (s2l.model.Model.normalised); X itself (as float32) when norm is None."""
    X = np.asarray(X, np.float32)
    if norm is None:
        return X
    mean, inv_std = norm
    return (X - mean) * inv_std


def read_model_file(data):
    """Validate model bytes (raises ModelError naming the problem); the layers and sections."""
    layout = fmt.parse(data)
    layers = []
    for i, (scales_at, bias_at, weights_at) in enumerate(layout.offsets):
        n_in, n_out, bits, gran = layout.dims[i], layout.dims[i + 1], layout.bits[i], layout.granularity[i]
        count = fmt.n_scales(n_in, n_out, gran)
        scales = np.frombuffer(data, "<f4", count, scales_at).astype(np.float32)
        if gran not in (fmt.PER_CHANNEL, fmt.PER_TENSOR):
            scales = scales.reshape(n_out, -1)
        bias = np.frombuffer(data, "<f4", n_out, bias_at).astype(np.float32)
        raw = data[weights_at:weights_at + n_out * fmt.row_bytes(n_in, bits)]
        layers.append(QuantizedLayer(_unpack_rows(raw, n_out, n_in, bits), scales, bias, bits, gran))
    adapter = norm = None
    if layout.adapter_at is not None:
        r, at, a_list, b_list = layout.rank, layout.adapter_at, [], []
        for n_in in layout.dims[:-1]:
            a_list.append(np.frombuffer(data, "<f4", n_in * r, at).astype(np.float32).reshape(n_in, r))
            at += 4 * n_in * r
            b_list.append(np.frombuffer(data, "<f4", r * layout.dims[-1], at).astype(np.float32).reshape(r, -1))
            at += 4 * r * layout.dims[-1]
        adapter = (a_list, b_list)
    if layout.norm_at is not None:
        n0 = layout.dims[0]
        norm = (np.frombuffer(data, "<f4", n0, layout.norm_at).astype(np.float32),
                np.frombuffer(data, "<f4", n0, layout.norm_at + 4 * n0).astype(np.float32))
    return ModelFile(layers, adapter, norm, layout.lr)


def read_model(data):
    """The QuantizedLayers of model bytes (validated)."""
    return read_model_file(data).layers


def quantization_report(weights, layers):
    """Per layer: bits, RMS and max-abs error of the dequantized weights, relative to the weight RMS."""
    rows = []
    for i, ((w, _b), layer) in enumerate(zip(weights, layers)):
        err = layer.dequantized() - w
        rms = float(np.sqrt(np.mean(w ** 2)))
        rows.append({
            "layer": i, "shape": list(w.shape), "bits": layer.bits,
            "granularity": fmt.granularity_name(layer.granularity),
            "rms_error": float(np.sqrt(np.mean(err ** 2))),
            "relative_rms_error": float(np.sqrt(np.mean(err ** 2)) / rms) if rms else 0.0,
            "max_abs_error": float(np.abs(err).max()),
        })
    return rows
