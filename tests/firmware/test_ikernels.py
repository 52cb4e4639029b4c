"""Integer kernels: the portable twin against a numpy integer reference (random inputs plus the
rounding and saturation edges), the viper twin against the portable one (through a shim that
makes viper plain Python), and the portable twin under the real MicroPython."""
import json
from array import array

import numpy as np
import pytest

from s2l import ikernels as portable


@pytest.fixture
def viper(board_flavour):
    return board_flavour("s2l.ikernels_viper")


def np_rshift(v, s):
    v = np.asarray(v, np.int64)
    return (v + (1 << (s - 1))) >> s if s > 0 else v << -s


def pack(q, bits):
    per_byte = 8 // bits
    out = bytearray((len(q) + per_byte - 1) // per_byte)
    for c, v in enumerate(q):
        out[c // per_byte] |= (int(v) & ((1 << bits) - 1)) << ((c % per_byte) * bits)
    return bytes(out)


def cases(seed):
    """Inputs for every kernel, and the numpy reference's outputs."""
    rng = np.random.default_rng(seed)
    rows, cols = 9, 6
    m = rng.integers(-32767, 32768, rows * cols)
    m[:3] = [32767, -32767, 32760]                        # at and near saturation
    x = rng.integers(-127, 128, rows)
    x[::3] = 0                                            # skipped rows
    u = rng.integers(-2047, 2048, rows)
    v = rng.integers(-2047, 2048, cols)
    acc = rng.integers(-(1 << 30), 1 << 30, 12)
    acc[:4] = [3, -3, 5, -5]                              # halves: round half up, -1.5 -> -1
    out = {"cases": []}  # [kernel, inputs..., the reference's output]
    for bits in (8, 4, 2):
        qmax = (1 << (bits - 1)) - 1
        w = rng.integers(-qmax, qmax + 1, (4, 13))
        w[0, :2] = [-qmax, qmax]
        xs = rng.integers(-127, 128, 13)
        packed = b"".join(pack(row, bits) for row in w)
        out["cases"].append(["mv_packed", bits, packed.hex(), 4, 13, xs.tolist(), (w @ xs).tolist()])
    pre_acc = rng.integers(-(1 << 22), 1 << 22, 8)
    mult = rng.integers(-(1 << 14), (1 << 14) + 1, 8)
    bias = rng.integers(-(1 << 29), 1 << 29, 8)
    for pre, bias_shift in ((7, 3), (8, 0), (9, 20)):  # pre keeps |acc >> pre| <= 2^15, as the tuner does
        ref = np_rshift(pre_acc, pre) * mult + np_rshift(bias, bias_shift)
        out["cases"].append(["scale_bias", pre_acc.tolist(), pre, mult.tolist(), bias.tolist(), bias_shift, ref.tolist()])
    for shift, limit, relu in ((1, 127, False), (0, 2047, True), (-2, 2047, False), (22, 127, False), (27, 2047, True)):
        ref = np.clip(np_rshift(acc, shift), 0 if relu else -limit, limit)
        out["cases"].append(["requantize", acc.tolist(), shift, limit, relu, ref.tolist()])
    M = m.reshape(rows, cols)
    out["cases"].append(["mtv", m.tolist(), rows, cols, x.tolist(), (M.T @ x).tolist()])
    out["cases"].append(["mv", m.tolist(), rows, cols, v.tolist(), (M @ v).tolist()])
    for shift in (3, 0, -1, 14):
        ref = np.clip(M + np_rshift(np.outer(u, v), shift), -32767, 32767)
        ref[u == 0] = M[u == 0]
        out["cases"].append(["outer", m.tolist(), rows, cols, u.tolist(), v.tolist(), shift, ref.ravel().tolist()])
    out["cases"].append(["max_abs", acc.tolist(), int(np.abs(acc).max())])
    return out


RUN = """
import json
from array import array
from s2l import ikernels as I
def run(I, case):
    kind = case[0]
    if kind == "mv_packed":
        _, bits, packed, rows, cols, x, _ = case
        out = array("i", [0] * rows)
        I.mv_packed(bytes.fromhex(packed), len(packed) // 2 // rows, bits, rows, cols, array("h", x), out)
        return list(out)
    if kind == "scale_bias":
        _, acc, pre, mult, bias, bias_shift, _ = case
        out = array("i", acc)
        I.scale_bias(out, len(acc), pre, array("i", mult), array("i", bias), bias_shift)
        return list(out)
    if kind == "requantize":
        _, acc, shift, limit, relu, _ = case
        out = array("h", [0] * len(acc))
        I.requantize(array("i", acc), len(acc), shift, limit, relu, out)
        return list(out)
    if kind == "mtv":
        _, m, rows, cols, x, _ = case
        out = array("i", [0] * cols)
        I.mtv(array("h", m), rows, cols, array("h", x), out)
        return list(out)
    if kind == "mv":
        _, m, rows, cols, x, _ = case
        out = array("i", [0] * rows)
        I.mv(array("h", m), rows, cols, array("h", x), out)
        return list(out)
    if kind == "outer":
        _, m, rows, cols, u, v, shift, _ = case
        mm = array("h", m)
        I.outer_update(mm, rows, cols, array("h", u), array("h", v), shift)
        return list(mm)
    return I.max_abs(array("i", case[1]), len(case[1]))
"""


def expected(case):
    return case[-1]


def fixed_cases():
    return cases(1)["cases"]


@pytest.mark.parametrize("flavour", ["portable", "viper-shim"])
def test_twins_equal_the_numpy_integer_reference(flavour, request):
    kernels = portable if flavour == "portable" else request.getfixturevalue("viper")
    scope = {}
    exec(RUN, scope)
    for case in fixed_cases():
        assert scope["run"](kernels, case) == expected(case), case[0]


def test_the_portable_twin_under_both_runtimes(run):
    data = fixed_cases()
    out = run(RUN + "\nprint(json.dumps([run(I, c) for c in json.load(open('cases.json'))]))",
              files={"cases.json": json.dumps(data).encode()})
    assert json.loads(out) == [expected(c) for c in data]
