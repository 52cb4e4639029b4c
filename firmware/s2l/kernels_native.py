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
    k = 0
    for r in range(rows):
        xr = x[r]
        if xr != 0.0:
            for c in range(cols):
                out[c] += m[k + c] * xr
        k += cols


@micropython.native
def outer_add(m, rows, cols, u, v):
    k = 0
    for r in range(rows):
        ur = u[r]
        if ur != 0.0:
            for c in range(cols):
                m[k + c] += ur * v[c]
        k += cols


@micropython.native
def sub_scaled(p, g, lr):
    for i in range(len(p)):
        p[i] -= lr * g[i]
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
