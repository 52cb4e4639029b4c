# Hot loops of the float path. Matrices are flat array('f'), row-major [rows][cols]; every kernel
# accumulates into its output (callers zero or preload it). Packed integer matrices are rows of
# `bits`-bit two's complement values, each row a little-endian bit stream (modelfile.py).
# On boards the @micropython.native twins in kernels_native.py replace these at import time.
from array import array


def zeros(n, typecode="f"):
    # portable: MicroPython reads a bytes initialiser as raw memory, CPython refuses it
    return array(typecode, [0] * n)


def mv(m, rows, cols, x, out):
    # out[r] += sum_c m[r][c] x[c]
    k = 0
    for r in range(rows):
        acc = 0.0
        for c in range(cols):
            acc += m[k + c] * x[c]
        out[r] += acc
        k += cols


def mtv(m, rows, cols, x, out):
    # out[c] += sum_r m[r][c] x[r]. Columns go four at a time, summed in locals: an interpreter
    # pays for every array load/store and inner loop, and adapters are this shape (n_in x rank)
    c0 = 0
    while c0 + 4 <= cols:
        h0 = h1 = h2 = h3 = 0.0
        k = c0
        for r in range(rows):
            xr = x[r]
            if xr != 0.0:
                h0 += m[k] * xr
                h1 += m[k + 1] * xr
                h2 += m[k + 2] * xr
                h3 += m[k + 3] * xr
            k += cols
        out[c0] += h0
        out[c0 + 1] += h1
        out[c0 + 2] += h2
        out[c0 + 3] += h3
        c0 += 4
    for c in range(c0, cols):
        acc = 0.0
        k = c
        for r in range(rows):
            acc += m[k] * x[r]
            k += cols
        out[c] += acc


def outer_add(m, rows, cols, u, v):
    # m[r][c] += u[r] v[c], four columns at a time with v's values in locals (as mtv)
    c0 = 0
    while c0 + 4 <= cols:
        v0, v1, v2, v3 = v[c0], v[c0 + 1], v[c0 + 2], v[c0 + 3]
        k = c0
        for r in range(rows):
            ur = u[r]
            if ur != 0.0:
                m[k] += ur * v0
                m[k + 1] += ur * v1
                m[k + 2] += ur * v2
                m[k + 3] += ur * v3
            k += cols
        c0 += 4
    for c in range(c0, cols):
        vc = v[c]
        k = c
        for r in range(rows):
            m[k] += u[r] * vc
            k += cols


def sub_scaled(p, g, lr):
    # p -= lr * g; g = 0
    for i in range(len(p)):
        gi = g[i]
        if gi != 0.0:  # sparse: ReLU zeros and zero inputs leave whole rows of g at zero
            p[i] -= lr * gi
            g[i] = 0.0


def unpack_row(packed, start, bits, cols, row):
    # row[c] = signed value c of the packed row starting at byte `start`: a little-endian bit
    # stream, value c at bit c * bits (a 3-bit value may spill into the next byte)
    if bits == 8:
        for c in range(cols):
            q = packed[start + c]
            row[c] = q - 256 if q > 127 else q
        return
    mask = (1 << bits) - 1
    sign = 1 << (bits - 1)
    bit = 0
    for c in range(cols):
        at = start + (bit >> 3)
        off = bit & 7
        q = packed[at] >> off
        if off + bits > 8:
            q |= packed[at + 1] << (8 - off)
        q &= mask
        row[c] = q - (mask + 1) if q & sign else q
        bit += bits


def mv_packed(packed, row_bytes, bits, scales, group, rows, cols, x, out, row):
    # out[r] += sum_c scale(r, c) q[r][c] x[c]; scale(r, c) = scales[r] (group 0), or
    # scales[r * ceil(cols / group) + c // group]. `row` is scratch of `cols` ints
    k = 0
    for r in range(rows):
        unpack_row(packed, r * row_bytes, bits, cols, row)
        if group == 0:
            acc = 0.0
            for c in range(cols):
                acc += row[c] * x[c]
            out[r] += scales[r] * acc
            continue
        total = 0.0
        c0 = 0
        while c0 < cols:
            c1 = min(c0 + group, cols)
            acc = 0.0
            for c in range(c0, c1):
                acc += row[c] * x[c]
            total += scales[k] * acc
            k += 1
            c0 = c1
        out[r] += total


def mtv_packed(packed, row_bytes, bits, scales, group, rows, cols, x, out, row):
    # out[c] += sum_r scale(r, c) q[r][c] x[r] (scale(r, c) as in mv_packed)
    per_row = (cols + group - 1) // group if group else 1
    for r in range(rows):
        xr = x[r]
        if xr == 0.0:
            continue
        unpack_row(packed, r * row_bytes, bits, cols, row)
        if group == 0:
            s = scales[r] * xr
            for c in range(cols):
                out[c] += row[c] * s
            continue
        k = r * per_row
        c0 = 0
        while c0 < cols:
            c1 = min(c0 + group, cols)
            s = scales[k] * xr
            for c in range(c0, c1):
                out[c] += row[c] * s
            k += 1
            c0 = c1


FLAVOUR = "portable"
try:
    from s2l.kernels_native import mv, mtv, outer_add, sub_scaled, unpack_row, mv_packed, mtv_packed
    FLAVOUR = "native"
except (ImportError, SyntaxError):  # no native emitter here (CPython, WebAssembly MicroPython)
    pass
