# The board flavour of kernels.py, line for line the same arithmetic: float loops compiled by the
# native emitter, packed-integer unpacking in viper. Imported by kernels.py; on an interpreter
# without a native emitter (CPython, the WebAssembly build) this import fails and the portable
# flavour stays.
import micropython


@micropython.native
def mv(m, rows, cols, x, out):
    k = 0
    for r in range(rows):
        acc = 0.0
        for c in range(cols):
            acc += m[k + c] * x[c]
        out[r] += acc
        k += cols


@micropython.native
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


@micropython.native
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


@micropython.native
def sub_scaled(p, g, lr):
    for i in range(len(p)):
        gi = g[i]
        if gi != 0.0:  # sparse: ReLU zeros and zero inputs leave whole rows of g at zero
            p[i] -= lr * gi
            g[i] = 0.0


@micropython.viper
def unpack_row(packed: ptr8, start: int, bits: int, cols: int, row: ptr32):
    # shifts instead of // and %: bits is 8, 4 or 2, so values per byte is a power of two
    shift = 0 if bits == 8 else (1 if bits == 4 else 2)
    mask = (1 << bits) - 1
    sign = 1 << (bits - 1)
    lane = (1 << shift) - 1
    for c in range(cols):
        q = (packed[start + (c >> shift)] >> ((c & lane) * bits)) & mask
        row[c] = q - (mask + 1) if q & sign else q


@micropython.native
def mv_packed(packed, row_bytes, bits, scales, rows, cols, x, out, row):
    for r in range(rows):
        unpack_row(packed, r * row_bytes, bits, cols, row)
        acc = 0.0
        for c in range(cols):
            acc += row[c] * x[c]
        out[r] += scales[r] * acc


@micropython.native
def mtv_packed(packed, row_bytes, bits, scales, rows, cols, x, out, row):
    for r in range(rows):
        s = scales[r] * x[r]
        if s != 0.0:
            unpack_row(packed, r * row_bytes, bits, cols, row)
            for c in range(cols):
                out[c] += row[c] * s
