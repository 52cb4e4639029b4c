import struct
import binascii

import numpy as np
import pytest

from s2l import modelfile as fmt
from skip2lora.modelfile import ModelError, quantize, read_model, write_model


def random_layers(bits=(8, 4, 2), dims=(13, 7, 5, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [quantize(rng.normal(size=(n_out, n_in)), rng.normal(size=n_out), b)
            for n_in, n_out, b in zip(dims[:-1], dims[1:], bits)]


def with_crc(body):
    return bytes(body) + struct.pack("<I", binascii.crc32(bytes(body)) & 0xFFFFFFFF)


def test_round_trip_mixed_bit_widths():
    layers = random_layers()
    back = read_model(write_model(layers))
    assert [layer.bits for layer in back] == [8, 4, 2]
    for a, b in zip(layers, back):
        np.testing.assert_array_equal(a.q, b.q)
        np.testing.assert_array_equal(a.scales, b.scales)
        np.testing.assert_array_equal(a.bias, b.bias)


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


def test_dequantization_error_is_bounded_by_half_a_step():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 40))
    for bits in (8, 4):
        layer = quantize(w, np.zeros(6), bits)
        err = np.abs(layer.dequantized() - w).max(axis=1)
        assert np.all(err <= layer.scales * 0.5 + 1e-6)


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
    data[4] = 2
    with pytest.raises(ModelError, match="version 2"):
        read_model(with_crc(data[:-4]))


def test_unsupported_bit_width_in_file():
    data = bytearray(write_model(random_layers()))
    n = data[5]
    data[8 + 2 * (n + 1) + 1] = 3  # layer 1 says 3 bits
    with pytest.raises(ModelError, match="bit width 3 in layer 1"):
        read_model(with_crc(data[:-4]))


def test_unsupported_bit_width_on_export():
    with pytest.raises(ModelError, match="bit width 3"):
        quantize(np.ones((2, 2)), np.zeros(2), 3)


def test_trailing_bytes_are_rejected():
    with pytest.raises(ModelError, match="trailing"):
        read_model(write_model(random_layers()) + b"\0")
