# The viper twins of ikernels.py: the same integers out for the same integers in, as pointer
# loops over the arrays' memory. ptr8/ptr16 loads are unsigned in viper, so signed values are
# sign-extended by hand; ptr32 loads are signed machine words. Imported by ikernels.py on boards;
# elsewhere (no native emitter) the import fails and the portable flavour stays.
import micropython


@micropython.viper
def mv_packed(packed: ptr8, row_bytes: int, bits: int, rows: int, cols: int, x: ptr16, acc: ptr32):
    shift = 0 if bits == 8 else (1 if bits == 4 else 2)
    mask = (1 << bits) - 1
    sign = 1 << (bits - 1)
    lane = (1 << shift) - 1
    for r in range(rows):
        start = r * row_bytes
        total = 0
        for c in range(cols):
            q = (packed[start + (c >> shift)] >> ((c & lane) * bits)) & mask
            if q & sign:
                q -= mask + 1
            v = x[c]
            if v > 32767:
                v -= 65536
            total += q * v
        acc[r] = total


@micropython.viper
def scale_bias(acc: ptr32, n: int, pre: int, mult: ptr32, bias: ptr32, bias_shift: int):
    for r in range(n):
        a = acc[r]
        if pre > 0:
            a = (a + (1 << (pre - 1))) >> pre
        b = bias[r]
        if bias_shift > 0:
            b = (b + (1 << (bias_shift - 1))) >> bias_shift
        acc[r] = a * mult[r] + b


@micropython.viper
def top_bits(v: ptr32, n: int) -> int:
    top = 0
    for i in range(n):
        a = v[i]
        if a < 0:
            a = 0 - a
        if a > top:
            top = a
    bits = 0
    while top:
        top >>= 1
        bits += 1
    return bits


@micropython.viper
def fit(v: ptr32, n: int, limit: int, relu: int, out: ptr16) -> int:
    top = 0
    for i in range(n):
        a = v[i]
        if a < 0:
            a = 0 - a
        if a > top:
            top = a
    s = 0
    t = top
    while t > limit:  # t = rshift(top, s)
        s += 1
        t = (top + (1 << (s - 1))) >> s
    low = 0 if relu else 0 - limit
    for i in range(n):
        q = v[i]
        if s > 0:
            q = (q + (1 << (s - 1))) >> s
        if q < low:
            q = low
        if q > limit:
            q = limit
        out[i] = q
    return s


@micropython.viper
def mtv(m: ptr16, rows: int, cols: int, x: ptr16, out: ptr32):
    for c in range(cols):
        out[c] = 0
    k = 0
    for r in range(rows):
        xr = x[r]
        if xr > 32767:
            xr -= 65536
        if xr:
            for c in range(cols):
                w = m[k + c]
                if w > 32767:
                    w -= 65536
                out[c] += w * xr
        k += cols


@micropython.viper
def mv(m: ptr16, rows: int, cols: int, x: ptr16, out: ptr32):
    k = 0
    for r in range(rows):
        acc = 0
        for c in range(cols):
            w = m[k + c]
            if w > 32767:
                w -= 65536
            xc = x[c]
            if xc > 32767:
                xc -= 65536
            acc += w * xc
        out[r] = acc
        k += cols


@micropython.viper
def outer_update(m: ptr16, rows: int, cols: int, u: ptr16, v: ptr16, shift: int):
    k = 0
    for r in range(rows):
        ur = u[r]
        if ur > 32767:
            ur -= 65536
        if ur:
            for c in range(cols):
                vc = v[c]
                if vc > 32767:
                    vc -= 65536
                d = ur * vc
                if shift > 0:
                    d = (d + (1 << (shift - 1))) >> shift
                else:
                    d = d << (0 - shift)
                w = m[k + c]
                if w > 32767:
                    w -= 65536
                w += d
                if w > 32767:
                    w = 32767
                if w < -32767:
                    w = -32767
                m[k + c] = w
        k += cols


@micropython.viper
def unpack8(src: ptr8, at: int, n: int, out: ptr16):
    for k in range(n):
        q = src[at + k]
        if q > 127:
            q -= 256
        out[k] = q


@micropython.viper
def pack8(v: ptr16, n: int, dst: ptr8, at: int):
    for k in range(n):
        dst[at + k] = v[k] & 0xFF


@micropython.viper
def widen(src: ptr16, at: int, n: int, shift: int, dst: ptr32):
    for k in range(n):
        q = src[at + k]
        if q > 32767:
            q -= 65536
        if shift > 30:
            q = 0
        elif shift > 0:
            q = (q + (1 << (shift - 1))) >> shift
        dst[k] = q


@micropython.viper
def add_rshift(src: ptr32, n: int, shift: int, dst: ptr32):
    if shift <= 30:
        for k in range(n):
            q = src[k]
            if shift > 0:
                q = (q + (1 << (shift - 1))) >> shift
            dst[k] += q


@micropython.viper
def softmax_exp(z: ptr32, n: int, zexp: int, coarse: ptr16, fine: ptr16, p: ptr32) -> int:
    top = z[0]
    for c in range(1, n):
        if z[c] > top:
            top = z[c]
    total = 0
    for c in range(n):
        d = top - z[c]
        if zexp >= 10:
            if zexp > 10:
                d = (d + (1 << (zexp - 11))) >> (zexp - 10)
        elif d > (16384 >> (10 - zexp)):
            d = 16384
        else:
            d = d << (10 - zexp)
        if d > 16384:
            d = 16384
        u = (d * 5909 + 2048) >> 12
        q = 0
        if u < 16384:
            s = 15 + (u >> 10)
            q = (coarse[(u >> 5) & 31] * fine[u & 31] + (1 << (s - 1))) >> s
        p[c] = q
        total += q
    return total


@micropython.viper
def softmax_grad(p: ptr32, n: int, label: int, recip: int, lr_mult: int, out: ptr32):
    for c in range(n):
        g = 0 - ((p[c] * recip + 8192) >> 14)
        if c == label:
            g += 32768
        out[c] = g * lr_mult
