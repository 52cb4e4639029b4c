import struct
import binascii

import numpy as np
import pytest

from s2l import modelfile as fmt
from skip2lora.train.modelfile import ModelError, quantize, read_model, read_model_file, write_model


def random_layers(bits=(8, 4, 2), dims=(13, 7, 5, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [quantize(rng.normal(size=(n_out, n_in)), rng.normal(size=n_out), b)
            for n_in, n_out, b in zip(dims[:-1], dims[1:], bits)]


def with_crc(body):
    return bytes(body) + struct.pack("<I", binascii.crc32(bytes(body)) & 0xFFFFFFFF)


def random_config(rng, n_layers):
    return ([int(b) for b in rng.choice([2, 3, 4, 8], n_layers)],
            [int(g) for g in rng.choice(fmt.GRANULARITIES, n_layers)])


def test_round_trip_mixed_bit_widths_and_granularities():
    dims = (37, 7, 5, 3)
    layers = [quantize(np.random.default_rng(i).normal(size=(n_out, n_in)), np.ones(n_out), b, g)
              for i, (n_in, n_out, b, g) in enumerate(zip(dims[:-1], dims[1:], (3, 4, 2), (16, fmt.PER_TENSOR, 32)))]
    back = read_model(write_model(layers))
    assert [layer.bits for layer in back] == [3, 4, 2]
    assert [layer.granularity for layer in back] == [16, fmt.PER_TENSOR, 32]
    assert back[0].scales.shape == (7, 3) and back[1].scales.shape == (1,)
    for a, b in zip(layers, back):
        np.testing.assert_array_equal(a.q, b.q)
        np.testing.assert_array_equal(a.scales, b.scales)
        np.testing.assert_array_equal(a.bias, b.bias)
        np.testing.assert_array_equal(a.dequantized(), b.dequantized())


def test_storage_bytes_equal_the_written_file_for_many_configurations():
    rng = np.random.default_rng(3)
    for trial in range(60):
        n = int(rng.integers(1, 5))
        dims = [int(d) for d in rng.integers(1, 80, n + 1)]
        bits, gran = random_config(rng, n)
        layers = [quantize(rng.normal(size=(n_out, n_in)), rng.normal(size=n_out), b, g)
                  for n_in, n_out, b, g in zip(dims[:-1], dims[1:], bits, gran)]
        rank = int(rng.integers(0, 5)) if trial % 2 else 0
        adapter = None
        if rank:
            adapter = ([rng.normal(size=(d, rank)) for d in dims[:-1]], [rng.normal(size=(rank, dims[-1]))] * n)
        norm = (rng.normal(size=dims[0]), rng.uniform(1, 2, dims[0])) if trial % 3 == 0 else None
        lr = 0.02 if trial % 4 == 1 else None
        data = write_model(layers, adapter, norm, lr)
        assert fmt.file_size(dims, bits, gran, rank, norm is not None, lr is not None) == len(data), (
            dims, bits, gran, rank, lr)


def test_sections_round_trip():
    layers = random_layers(bits=(3, 8, 2))
    rng = np.random.default_rng(2)
    a = [rng.normal(size=(d, 2)).astype(np.float32) for d in (13, 7, 5)]
    b = [rng.normal(size=(2, 3)).astype(np.float32) for _ in range(3)]
    norm = (rng.normal(size=13).astype(np.float32), rng.uniform(1, 2, 13).astype(np.float32))
    back = read_model_file(write_model(layers, (a, b), norm, lr=0.02))
    for got, want in zip(back.adapter[0] + back.adapter[1] + list(back.norm), a + b + list(norm)):
        np.testing.assert_array_equal(got, want)
    assert back.lr == np.float32(0.02)
    plain = read_model_file(write_model(layers))
    assert plain.adapter is None and plain.norm is None and plain.lr is None
    only_norm = read_model_file(write_model(layers, norm=norm))
    assert only_norm.adapter is None and only_norm.lr is None
    only_lr = read_model_file(write_model(layers, lr=0.1))
    assert only_lr.norm is None and only_lr.lr == np.float32(0.1)


def test_a_truncated_section_is_named():
    layers = random_layers()
    norm = (np.zeros(13), np.ones(13))
    data = write_model(layers, norm=norm, lr=0.05)
    norm_at = len(data) - 4 - fmt.LR_SIZE - fmt.norm_size([13])
    with pytest.raises(ModelError, match="truncated: %d bytes, expected %d, inside the normalisation section" % (
            norm_at + 20, len(data))):
        read_model(data[:norm_at + 20])
    with pytest.raises(ModelError, match="inside the lr section"):
        read_model(data[:len(data) - 6])


def test_bad_lr_and_non_finite_normalisation_are_refused():
    layers = random_layers()
    for lr in (0.0, -0.05, 11.0, float("nan")):
        with pytest.raises(ModelError, match="bad default lr"):
            write_model(layers, lr=lr)
    body = bytearray(write_model(layers, lr=0.05)[:-4])
    body[-4:] = struct.pack("<f", float("inf"))
    with pytest.raises(ModelError, match="bad default lr inf"):
        read_model(with_crc(body))
    with pytest.raises(ModelError, match="non-finite normalisation inv_std nan for input 3"):
        write_model(layers, norm=(np.zeros(13), np.where(np.arange(13) == 3, np.nan, 1.0)))


def test_version_1_files_still_read():
    # a version-1 file written by hand: header with no granularity bytes, flags 0
    q = np.array([[1, -1, 0, 1, -1], [0, 0, 0, 0, 1]], np.int8)
    header = b"S2LM" + struct.pack("<BBH", 1, 1, 0) + struct.pack("<2H", 5, 2) + bytes([2])
    header += bytes(fmt.header_size(1, 1) - len(header))
    body = header + struct.pack("<4f", 0.5, 0.25, 1.0, -1.0) + bytes([0b01001101, 0b11, 0, 0b01])
    layer = read_model(with_crc(body))[0]
    np.testing.assert_array_equal(layer.q, q)
    np.testing.assert_array_equal(layer.dequantized(), q * np.array([[0.5], [0.25]], np.float32))
    assert layer.granularity == fmt.PER_CHANNEL


def test_three_bit_rows_are_a_little_endian_bit_stream():
    q = np.array([[1, -1, 3, -3, 2, 0]], np.int8)  # 6 x 3 bits = 18 bits -> 3 bytes
    data = write_model([quantize(q.astype(float), np.zeros(1), 3)])
    offset = fmt.parse(data).offsets[0][2]
    fields = [int(v) & 7 for v in q[0]]
    stream = sum(f << (3 * c) for c, f in enumerate(fields))
    assert data[offset:offset + 3] == stream.to_bytes(3, "little")
    assert data[offset + 3] == 0  # padding to a multiple of 4


@pytest.mark.parametrize("granularity", [16, 32, fmt.PER_TENSOR])
def test_group_and_tensor_scales(granularity):
    rng = np.random.default_rng(4)
    w = rng.normal(size=(5, 40))
    layer = quantize(w, np.zeros(5), 4, granularity)
    cols = layer.column_scales()
    inside = np.abs(w) <= cols * fmt.qmax(4)  # the weights the searched scale does not clip
    assert np.all(np.abs(layer.dequantized() - w)[inside] <= cols[inside] * 0.5 + 1e-6)
    if granularity == fmt.PER_TENSOR:
        assert layer.scales.shape == (1,) and np.abs(layer.q).max() == fmt.qmax(4)
    else:
        assert layer.scales.shape == (5, -(-40 // granularity))
        np.testing.assert_allclose(cols[:, :granularity], np.repeat(layer.scales[:, :1], granularity, axis=1))


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quantized_values_use_the_symmetric_range(bits):
    layer = random_layers(bits=(bits,), dims=(50, 20))[0]
    top = fmt.qmax(bits)
    assert layer.q.min() == -top and layer.q.max() == top  # the largest |w| of a row maps to qmax
    assert np.abs(layer.q).max() <= top


def test_packing_layout_is_lsb_first_and_rows_start_on_a_byte():
    q = np.array([[1, -1, 0, 1, -1], [0, 0, 0, 0, 1]], np.int8)  # 2-bit: 5 values -> 2 bytes per row
    layer = quantize(q.astype(float), np.zeros(2), 2)
    data = write_model([layer])
    offset = fmt.parse(data).offsets[0][2]
    # row 0: 01 11 00 01 | 11 -> byte0 = 0b01_00_11_01, byte1 = 0b11
    assert data[offset:offset + 4] == bytes([0b01001101, 0b00000011, 0, 0b01])


def test_eight_bit_scales_are_absmax_and_the_error_is_half_a_step():
    w = np.random.default_rng(1).normal(size=(6, 40))
    layer = quantize(w, np.zeros(6), 8)
    np.testing.assert_allclose(layer.scales, np.abs(w).max(axis=1) / 127, rtol=1e-6)
    err = np.abs(layer.dequantized() - w).max(axis=1)
    assert np.all(err <= layer.scales * 0.5 + 1e-6)


@pytest.mark.parametrize("granularity", [fmt.PER_CHANNEL, 16, fmt.PER_TENSOR])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_low_bit_scales_clip_for_the_least_squared_error(bits, granularity):
    # Gaussian weights: absmax scaling rounds most of a ternary row to zero; the searched clip
    # must do no worse than absmax (ratio 1.0 is in the grid) and, at 2 bits, much better
    w = np.random.default_rng(2).normal(size=(8, 64))
    layer = quantize(w, np.zeros(8), bits, granularity)
    top = fmt.qmax(bits)
    groups = {fmt.PER_CHANNEL: w.reshape(8, 1, 64), 16: w.reshape(8, 4, 16), fmt.PER_TENSOR: w.reshape(1, 1, 512)}
    step = np.abs(groups[granularity]).max(axis=2, keepdims=True) / top
    absmax_error = ((np.clip(np.rint(groups[granularity] / step), -top, top) * step - groups[granularity]) ** 2).sum()
    searched_error = ((layer.dequantized() - w) ** 2).sum()
    assert searched_error <= absmax_error * (1 + 1e-6)
    if bits == 2:
        assert searched_error < 0.8 * absmax_error
    assert np.abs(layer.q).max() == top  # the clipped weights sit on the outermost level


def test_truncated_file_is_named_as_truncated():
    data = write_model(random_layers())
    for cut in (3, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(ModelError, match="truncated"):
            read_model(data[:cut])


def test_wrong_magic():
    data = bytearray(write_model(random_layers()))
    data[0:4] = b"XXXX"
    with pytest.raises(ModelError, match="magic"):
        read_model(with_crc(data[:-4]))


def test_crc_mismatch():
    data = bytearray(write_model(random_layers()))
    data[40] ^= 0x01
    with pytest.raises(ModelError, match="CRC mismatch"):
        read_model(bytes(data))


def test_unsupported_version():
    data = bytearray(write_model(random_layers()))
    data[4] = 3
    with pytest.raises(ModelError, match="version 3"):
        read_model(with_crc(data[:-4]))


def test_unknown_flags():
    data = bytearray(write_model(random_layers()))
    data[6] = 0x80
    with pytest.raises(ModelError, match="unknown flags 0x0080"):
        read_model(with_crc(data[:-4]))


def test_unsupported_bit_width_in_file():
    data = bytearray(write_model(random_layers()))
    n = data[5]
    data[8 + 2 * (n + 1) + 1] = 5  # layer 1 says 5 bits
    with pytest.raises(ModelError, match="bit width 5 in layer 1"):
        read_model(with_crc(data[:-4]))


def test_unsupported_granularity_in_file():
    data = bytearray(write_model(random_layers()))
    n = data[5]
    data[8 + 2 * (n + 1) + n + 2] = 8  # layer 2 says groups of 8
    with pytest.raises(ModelError, match="granularity 8 in layer 2"):
        read_model(with_crc(data[:-4]))


def test_a_configuration_the_format_cannot_hold_is_named_on_export():
    with pytest.raises(ModelError, match="bit width 5"):
        quantize(np.ones((2, 2)), np.zeros(2), 5)
    with pytest.raises(ModelError, match="granularity 64"):
        quantize(np.ones((2, 2)), np.zeros(2), 4, 64)


def test_trailing_bytes_are_rejected():
    with pytest.raises(ModelError, match="trailing"):
        read_model(write_model(random_layers()) + b"\0")
