"""The two kernel flavours: the portable one is chosen where there is no native emitter, and the
board flavour computes exactly what the portable one does (run here through a shim that makes
@micropython.native / viper plain Python, so that its arithmetic can be compared)."""
from array import array

import numpy as np
import pytest

from s2l import kernels as portable


@pytest.fixture
def native(board_flavour):
    return board_flavour("s2l.kernels_native")


def floats(rng, n):
    v = rng.normal(0, 1, n)
    v[rng.random(n) < 0.3] = 0.0  # zeros take the kernels' skip branches
    return array("f", v)


def pack(q, bits):
    # a little-endian bit stream, value c at bit c * bits (the model format's rows)
    stream = 0
    for c, v in enumerate(q):
        stream |= (int(v) & ((1 << bits) - 1)) << (c * bits)
    return bytearray(stream.to_bytes((len(q) * bits + 7) // 8, "little"))


def column_scales(scales, group, rows, cols):
    if group == 0:
        return np.repeat(np.asarray(scales, np.float64)[:, None], cols, axis=1)
    per_row = -(-cols // group)
    return np.repeat(np.asarray(scales, np.float64).reshape(rows, per_row), group, axis=1)[:, :cols]


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 0), (3, 0), (2, 0), (3, 16), (4, 32), (8, 16)])
def test_native_flavour_equals_portable(native, bits, group):
    rng = np.random.default_rng(bits + group)
    rows, cols = 7, 37
    qmax = (1 << (bits - 1)) - 1
    q = rng.integers(-qmax, qmax + 1, (rows, cols))
    q[0, :3] = [-qmax, qmax, 0]  # the extremes of the signed range
    packed = b"".join(pack(r, bits) for r in q)
    row_bytes = len(packed) // rows
    m, x, xr = floats(rng, rows * cols), floats(rng, cols), floats(rng, rows)
    scales = array("f", rng.uniform(0.1, 1, rows * (-(-cols // group) if group else 1)))

    def both(name, *args, out_len, scratch=False):
        """`name` run by each flavour on fresh outputs preloaded with 0.5: (native, portable)."""
        results = []
        for k in (native, portable):
            out = array("f", [0.5] * out_len)
            extra = (array("i", [0] * cols),) if scratch else ()
            getattr(k, name)(*args, out, *extra)
            results.append(list(out))
        return results

    got, want = both("mv", m, rows, cols, x, out_len=rows)
    assert got == want
    got, want = both("mtv", m, rows, cols, xr, out_len=cols)
    assert got == want
    M = np.asarray(m, np.float64).reshape(rows, cols)
    np.testing.assert_allclose(want, 0.5 + M.T @ np.asarray(xr), rtol=1e-5, atol=1e-6)
    packed_args = (memoryview(packed), row_bytes, bits, scales, group, rows, cols)
    w = q * column_scales(scales, group, rows, cols)
    got, want = both("mv_packed", *packed_args, x, out_len=rows, scratch=True)
    assert got == want
    np.testing.assert_allclose(want, 0.5 + w @ np.asarray(x), rtol=1e-5, atol=1e-5)
    got, want = both("mtv_packed", *packed_args, xr, out_len=cols, scratch=True)
    assert got == want
    np.testing.assert_allclose(want, 0.5 + w.T @ np.asarray(xr), rtol=1e-5, atol=1e-5)
    updated = []
    for k in (native, portable):
        row = array("i", [0] * cols)
        for r in (0, rows - 1):
            k.unpack_row(memoryview(packed), r * row_bytes, bits, cols, row)
            assert list(row) == list(q[r])
        mm, g = array("f", m), array("f", m)
        k.outer_add(mm, rows, cols, xr, x)
        np.testing.assert_allclose(np.reshape(mm, (rows, cols)), M + np.outer(xr, x), rtol=1e-5, atol=1e-6)
        k.sub_scaled(mm, g, 0.25)
        assert list(g) == [0.0] * len(g)
        updated.append(list(mm))
    assert updated[0] == updated[1]


def test_each_runtime_picks_its_flavour(run, runtime):
    # the native emitter where the interpreter has one (the unix port), else the portable fallback
    native = runtime == "micropython-unix"
    assert run("""
        from s2l import ikernels, kernels
        print(kernels.FLAVOUR, ikernels.FLAVOUR, kernels.mv.__name__)
    """).split() == (["native", "viper"] if native else ["portable", "portable"]) + ["mv"]
