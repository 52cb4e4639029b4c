# Integer kernels of the board's fast path (integer Skip2-LoRA), portable flavour. The viper twins
# in ikernels_viper.py compute the same integers; on boards they replace these at import time.
#
# Types: vectors are array('h') (int16) holding values in int8 or int12 range as the caller keeps
# them; matrices (adapters) array('h'); sums array('i') (int32). The ranges keep every sum inside
# int32, where viper's machine words would wrap: n terms of |a * b| <= 32767 * 2047 need n <= 32,
# of 32767 * 127 (int8-range vectors) n <= 512.
# Rounding: rshift(v, s) = floor((v + 2^(s-1)) / 2^s), half up, as an arithmetic shift does it.

INT16_MAX = 32767


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


def requantize(v, n, shift, limit, relu, out):
    # out[i] = clamp(rshift(v[i], shift), -limit or 0, limit)
    low = 0 if relu else -limit
    for i in range(n):
        q = rshift(v[i], shift)
        out[i] = low if q < low else (limit if q > limit else q)


def max_abs(v, n):
    top = 0
    for i in range(n):
        a = v[i] if v[i] >= 0 else -v[i]
        if a > top:
            top = a
    return top


def mtv(m, rows, cols, x, out):
    # out[c] += sum_r m[r][c] x[r]; rows with x[r] == 0 cost nothing
    k = 0
    for r in range(rows):
        xr = x[r]
        if xr:
            for c in range(cols):
                out[c] += m[k + c] * xr
        k += cols


def mv(m, rows, cols, x, out):
    # out[r] += sum_c m[r][c] x[c]
    k = 0
    for r in range(rows):
        acc = 0
        for c in range(cols):
            acc += m[k + c] * x[c]
        out[r] += acc
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


FLAVOUR = "portable"
try:
    from s2l.ikernels_viper import mv_packed, scale_bias, requantize, max_abs, mtv, mv, outer_update
    FLAVOUR = "viper"
except (ImportError, SyntaxError):  # no native emitter here (CPython, WebAssembly MicroPython)
    pass
