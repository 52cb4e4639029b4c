"""Integer kernels: the portable twin against a numpy integer reference (random inputs plus the
rounding and saturation edges), the viper twin against the same reference (through a shim that
runs it as Python with viper's pointer semantics: unsigned 8/16-bit loads, truncating stores), and
the portable twin under the real MicroPython."""
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


COARSE = np.round(32767 * 2.0 ** (-np.arange(32) / 32)).astype(np.int64)
FINE = np.round(32768 * 2.0 ** (-np.arange(32) / 1024)).astype(np.int64)


def np_softmax_exp(z, zexp):
    """exp(z - max z) * 32767 as the kernel computes it: the distance to the top in Q10 (at most
    16), times log2(e) in Q12 into a base-2 exponent with 10 fraction bits, two table lookups."""
    d = z.max() - np.asarray(z, np.int64)
    d = np_rshift(d, zexp - 10) if zexp >= 10 else np.minimum(d, 16385) << (10 - zexp)
    u = np_rshift(np.minimum(d, 16384) * round(np.log2(np.e) * 4096), 12)
    s = np.minimum(15 + (u >> 10), 30)  # where u >= 16384 the term is 0 anyway
    p = (COARSE[(u >> 5) & 31] * FINE[u & 31] + (1 << (s - 1))) >> s
    return np.where(u < 16384, p, 0)


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
    for limit, relu in ((127, False), (2047, True), (2047, False)):
        for sums in (acc, acc >> 20, acc >> 29, np.array([-2 * limit - 1, limit, 3]), np.array([255, -3])):
            s = 0  # the least shift that brings max |sums| within limit
            while np_rshift(np.abs(sums).max(), s) > limit:
                s += 1
            ref = np.clip(np_rshift(sums, s), 0 if relu else -limit, limit)
            out["cases"].append(["fit", sums.tolist(), limit, relu, [int(s)] + ref.tolist()])
    for sums in (acc, acc >> 25, np.zeros(3, np.int64), np.array([-8, 7])):
        out["cases"].append(["top_bits", sums.tolist(), int(np.abs(sums).max()).bit_length()])
    M = m.reshape(rows, cols)
    out["cases"].append(["mtv", m.tolist(), rows, cols, x.tolist(), (M.T @ x).tolist()])
    out["cases"].append(["mv", m.tolist(), rows, cols, v.tolist(), (M @ v).tolist()])
    for shift in (3, 0, -1, 14):
        ref = np.clip(M + np_rshift(np.outer(u, v), shift), -32767, 32767)
        ref[u == 0] = M[u == 0]
        out["cases"].append(["outer", m.tolist(), rows, cols, u.tolist(), v.tolist(), shift, ref.ravel().tolist()])
    raw = rng.integers(0, 256, 20)
    raw[5:8] = [127, 128, 255]                             # the sign edge
    out["cases"].append(["unpack8", bytes(raw.tolist()).hex(), 5, 12, raw[5:17].astype(np.uint8).view(np.int8).tolist()])
    q8 = rng.integers(-127, 128, 9)
    q8[:2] = [-127, -1]
    dst = bytearray(12)
    dst[3:12] = bytes((q8 & 0xFF).tolist())
    out["cases"].append(["pack8", q8.tolist(), 3, dst.hex()])
    z0 = rng.integers(-2047, 2048, 10)
    z0[:2] = [3, -3]                                      # halves at shift 1
    for shift in (0, 1, 5, 31):
        ref = np.zeros(10, np.int64) if shift > 30 else np_rshift(z0, shift)
        out["cases"].append(["widen", z0.tolist(), shift, ref[2:8].tolist()])
        base = rng.integers(-(1 << 20), 1 << 20, 10)
        ref = base + (0 if shift > 30 else np_rshift(acc[:10], shift))
        out["cases"].append(["add_rshift", acc[:10].tolist(), shift, base.tolist(), ref.tolist()])
    for zexp, z in ((7, rng.integers(-2000, 2000, 10)), (12, rng.integers(-(1 << 16), 1 << 16, 10)),
                    (-4, np.array([0, -1, -2, -16, 5, 5])), (30, np.array([0, 1 << 29, -(1 << 29)])),
                    (10, np.array([0, -16384, -16385, -11356, -11357]))):  # u = 16382 and 16384 at the end
        p = np_softmax_exp(z, zexp)
        out["cases"].append(["softmax_exp", z.tolist(), zexp, [int(p.sum())] + p.tolist()])
        for label in (0, len(z) - 1):
            recip = (1 << 29) // int(p.sum())
            onehot = (np.arange(len(z)) == label) * 32768
            ref = (onehot - np_rshift(p * recip, 14)) * 13107
            out["cases"].append(["softmax_grad", p.tolist(), label, recip, 13107, ref.tolist()])
    return out


RUN = """
import json
from array import array
from s2l import ikernels as I
from s2l.ikernels import EXP2_COARSE, EXP2_FINE
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
    if kind == "fit":
        _, v, limit, relu, _ = case
        out = array("h", [0] * len(v))
        return [I.fit(array("i", v), len(v), limit, relu, out)] + list(out)
    if kind == "top_bits":
        return I.top_bits(array("i", case[1]), len(case[1]))
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
    if kind == "unpack8":
        _, raw, at, n, _ = case
        out = array("h", [0] * n)
        I.unpack8(bytearray(bytes.fromhex(raw)), at, n, out)
        return list(out)
    if kind == "pack8":
        _, q, at, _ = case
        dst = bytearray(at + len(q))
        I.pack8(array("h", q), len(q), dst, at)
        return dst.hex()
    if kind == "widen":
        _, z0, shift, _ = case
        out = array("i", [0] * 6)
        I.widen(array("h", z0), 2, 6, shift, out)
        return list(out)
    if kind == "add_rshift":
        _, src, shift, base, _ = case
        out = array("i", base)
        I.add_rshift(array("i", src), len(src), shift, out)
        return list(out)
    if kind == "softmax_exp":
        _, z, zexp, _ = case
        p = array("i", [0] * len(z))
        return [I.softmax_exp(array("i", z), len(z), zexp, EXP2_COARSE, EXP2_FINE, p)] + list(p)
    _, p, label, recip, lr_mult, _ = case  # softmax_grad
    out = array("i", [0] * len(p))
    I.softmax_grad(array("i", p), len(p), label, recip, lr_mult, out)
    return list(out)
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


def test_the_softmax_tables_and_how_close_the_integer_softmax_comes():
    assert list(portable.EXP2_COARSE) == COARSE.tolist() and list(portable.EXP2_FINE) == FINE.tolist()
    rng = np.random.default_rng(2)
    worst = 0.0
    for zexp in (4, 7, 10, 13):
        for _ in range(50):
            z = rng.normal(0, 4, 10) * 2.0 ** zexp
            zi = array("i", np.round(z).astype(int).tolist())
            p = array("i", [0] * 10)
            total = portable.softmax_exp(zi, 10, zexp, portable.EXP2_COARSE, portable.EXP2_FINE, p)
            exact = np.exp(np.array(zi) / 2.0 ** zexp - max(zi) / 2.0 ** zexp)
            worst = max(worst, np.abs(np.array(p) / total - exact / exact.sum()).max())
    assert worst < 2e-4, worst
