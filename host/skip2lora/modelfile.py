"""Quantize a float network and write/read model files (format v1, defined in s2l.modelfile)."""
from dataclasses import dataclass

import numpy as np

from s2l import modelfile as fmt
from s2l.modelfile import ModelError  # re-exported: the one error type for bad model files

__all__ = ["ModelError", "QuantizedLayer", "quantize", "write_model", "read_model", "quantization_report"]


@dataclass
class QuantizedLayer:
    q: np.ndarray       # int8 [out, in], values in [-qmax, qmax]
    scales: np.ndarray  # float32 [out], per output channel
    bias: np.ndarray    # float32 [out]
    bits: int

    def dequantized(self):
        return self.q.astype(np.float32) * self.scales[:, None]


def quantize(weight, bias, bits):
    """Symmetric per-output-channel quantization of weight [out, in] to `bits` bits."""
    if bits not in fmt.SUPPORTED_BITS:
        raise ModelError("unsupported bit width %d (supported: %s)" % (bits, fmt.SUPPORTED_BITS))
    top = fmt.qmax(bits)
    scales = np.abs(weight).max(axis=1) / top
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scales[:, None]), -top, top).astype(np.int8)
    return QuantizedLayer(q, scales, np.asarray(bias, np.float32), bits)


def _pack_rows(q, bits):
    per_byte = 8 // bits
    n_out, n_in = q.shape
    padded = np.zeros((n_out, fmt.row_bytes(n_in, bits) * per_byte), np.uint8)
    padded[:, :n_in] = q.astype(np.uint8) & ((1 << bits) - 1)
    groups = padded.reshape(n_out, -1, per_byte).astype(np.uint16)
    shifts = np.arange(per_byte, dtype=np.uint16) * bits
    return (groups << shifts).sum(axis=2).astype(np.uint8).tobytes()


def _unpack_rows(raw, n_out, n_in, bits):
    per_byte = 8 // bits
    data = np.frombuffer(raw, np.uint8).reshape(n_out, -1)
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    fields = ((data[:, :, None] >> shifts) & ((1 << bits) - 1)).reshape(n_out, -1)[:, :n_in]
    signed = fields.astype(np.int16)
    signed[signed > fmt.qmax(bits)] -= 1 << bits
    return signed.astype(np.int8)


def write_model(layers):
    """Serialize a list of QuantizedLayer to format-v1 bytes."""
    dims = [layers[0].q.shape[1]] + [layer.q.shape[0] for layer in layers]
    body = bytearray(fmt.encode_header(dims, [layer.bits for layer in layers]))
    for layer in layers:
        start = len(body)
        body += layer.scales.astype("<f4").tobytes() + layer.bias.astype("<f4").tobytes()
        body += _pack_rows(layer.q, layer.bits)
        n_in, n_out = layer.q.shape[1], layer.q.shape[0]
        body += bytes(start + fmt.layer_size(n_in, n_out, layer.bits) - len(body))
    return bytes(body) + fmt.crc_trailer(body)


def read_model(data):
    """Validate format-v1 bytes (raises ModelError naming the problem) and return QuantizedLayers."""
    layout = fmt.parse(data)
    layers = []
    for i, (scales_at, bias_at, weights_at) in enumerate(layout.offsets):
        n_in, n_out, bits = layout.dims[i], layout.dims[i + 1], layout.bits[i]
        scales = np.frombuffer(data, "<f4", n_out, scales_at).astype(np.float32)
        bias = np.frombuffer(data, "<f4", n_out, bias_at).astype(np.float32)
        raw = data[weights_at:weights_at + n_out * fmt.row_bytes(n_in, bits)]
        layers.append(QuantizedLayer(_unpack_rows(raw, n_out, n_in, bits), scales, bias, bits))
    return layers


def quantization_report(weights, layers):
    """Per layer: bits, RMS and max-abs error of the dequantized weights, relative to the weight RMS."""
    rows = []
    for i, ((w, _b), layer) in enumerate(zip(weights, layers)):
        err = layer.dequantized() - w
        rms = float(np.sqrt(np.mean(w ** 2)))
        rows.append({
            "layer": i, "shape": list(w.shape), "bits": layer.bits,
            "rms_error": float(np.sqrt(np.mean(err ** 2))),
            "relative_rms_error": float(np.sqrt(np.mean(err ** 2)) / rms) if rms else 0.0,
            "max_abs_error": float(np.abs(err).max()),
        })
    return rows
