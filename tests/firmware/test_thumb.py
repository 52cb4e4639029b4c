"""The Thumb flavour (RP2040), in two checks that compose: its viper glue (ikernels_thumb.py), run
for real by the MicroPython unix port with the routines' specification (thumb_spec.py) in the
place of the assembler, gives the portable twin's integers on test_ikernels.py's cases; and every
call the glue made there, replayed on the routines' machine code (mpy-cross -march=armv6m, run in
unicorn as a Cortex-M0), writes the same bytes as the specification. Then the routines alone on
edge inputs the kernels' cases may not reach (every shift, both signs, int32 wrapping sums)."""
import json

import numpy as np
import pytest
from unicorn import UcError

from skip2lora.runtimes import thumb_spec as spec
from skip2lora.runtimes.mpyrun import run_firmware_script
from skip2lora.runtimes.thumbemu import SOURCE, Thumb, assemble, cycles_of

from .test_ikernels import RUN, frozen_cases, ingest_cases, pack, s8, step_cases

STANDIN = """
import sys, thumb_spec
thumb_spec.RECORD = True
sys.modules["s2l.thumb_asm"] = thumb_spec
"""


@pytest.fixture(scope="module")
def thumb():
    return Thumb()


@pytest.fixture(scope="module")
def results():
    rng = np.random.default_rng(7)
    cases = ingest_cases(rng) + frozen_cases(rng) + step_cases(rng)
    files = {"cases.json": json.dumps(cases).encode(), "thumb_spec.py": open(spec.__file__, "rb").read()}
    lines = run_firmware_script(STANDIN + RUN, "micropython-unix", files=files, timeout=300, heap="64m").splitlines()
    calls = [json.loads(line[2:]) for line in lines if line.startswith("T ")]
    portable = json.loads(run_firmware_script(RUN, "cpython", files=files, timeout=300))
    return cases, json.loads(lines[-1]), portable, calls


def test_the_thumb_glue_equals_the_portable_twin(results):
    cases, thumb, portable, _ = results
    assert thumb[0] == "thumb" and portable[0] == "portable"
    for k, case in enumerate(cases):
        assert thumb[1][k] == portable[1][k], case["kind"]


def test_the_machine_code_replays_every_call_bit_for_bit(results, thumb):
    calls = results[3]
    assert {c["f"] for c in calls} == set(thumb.code)
    for call in calls:
        out = thumb.call(call["f"], call["blk"], [bytes.fromhex(h) for h in call["in"]], call["alias"])
        assert out == [bytes.fromhex(h) for h in call["out"]], (call["f"], call["blk"][:9])
    # the replay covers every bit width of rowsums, both v types of wsum, both u types of outer
    assert {c["blk"][5] for c in calls if c["f"] == "rowsums"} == {8, 4, 3, 2}
    assert {c["blk"][6] for c in calls if c["f"] == "wsum"} == {0, 1}
    assert {c["blk"][5] for c in calls if c["f"] == "outer"} == {0, 1}


def run_both(thumb, name, blk, bufs, alias=(0, 1, 2)):
    want = [bytearray(b) for b in bufs]
    args = [want[a] for a in alias]
    getattr(spec, name)(blk, *args)
    got = thumb.call(name, blk, bufs, alias)
    assert got == [bytes(args[k]) for k in range(3)], (name, blk)
    return got


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_rowsums_at_the_edges(thumb, bits):
    # every value a width holds (its most negative too), group sizes that split a row unevenly, and
    # 512-term rows at +-127 x the extreme weight
    rng = np.random.default_rng(bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    for n_in, n_out, size in ((1, 1, 1), (13, 3, 5), (37, 4, 16), (100, 2, 32), (512, 2, 512), (512, 3, 16)):
        w = rng.integers(lo, hi + 1, (n_out, n_in))
        x = rng.integers(-128, 128, n_in)
        if n_in == 512:
            w[0], x[:] = lo, -128
        packed = b"".join(pack(r, bits) for r in w)
        rb = bytes(5) + s8(x)
        blk = [5, n_out, n_in, size, len(packed) // n_out, bits] + [0] * 10
        acc = run_both(thumb, "rowsums", blk, [packed, rb, bytes(4 * n_out * -(-n_in // size))])[2]
        got = np.frombuffer(acc, "<i4")
        assert got[0] == (w[0, :size] * x[:size]).sum()  # and the specification is the plain sum
        if n_in == 512 and size == 512:
            assert got[0] == 512 * lo * -128


def test_wsum_at_the_edges(thumb):
    rng = np.random.default_rng(1)
    for v8 in (1, 0):
        for n_t, n_o in ((1, 1), (7, 3), (512, 4)):
            w = rng.integers(-32768, 32768, n_t * n_o + 5)
            w[:n_t] = -32768
            v = rng.integers(-128, 128, n_t) if v8 else rng.integers(-(1 << 20), 1 << 20, n_t)
            if n_t == 512:  # 512 terms of -2^15 x -2^20: the int32 sum wraps, as a machine word does
                v[:] = -128 if v8 else -(1 << 20)
            vb = s8(v) if v8 else np.asarray(v, "<i4").tobytes()
            for os, ts in ((2, 2 * n_o), (2 * n_t, 2)):
                blk = [10, os, ts, n_t, n_o, 0, v8, 8] + [0] * 8
                run_both(thumb, "wsum", blk, [np.asarray(w, "<i2").tobytes(), vb, bytes(8 + 4 * n_o)])


@pytest.mark.parametrize("sh", [-20, -16, -15, -3, -1, 0, 1, 5, 12, 23])
def test_outer_at_every_kind_of_shift(thumb, sh):
    # saturation both ways, skipped rows (u = 0), both u types; with u and v aliased in one buffer
    rng = np.random.default_rng(sh + 40)
    n_j, n_c = 9, 6
    half = (1 << (sh - 1)) if sh > 0 else 0
    lim = 65534 >> -sh if -16 < sh < 0 else 0
    w = rng.integers(-32768, 32768, n_j * n_c)
    w[:3] = (32767, -32767, -32768)
    for u8 in (1, 0):
        u = rng.integers(-127, 128, n_j) if u8 else rng.integers(-2047, 2048, n_j)
        u[1] = 0
        v = rng.integers(-2047, 2048, n_c)
        v[:2] = (2047, -2047)
        ub = s8(u) if u8 else np.asarray(u, "<i4").tobytes()
        s = ub + bytes(-len(ub) % 4) + np.asarray(v, "<i4").tobytes()
        blk = [0, 0, len(s) - 4 * n_c, n_j, n_c, u8, sh, half, lim] + [0] * 7
        got = run_both(thumb, "outer", blk, [np.asarray(w, "<i2").tobytes(), s, s], alias=(0, 1, 1))[0]
        changed = np.frombuffer(got, "<i2") != w
        assert (changed.any() or sh > 20) and not changed.reshape(n_j, n_c)[1].any()


def test_the_emulator_is_an_armv6m_and_counts_cycles(thumb, tmp_path):
    # a Thumb-2 instruction the Cortex-M0+ lacks (sdiv r0, r0, r0) faults in the emulator
    src = tmp_path / "t2.py"
    src.write_text("import micropython\n\n@micropython.asm_thumb\ndef f(r0):\n    data(2, 0xfb90, 0xf0f0)\n")
    thumb2 = Thumb(assemble(src))
    with pytest.raises(UcError):
        thumb2.call("f", [0] * 4, [b"", b"", b""])
    # ten more 8-bit terms cost ten more turns of the loop: ldrsb x2, mul, add, add, bne (taken)
    counts = []
    for n in (20, 30):
        blk = [0, 1, n, n, n, 8] + [0] * 10
        counts.append(thumb.call("rowsums", blk, [bytes(n), bytes(n), bytes(4)], count=True)[1:])
    assert counts[1][0] - counts[0][0] == 60
    assert counts[1][1] - counts[0][1] == 10 * (2 + 2 + 1 + 1 + 1 + 2)
    assert cycles_of(0xB5F0, False) == 6 and cycles_of(0xD1FA, False) == 1 and SOURCE.name == "thumb_asm.py"
