# The viper twins of ikernels.py: the same integers out for the same integers in, as pointer loops
# over the arrays' memory. Viper loads ptr8/ptr16 unsigned and ptr32 as a machine word, which is
# zero-extended where a word has 64 bits (the unix port on x86-64), so every signed load is
# sign-extended by hand: (v ^ 0x80) - 0x80 for a byte (faster on an RP2040 than a compare and
# subtract), (v ^ 0x8000) - 0x8000 for int16, (v ^ b31) - b31 for int32 (b31 = 1 << 31, computed at
# run time: as a literal it would be a Python object on a 32-bit board). On a 32-bit board the last
# is the identity. Shifts stay below 31 bits, so no result depends on the word's width.
# The repeated blocks (fit to int12, the saturating updates) are written out where the portable
# twin calls a helper: a call from one viper function to another goes through the runtime, with
# its arguments boxed, which is the overhead these kernels exist to remove.
# Imported by ikernels.py on boards; elsewhere (no native emitter) the import fails.
import micropython

from s2l.exp2 import EXP2_COARSE, EXP2_FINE


@micropython.viper
def ingest8(src: ptr8, at: int, n: int, mult: int, dst: ptr8, dat: int) -> int:
    top = 0
    for k in range(n):
        a = ((src[at + k] ^ 0x80) - 0x80) * mult
        if a < 0:
            a = 0 - a
        if a > top:
            top = a
    s = 0
    t = top
    while t > 127:
        s += 1
        t = (top + (1 << (s - 1))) >> s
    half = (1 << (s - 1)) if s > 0 else 0
    for k in range(n):
        q = (((src[at + k] ^ 0x80) - 0x80) * mult + half) >> s
        if q > 127:
            q = 127
        if q < -127:
            q = -127
        dst[dat + k] = q
    return s


@micropython.viper
def frozen_layer(packed: ptr8, lp: ptr32, mult: ptr32, bias: ptr32, rb: ptr8, ro: int, e: int, acc: ptr32) -> int:
    b31 = 1
    b31 <<= 31
    row_bytes = lp[0]
    bits = lp[1]
    n_out = lp[2]
    n_in = lp[3]
    xo = ro + lp[6]
    yo = ro + lp[7]
    wide = lp[8]
    limit = lp[9]
    size = lp[10]
    groups = (n_in + size - 1) // size
    gs = 0
    while (1 << gs) < groups:
        gs += 1
    shift = 0 if bits == 8 else (1 if bits == 4 else 2)
    mask = (1 << bits) - 1
    sign = 1 << (bits - 1)
    lane = (1 << shift) - 1
    top = 0
    k = 0  # r * groups + g
    for r in range(n_out):
        start = r * row_bytes
        c0 = 0
        for g in range(groups):
            c1 = c0 + size
            if c1 > n_in:
                c1 = n_in
            total = 0
            if bits == 3:
                for c in range(c0, c1):
                    at = start + ((3 * c) >> 3)
                    q = ((packed[at] | (packed[at + 1] << 8)) >> ((3 * c) & 7)) & mask
                    total += ((q ^ sign) - sign) * ((rb[xo + c] ^ 0x80) - 0x80)
            else:
                for c in range(c0, c1):
                    q = (packed[start + (c >> shift)] >> ((c & lane) * bits)) & mask
                    total += ((q ^ sign) - sign) * ((rb[xo + c] ^ 0x80) - 0x80)
            acc[k] = total
            k += 1
            c0 = c1
            if total < 0:
                total = 0 - total
            if total > top:
                top = total
    bits_top = 0
    while top:
        top >>= 1
        bits_top += 1
    exp = ((lp[4] ^ b31) - b31) + e - gs
    bias_exp = (lp[5] ^ b31) - b31
    pre = bits_top - 15
    if pre < exp - bias_exp:
        pre = exp - bias_exp
    if pre < 0:
        pre = 0
    exp -= pre
    bias_shift = bias_exp - exp
    half = (1 << (pre - 1)) if pre > 0 else 0
    group_half = (1 << (gs - 1)) if gs > 0 else 0
    bias_half = (1 << (bias_shift - 1)) if 0 < bias_shift <= 30 else 0
    top = 0
    k = 0
    for r in range(n_out):
        a = 0
        for g in range(groups):
            a += ((((((acc[k] ^ b31) - b31) + half) >> pre) * ((mult[k] ^ b31) - b31)) + group_half) >> gs
            k += 1
        if bias_shift <= 30:
            a += (((bias[r] ^ b31) - b31) + bias_half) >> bias_shift
        if a < 0 and not wide:
            a = 0
        acc[r] = a
        if a < 0:
            a = 0 - a
        if a > top:
            top = a
    s = 0
    t = top
    while t > limit:
        s += 1
        t = (top + (1 << (s - 1))) >> s
    half = (1 << (s - 1)) if s > 0 else 0
    for r in range(n_out):
        q = (((acc[r] ^ b31) - b31) + half) >> s
        if q > limit:
            q = limit
        if q < 0 - limit:
            q = 0 - limit
        if wide:
            rb[yo + 2 * r] = q
            rb[yo + 2 * r + 1] = q >> 8
        else:
            rb[yo + r] = q
    return exp - s


@micropython.viper
def step(rb: ptr8, ro: int, ex: ptr8, eo: int, w: ptr16, meta: ptr32, s: ptr32, label: int, train: int) -> int:
    b31 = 1
    b31 <<= 31
    coarse = ptr16(EXP2_COARSE)
    fine = ptr16(EXP2_FINE)
    n_layers = meta[0]
    r = meta[1]
    nc = meta[2]
    zo = ro + meta[3]
    HE = n_layers * r
    GH = HE + n_layers
    Z = GH + r
    P = Z + nc
    G = P + nc
    ez = (ex[eo + n_layers] ^ 0x80) - 0x80
    low = ez
    for i in range(n_layers):
        m = 6 + 5 * i
        n_in = meta[m]
        xo = ro + meta[m + 1]
        ao = meta[m + 2]
        fa = meta[m + 4]
        top = 0
        for c in range(r):
            acc = 0
            k = ao + c
            for j in range(n_in):
                xj = (rb[xo + j] ^ 0x80) - 0x80
                if xj:
                    acc += ((w[k] ^ 0x8000) - 0x8000) * xj
                k += r
            s[i * r + c] = acc
            if acc < 0:
                acc = 0 - acc
            if acc > top:
                top = acc
        sh = 0
        t = top
        while t > 2047:
            sh += 1
            t = (top + (1 << (sh - 1))) >> sh
        half = (1 << (sh - 1)) if sh > 0 else 0
        for c in range(r):
            q = (((s[i * r + c] ^ b31) - b31) + half) >> sh
            if q > 2047:
                q = 2047
            if q < -2047:
                q = -2047
            s[i * r + c] = q
        he = fa + ((ex[eo + i] ^ 0x80) - 0x80) - sh
        s[HE + i] = he
        if 12 + he < low:
            low = 12 + he
    if low < -4 or low > 30:
        return -1
    sh = ez - low
    half = (1 << (sh - 1)) if 0 < sh <= 30 else 0
    for c in range(nc):
        v = ((rb[zo + 2 * c] | (rb[zo + 2 * c + 1] << 8)) ^ 0x8000) - 0x8000
        s[Z + c] = 0 if sh > 30 else (v + half) >> sh
    for i in range(n_layers):
        bo = meta[6 + 5 * i + 3]
        sh = 12 + ((s[HE + i] ^ b31) - b31) - low
        if sh <= 30:
            half = (1 << (sh - 1)) if sh > 0 else 0
            for c in range(nc):
                acc = 0
                k = bo + c
                for j in range(r):
                    acc += ((w[k] ^ 0x8000) - 0x8000) * ((s[i * r + j] ^ b31) - b31)
                    k += nc
                s[Z + c] = ((s[Z + c] ^ b31) - b31) + ((acc + half) >> sh)
    if not train:
        best = 0
        top = (s[Z] ^ b31) - b31
        for c in range(1, nc):
            v = (s[Z + c] ^ b31) - b31
            if v > top:
                top = v
                best = c
        return best
    top = (s[Z] ^ b31) - b31
    for c in range(1, nc):
        v = (s[Z + c] ^ b31) - b31
        if v > top:
            top = v
    total = 0
    for c in range(nc):
        d = top - ((s[Z + c] ^ b31) - b31)
        if low >= 10:
            if low > 10:
                d = (d + (1 << (low - 11))) >> (low - 10)
        elif d > (16384 >> (10 - low)):
            d = 16384
        else:
            d = d << (10 - low)
        if d > 16384:
            d = 16384
        u = (d * 5909 + 2048) >> 12
        q = 0
        if u < 16384:
            sq = 15 + (u >> 10)
            q = (coarse[(u >> 5) & 31] * fine[u & 31] + (1 << (sq - 1))) >> sq
        s[P + c] = q
        total += q
    recip = (1 << 29) // total
    lr_mult = meta[4]
    top = 0
    for c in range(nc):
        g = 0 - ((s[P + c] * recip + 8192) >> 14)
        if c == label:
            g += 32768
        g *= lr_mult
        s[G + c] = g
        if g < 0:
            g = 0 - g
        if g > top:
            top = g
    sh = 0
    t = top
    while t > 2047:
        sh += 1
        t = (top + (1 << (sh - 1))) >> sh
    half = (1 << (sh - 1)) if sh > 0 else 0
    for c in range(nc):
        q = (((s[G + c] ^ b31) - b31) + half) >> sh
        if q > 2047:
            q = 2047
        if q < -2047:
            q = -2047
        s[G + c] = q
    eg = 15 + meta[5] - sh
    for i in range(n_layers):
        m = 6 + 5 * i
        n_in = meta[m]
        xo = ro + meta[m + 1]
        ao = meta[m + 2]
        bo = meta[m + 3]
        fa = meta[m + 4]
        he = (s[HE + i] ^ b31) - b31
        top = 0
        for j in range(r):
            acc = 0
            k = bo + j * nc
            for c in range(nc):
                acc += ((w[k + c] ^ 0x8000) - 0x8000) * ((s[G + c] ^ b31) - b31)
            s[GH + j] = acc
            if acc < 0:
                acc = 0 - acc
            if acc > top:
                top = acc
        sh = 0
        t = top
        while t > 2047:
            sh += 1
            t = (top + (1 << (sh - 1))) >> sh
        half = (1 << (sh - 1)) if sh > 0 else 0
        for j in range(r):
            q = (((s[GH + j] ^ b31) - b31) + half) >> sh
            if q > 2047:
                q = 2047
            if q < -2047:
                q = -2047
            s[GH + j] = q
        egh = 12 + eg - sh
        # the updates: |u v| < 2^22, so a shift of 24 or more rounds every step to 0; a left shift
        # saturates before it could leave 32 bits (|d << k| > 65534 saturates w whatever w is)
        sh = he + eg - 12
        if sh < 24:
            half = (1 << (sh - 1)) if sh > 0 else 0
            lim = 65534 >> (0 - sh) if -16 < sh < 0 else 0
            for j in range(r):
                u = (s[i * r + j] ^ b31) - b31
                if u:
                    k = bo + j * nc
                    for c in range(nc):
                        d = u * ((s[G + c] ^ b31) - b31)
                        if sh > 0:
                            d = (d + half) >> sh
                        elif sh < 0:
                            if d > lim:
                                d = 65534
                            elif d < 0 - lim:
                                d = -65534
                            else:
                                d = d << (0 - sh)
                        v = ((w[k + c] ^ 0x8000) - 0x8000) + d
                        if v > 32767:
                            v = 32767
                        if v < -32767:
                            v = -32767
                        w[k + c] = v
        sh = ((ex[eo + i] ^ 0x80) - 0x80) + egh - fa
        if sh < 24:
            half = (1 << (sh - 1)) if sh > 0 else 0
            lim = 65534 >> (0 - sh) if -16 < sh < 0 else 0
            k = ao
            for j in range(n_in):
                u = (rb[xo + j] ^ 0x80) - 0x80
                if u:
                    for c in range(r):
                        d = u * ((s[GH + c] ^ b31) - b31)
                        if sh > 0:
                            d = (d + half) >> sh
                        elif sh < 0:
                            if d > lim:
                                d = 65534
                            elif d < 0 - lim:
                                d = -65534
                            else:
                                d = d << (0 - sh)
                        v = ((w[k + c] ^ 0x8000) - 0x8000) + d
                        if v > 32767:
                            v = 32767
                        if v < -32767:
                            v = -32767
                        w[k + c] = v
                k += r
    return total
