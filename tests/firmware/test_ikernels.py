"""Integer kernels: the viper twins, run for real by the MicroPython unix port (native emitter,
x86-64), give the same integers as the portable twin under CPython and under the WebAssembly
MicroPython, on random inputs and at the edges (saturation, int32-sized sums, rounding halves,
exponents at the ends of their ranges); and the kernels' arithmetic against numpy where it is
independent of the block-floating-point bookkeeping (softmax tables, sums)."""
import json
from array import array

import numpy as np
import pytest

from s2l import exp2
from s2l import ikernels as portable
from skip2lora.runtimes.mpyrun import run_firmware_script

RUN = """
import json
from array import array
from s2l import ikernels as I

def run(case):
    kind = case["kind"]
    if kind == "ingest8":
        dst = bytearray(case["dat"] + len(case["src"]) // 2)
        s = I.ingest8(bytes.fromhex(case["src"]), 1, len(case["src"]) // 2 - 1, case["mult"], dst, case["dat"])
        return [s, dst.hex()]
    if kind == "frozen_layer":
        rb = bytearray.fromhex(case["rb"])
        acc = array("i", [0] * len(case["mult"]))
        e = I.frozen_layer(bytes.fromhex(case["packed"]), array("i", case["lp"]), array("i", case["mult"]),
                           array("i", case["bias"]), rb, case["ro"], case["e"], acc)
        return [e, rb.hex()]
    w = array("h", case["w"])
    s = array("i", [0] * case["scratch"])
    out = I.step(bytes.fromhex(case["rb"]), case["ro"], array("b", case["ex"]), case["eo"], w,
                 array("i", case["meta"]), s, case["label"], case["train"])
    return [out, list(w), list(s)]

print(json.dumps([I.FLAVOUR, [run(c) for c in json.load(open("cases.json"))]]))
"""


def pack(q, bits):
    if bits == 3:  # format v2: a little-endian bit stream, value c at bit 3c
        stream = sum((int(v) & 7) << (3 * c) for c, v in enumerate(q))
        return stream.to_bytes((3 * len(q) + 7) // 8, "little")
    per_byte = 8 // bits
    out = bytearray((len(q) + per_byte - 1) // per_byte)
    for c, v in enumerate(q):
        out[c // per_byte] |= (int(v) & ((1 << bits) - 1)) << ((c % per_byte) * bits)
    return bytes(out)


def s8(values):
    return bytes((np.asarray(values, np.int64) & 0xFF).tolist())


def ingest_cases(rng):
    out = []
    for mult in (0, 1, 32768, 40000, 65535, 65536, -65536, -33333):
        for q in (rng.integers(-128, 128, 13), np.array([-128, 127, 0, 1, -1, 64, -64]), np.zeros(5, int)):
            src = s8(np.concatenate([[99], q]))  # one byte before the sample: the offset is honoured
            out.append({"kind": "ingest8", "src": src.hex(), "mult": mult, "dat": 3})
    return out


def frozen_cases(rng):
    # per channel (a scale covers n_in inputs) and per group of 16 or 32 (a last group that is
    # short, or a single one); at the extremes every product and multiplier is at its bound
    out = []
    for bits in (8, 4, 3, 2):
        qmax = (1 << (bits - 1)) - 1
        for n_in, n_out, extreme, sizes in ((13, 5, False, (13, 16)), (512, 4, True, (512, 16, 32)),
                                            (64, 10, False, (64, 16, 32)), (72, 3, True, (72, 16))):
            w = rng.integers(-qmax, qmax + 1, (n_out, n_in))
            x = rng.integers(-127, 128, n_in)
            if extreme:  # the largest sums a row can reach: 512 x 127 x 127
                w[:2] = [[qmax], [-qmax]]
                x[:] = 127
            x[::5] = 0
            row_bytes = len(pack(w[0], bits))
            for size in sizes:
                n_scales = n_out * -(-n_in // size)
                for wide, limit in ((0, 127), (1, 2047)):
                    for mult_exp, bias_exp, e, zero_bias in ((20, 25, 3, False), (10, 64, -6, True), (28, 12, 0, False)):
                        bias = np.zeros(n_out, int) if zero_bias else rng.integers(-(1 << 29), 1 << 29, n_out)
                        mult = rng.integers(-(1 << 14), (1 << 14) + 1, n_scales)
                        if extreme:
                            mult[:n_scales // 2] = 1 << 14
                            mult[n_scales // 2:] = -(1 << 14)
                        ro = 7
                        rb = bytearray(ro + n_in + 2 * n_out + 3)
                        rb[ro:ro + n_in] = s8(x)
                        out.append({"kind": "frozen_layer",
                                    "packed": (b"".join(pack(r, bits) for r in w) + bytes(4)).hex(),
                                    "lp": [row_bytes, bits, n_out, n_in, mult_exp, bias_exp, 0, n_in, wide, limit, size],
                                    "mult": mult.tolist(), "bias": bias.tolist(), "rb": bytes(rb).hex(), "ro": ro,
                                    "e": e})
    return out


def step_cases(rng):
    out = []
    for dims, rank in (([13, 9, 7, 5], 4), ([512, 3], 16), ([64, 64, 64, 10], 5), ([20, 32], 8)):
        n, nc = len(dims) - 1, dims[-1]
        x_at = [sum(dims[:i]) for i in range(n)]
        z_at = sum(dims[:-1])
        stride = z_at + 2 * nc
        for variant in range(5):
            ro = 3
            rb = bytearray(ro + stride)
            row = rng.integers(-127, 128, z_at)
            row[rng.random(z_at) < 0.3] = 0
            z0 = rng.integers(-2047, 2048, nc)
            if variant == 1:  # the largest adapter sums: A at +-32767, inputs at +-127
                row[:] = 127
                z0[:] = 2047
            rb[ro:ro + z_at] = s8(row)
            rb[ro + z_at:ro + stride] = np.asarray(z0, "<i2").tobytes()
            w, meta = [], [n, rank, nc, z_at, int(rng.integers(1, 16384)), int(rng.integers(8, 24))]
            for i in range(n):
                a = rng.integers(-32767, 32768, dims[i] * rank)
                b = rng.integers(-32767, 32768, rank * nc) if variant != 2 else np.zeros(rank * nc, int)
                if variant == 1:
                    a[:] = 32767
                    b[:] = 32767
                meta += [dims[i], x_at[i], len(w), len(w) + dims[i] * rank, int(rng.integers(8, 16))]
                w += a.tolist() + b.tolist()
            ex = rng.integers(-4, 10, n + 1).tolist()
            if variant == 3:  # logits at an exponent the softmax cannot take: the step refuses
                ex = [40] * (n + 1)
            if variant == 4:
                meta[4], meta[5] = 16383, 30  # a tiny learning rate: shifts past 24 bits, no update
            for train in (0, 1):
                out.append({"kind": "step", "rb": bytes(rb).hex(), "ro": ro, "ex": [0] + ex, "eo": 1, "w": w,
                            "meta": meta, "scratch": portable.scratch_size(n, rank, nc),
                            "label": int(rng.integers(0, nc)), "train": train})
    return out


@pytest.fixture(scope="module")
def results():
    rng = np.random.default_rng(7)
    cases = ingest_cases(rng) + frozen_cases(rng) + step_cases(rng)
    files = {"cases.json": json.dumps(cases).encode()}
    # a large heap: the cases' JSON, not the kernels, needs it
    return cases, {rt: json.loads(run_firmware_script(RUN, rt, files=files, timeout=300, heap="8m"))
                   for rt in ("cpython", "micropython", "micropython-unix")}


def test_the_viper_twins_run_for_real_and_equal_the_portable_twin(results):
    cases, out = results
    assert out["micropython-unix"][0] == "viper" and out["cpython"][0] == out["micropython"][0] == "portable"
    for k, case in enumerate(cases):
        assert out["micropython-unix"][1][k] == out["cpython"][1][k], case["kind"]
        assert out["micropython"][1][k] == out["cpython"][1][k], case["kind"]


def test_the_cases_reach_the_edges(results):
    # the edges are really exercised: saturated adapters, refused steps, skipped updates, clamps
    cases, out = results
    steps = [(c, r) for c, r in zip(cases, out["cpython"][1]) if c["kind"] == "step"]
    assert any(r[0] == -1 for _, r in steps)
    assert any(c["train"] and r[0] > 0 and 32767 in r[1] and -32767 in r[1] for c, r in steps)
    assert any(c["train"] and r[0] > 0 and r[1] == c["w"] for c, r in steps)  # the tiny lr
    ingests = [r for c, r in zip(cases, out["cpython"][1]) if c["kind"] == "ingest8"]
    assert {r[0] for r in ingests} >= {0, 1, 16, 17}
    # a frozen row's sum reaches 99% of 2^29, the bound of its products' part (the bias adds at most
    # as much: 2^30 in all), with a scale per channel and per group
    tops = {}
    for c in cases:
        if c["kind"] == "frozen_layer":
            acc = array("i", [0] * len(c["mult"]))
            portable.frozen_layer(bytes.fromhex(c["packed"]), array("i", c["lp"]), array("i", c["mult"]),
                                  array("i", c["bias"]), bytearray.fromhex(c["rb"]), c["ro"], c["e"], acc)
            grouped = c["lp"][10] < c["lp"][3]
            tops[grouped] = max(tops.get(grouped, 0), max(abs(v) for v in acc[:c["lp"][2]]))
    assert tops[False] > 0.99 * 2 ** 29 and tops[True] > 0.99 * 2 ** 29, tops


def test_ingest8_scales_an_int8_sample_into_the_int8_range():
    src = s8([0, -128, 127, 3, -3, 1])  # the first byte is skipped (offset 1)
    dst = bytearray(5)
    s = portable.ingest8(src, 1, 5, 40000, dst, 0)
    exact = np.array([-128, 127, 3, -3, 1]) * 40000 / 2.0 ** s
    assert np.abs(exact).max() <= 127.5 and np.abs(exact).max() > 63
    assert np.array(dst, np.uint8).view(np.int8).tolist() == np.floor(exact + 0.5).astype(int).tolist()


def test_a_frozen_layer_equals_the_float_layer_within_its_rounding():
    rng = np.random.default_rng(3)
    n_in, n_out = 64, 10
    w = rng.integers(-127, 128, (n_out, n_in))
    x = rng.integers(-127, 128, n_in)
    mult, bias = rng.integers(1000, 16384, n_out), rng.integers(-(1 << 20), 1 << 20, n_out)
    mult_exp, bias_exp, e = 24, 28, 4
    rb = bytearray(n_in + 2 * n_out)
    rb[:n_in] = s8(x)
    lp = array("i", [n_in, 8, n_out, n_in, mult_exp, bias_exp, 0, n_in, 1, 2047, n_in])
    e_out = portable.frozen_layer(bytes(s8(w.ravel())), lp, array("i", mult.tolist()), array("i", bias.tolist()),
                                  rb, 0, e, array("i", [0] * n_out))
    y = np.frombuffer(bytes(rb[n_in:]), "<i2") * 2.0 ** -e_out
    exact = (w @ x) * 2.0 ** -e * mult * 2.0 ** -mult_exp + bias * 2.0 ** -bias_exp
    assert np.abs(y - exact).max() <= np.abs(exact).max() / 2047 + 1e-9


@pytest.mark.parametrize("n_in,size", [(64, 16), (72, 32), (512, 16)])
def test_a_grouped_frozen_layer_equals_the_float_layer_within_its_rounding(n_in, size):
    # a scale per group of `size` inputs, multipliers spread over 2^7..2^14 (a group's scale may be
    # far below the layer's largest): the int12 logits within a unit of the exact ones, and the
    # int8 outputs (ReLU) within one of theirs, at their own exponent
    rng = np.random.default_rng(n_in + size)
    n_out, groups = 10, -(-n_in // size)
    w = rng.integers(-127, 128, (n_out, n_in))
    x = rng.integers(-127, 128, n_in)
    mult = rng.integers(1 << 7, (1 << 14) + 1, (n_out, groups)) * rng.choice([-1, 1], (n_out, groups))
    bias = rng.integers(-(1 << 20), 1 << 20, n_out)
    mult_exp, bias_exp, e = 24, 28, 4
    exact = (w * np.repeat(mult, size, axis=1)[:, :n_in]) @ x * 2.0 ** (-e - mult_exp) + bias * 2.0 ** -bias_exp
    for wide, limit in ((1, 2047), (0, 127)):
        rb = bytearray(n_in + 2 * n_out)
        rb[:n_in] = s8(x)
        lp = array("i", [n_in, 8, n_out, n_in, mult_exp, bias_exp, 0, n_in, wide, limit, size])
        e_out = portable.frozen_layer(bytes(s8(w.ravel())), lp, array("i", mult.ravel().tolist()),
                                      array("i", bias.tolist()), rb, 0, e, array("i", [0] * (n_out * groups)))
        if wide:
            y, want = np.frombuffer(bytes(rb[n_in:]), "<i2") * 2.0 ** -e_out, exact
        else:
            y, want = np.frombuffer(bytes(rb[n_in:n_in + n_out]), np.int8) * 2.0 ** -e_out, np.maximum(exact, 0)
        assert np.abs(y).max() * 2 ** e_out > limit / 2  # the output uses its range
        assert np.abs(y - want).max() <= 2.0 ** -e_out, (wide, np.abs(y - want).max() * 2 ** e_out)


def test_the_softmax_tables():
    coarse = np.round(32767 * 2.0 ** (-np.arange(32) / 32)).astype(int)
    fine = np.round(32768 * 2.0 ** (-np.arange(32) / 1024)).astype(int)
    assert list(exp2.EXP2_COARSE) == coarse.tolist() and list(exp2.EXP2_FINE) == fine.tolist()
    assert exp2.LOG2E_Q12 == round(np.log2(np.e) * 4096)
