# Integer kernels of the board's fast path (integer Skip2-LoRA), portable flavour. The viper twins
# in ikernels_viper.py compute the same integers; on boards they replace these at import time.
# A training step makes a few dozen kernel calls and no float arithmetic but the loss, so on a
# board it allocates (almost) nothing: every float there is a heap object.
#
# Types: vectors are array('h') (int16) holding values in int8 or int12 range as the caller keeps
# them; matrices (adapters) array('h'); sums array('i') (int32); cache rows bytearray (int8).
# The ranges keep every sum inside int32, where viper's machine words would wrap: n terms of
# |a * b| <= 32767 * 2047 need n <= 32, of 32767 * 127 (int8-range vectors) n <= 512.
# Rounding: rshift(v, s) = floor((v + 2^(s-1)) / 2^s), half up, as an arithmetic shift does it.

from array import array

INT16_MAX = 32767
# 2^-x for the softmax, x in 1/1024 steps: 2^(-k/32) * 32767 and 2^(-k/1024) * 32768, k = 0..31;
# written out, not computed, so that a board's single-precision floats cannot round them apart
EXP2_COARSE = array("H", (32767, 32065, 31378, 30705, 30047, 29404, 28774, 28157, 27554, 26963,
                          26385, 25820, 25267, 24725, 24196, 23677, 23170, 22673, 22187, 21712,
                          21247, 20791, 20346, 19910, 19483, 19066, 18657, 18258, 17866, 17483,
                          17109, 16742))
EXP2_FINE = array("H", (32768, 32746, 32724, 32702, 32679, 32657, 32635, 32613, 32591, 32569,
                        32547, 32525, 32503, 32481, 32459, 32437, 32415, 32393, 32371, 32349,
                        32327, 32306, 32284, 32262, 32240, 32218, 32196, 32175, 32153, 32131,
                        32109, 32088))
LOG2E_Q12 = 5909  # round(log2(e) * 2^12)


def rshift(v, s):
    return (v + (1 << (s - 1))) >> s if s > 0 else v << -s


def mv_packed(packed, row_bytes, bits, rows, cols, x, acc):
    # acc[r] = sum_c q[r][c] x[c]: packed `bits`-bit weights (format v1) times an int8-range vector
    shift = 0 if bits == 8 else (1 if bits == 4 else 2)  # log2(values per byte)
    mask = (1 << bits) - 1
    sign = 1 << (bits - 1)
    lane = (1 << shift) - 1
    for r in range(rows):
        start = r * row_bytes
        total = 0
        for c in range(cols):
            q = (packed[start + (c >> shift)] >> ((c & lane) * bits)) & mask
            total += (q - mask - 1 if q & sign else q) * x[c]
        acc[r] = total


def scale_bias(acc, n, pre, mult, bias, bias_shift):
    # acc[r] = rshift(acc[r], pre) * mult[r] + rshift(bias[r], bias_shift): a frozen layer's
    # per-channel scale and bias, in integers (|rshift(acc, pre)| <= 2^15, |mult| <= 2^14)
    for r in range(n):
        acc[r] = rshift(acc[r], pre) * mult[r] + rshift(bias[r], bias_shift)


def top_bits(v, n):
    # the bit length of max |v[i]|: how many bits the largest sum needs
    top = 0
    for i in range(n):
        a = v[i] if v[i] >= 0 else -v[i]
        if a > top:
            top = a
    bits = 0
    while top:
        top >>= 1
        bits += 1
    return bits


def fit(v, n, limit, relu, out):
    # out[i] = clamp(rshift(v[i], s), -limit or 0, limit) with the least s >= 0 that brings max |v|
    # within limit (= 2^k - 1); returns s, by which the caller's exponent drops
    top = 0
    for i in range(n):
        a = v[i] if v[i] >= 0 else -v[i]
        if a > top:
            top = a
    s = 0
    t = top
    while t > limit:
        s += 1
        t = rshift(top, s)
    low = 0 if relu else -limit
    for i in range(n):
        q = rshift(v[i], s)
        out[i] = low if q < low else (limit if q > limit else q)
    return s


def mtv(m, rows, cols, x, out):
    # out[c] = sum_r m[r][c] x[r]; rows with x[r] == 0 cost nothing
    for c in range(cols):
        out[c] = 0
    k = 0
    for r in range(rows):
        xr = x[r]
        if xr:
            for c in range(cols):
                out[c] += m[k + c] * xr
        k += cols


def mv(m, rows, cols, x, out):
    # out[r] = sum_c m[r][c] x[c]
    k = 0
    for r in range(rows):
        acc = 0
        for c in range(cols):
            acc += m[k + c] * x[c]
        out[r] = acc
        k += cols


def outer_update(m, rows, cols, u, v, shift):
    # m[r][c] = sat16(m[r][c] + rshift(u[r] v[c], shift)): an SGD step of fixed-point weights
    k = 0
    for r in range(rows):
        ur = u[r]
        if ur:
            for c in range(cols):
                w = m[k + c] + rshift(ur * v[c], shift)
                m[k + c] = INT16_MAX if w > INT16_MAX else (-INT16_MAX if w < -INT16_MAX else w)
        k += cols


def unpack8(src, at, n, out):
    # out[k] = src[at + k] as a signed byte: a cached int8 vector into int16
    for k in range(n):
        q = src[at + k]
        out[k] = q - 256 if q > 127 else q


def pack8(v, n, dst, at):
    # dst[at + k] = v[k] as a byte (v in int8 range)
    for k in range(n):
        dst[at + k] = v[k] & 0xFF


def widen(src, at, n, shift, dst):
    # dst[k] = rshift(src[at + k], shift), shift >= 0: int16 into int32 at a coarser exponent
    # (past 30 bits of shift an int16 rounds to 0)
    for k in range(n):
        dst[k] = 0 if shift > 30 else rshift(src[at + k], shift)


def add_rshift(src, n, shift, dst):
    # dst[k] += rshift(src[k], shift), shift >= 0; past 30 bits of shift a term is at most one
    # unit and is skipped, so that no shift leaves viper's machine word
    if shift <= 30:
        for k in range(n):
            dst[k] += rshift(src[k], shift)


def softmax_exp(z, n, zexp, coarse, fine, p):
    # p[c] = exp(z[c] - max z) * 32767, rounded (z at exponent zexp, -4 <= zexp <= 30); returns
    # sum(p) >= 32767. The exponent in base 2 with 10 fraction bits, u = (max z - z[c]) log2(e),
    # rounded, is looked up in the tables EXP2_COARSE and EXP2_FINE (passed as coarse, fine); past
    # 2^-16 a term rounds to 0.
    top = z[0]
    for c in range(1, n):
        if z[c] > top:
            top = z[c]
    total = 0
    for c in range(n):
        d = top - z[c]  # at exponent zexp; to 10 fraction bits, capped at 16 (e^-16 rounds to 0)
        if zexp >= 10:
            d = rshift(d, zexp - 10)
        elif d > (16384 >> (10 - zexp)):
            d = 16384
        else:
            d = d << (10 - zexp)
        if d > 16384:
            d = 16384
        u = rshift(d * LOG2E_Q12, 12)
        q = 0
        if u < 16384:
            q = rshift(coarse[(u >> 5) & 31] * fine[u & 31], 15 + (u >> 10))
        p[c] = q
        total += q
    return total


def softmax_grad(p, n, label, recip, lr_mult, out):
    # out[c] = (onehot(label)[c] - p[c] / sum p) * lr: the SGD step on the logits, at exponent
    # 15 + that of lr_mult (< 2^14); recip = 2^29 // sum p, so p[c] * recip / 2^14 is p / sum p in Q15
    # (products stay under 2^29: small ints in MicroPython, no heap)
    for c in range(n):
        g = (32768 if c == label else 0) - rshift(p[c] * recip, 14)
        out[c] = g * lr_mult


FLAVOUR = "portable"
try:
    from s2l.ikernels_viper import (mv_packed, scale_bias, top_bits, fit, mtv, mv, outer_update,
                                    unpack8, pack8, widen, add_rshift, softmax_exp, softmax_grad)
    FLAVOUR = "viper"
except (ImportError, SyntaxError):  # no native emitter here (CPython, WebAssembly MicroPython)
    pass
