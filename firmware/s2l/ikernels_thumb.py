# The Thumb flavour of the integer kernels (RP2040): ikernels_viper.py's frozen_layer and step, with
# every loop of multiply-accumulates handed to an assembler routine of thumb_asm.py (a call per
# layer and matrix); the bookkeeping between them (int12 fits, exponents, the softmax) stays viper,
# written as ikernels_viper.py writes it. A routine gets its sizes and offsets in _BLK and the
# buffers themselves (the assembler takes a buffer's address). ingest8 is viper's: one pass over a
# sample as it arrives. Imported by ikernels.py; without the inline Thumb assembler the import fails.
import micropython
from array import array

from s2l.exp2 import EXP2_COARSE, EXP2_FINE
from s2l.ikernels_viper import ingest8  # noqa: F401 (re-exported: this flavour's ingest8)
from s2l.thumb_asm import outer, rowsums, wsum

_BLK = array("i", [0] * 16)  # a routine's parameters, then words it works in
_SUMS = array("i", [0] * 32)  # a layer's B^T h (n_classes <= 32), before it joins the logits


@micropython.viper
def frozen_layer(packed, lp: ptr32, mult: ptr32, bias: ptr32, rb, ro: int, e: int, acc) -> int:
    b31 = 1
    b31 <<= 31
    y8 = ptr8(rb)
    a = ptr32(acc)
    blk = ptr32(_BLK)
    n_out = lp[2]
    n_in = lp[3]
    yo = ro + lp[7]
    wide = lp[8]
    limit = lp[9]
    size = lp[10]
    groups = (n_in + size - 1) // size
    gs = 0
    while (1 << gs) < groups:
        gs += 1
    blk[0] = ro + lp[6]
    blk[1] = n_out
    blk[2] = n_in
    blk[3] = size
    blk[4] = lp[0]
    blk[5] = lp[1]
    rowsums(_BLK, packed, rb, acc)
    top = 0
    for k in range(n_out * groups):
        total = (a[k] ^ b31) - b31
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
        t = 0
        for g in range(groups):
            t += ((((((a[k] ^ b31) - b31) + half) >> pre) * ((mult[k] ^ b31) - b31)) + group_half) >> gs
            k += 1
        if bias_shift <= 30:
            t += (((bias[r] ^ b31) - b31) + bias_half) >> bias_shift
        if t < 0 and not wide:
            t = 0
        a[r] = t
        if t < 0:
            t = 0 - t
        if t > top:
            top = t
    s = 0
    t = top
    while t > limit:
        s += 1
        t = (top + (1 << (s - 1))) >> s
    half = (1 << (s - 1)) if s > 0 else 0
    for r in range(n_out):
        q = (((a[r] ^ b31) - b31) + half) >> s
        if q > limit:
            q = limit
        if q < 0 - limit:
            q = 0 - limit
        if wide:
            y8[yo + 2 * r] = q
            y8[yo + 2 * r + 1] = q >> 8
        else:
            y8[yo + r] = q
    return exp - s


@micropython.viper
def step(rb, ro: int, ex: ptr8, eo: int, w, meta: ptr32, s, label: int, train: int) -> int:
    b31 = 1
    b31 <<= 31
    sc = ptr32(s)
    sums = ptr32(_SUMS)
    blk = ptr32(_BLK)
    coarse = ptr16(EXP2_COARSE)
    fine = ptr16(EXP2_FINE)
    n_layers = meta[0]
    r = meta[1]
    nc = meta[2]
    zo = ro + meta[3]
    row = ptr8(rb)
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
        fa = meta[m + 4]
        # h = A^T x: out[c] = sum over j of A[j * r + c] x[j]
        blk[0] = 2 * meta[m + 2]
        blk[1] = 2
        blk[2] = 2 * r
        blk[3] = n_in
        blk[4] = r
        blk[5] = ro + meta[m + 1]
        blk[6] = 1
        blk[7] = 4 * i * r
        wsum(_BLK, w, rb, s)
        top = 0
        for c in range(r):
            acc = (sc[i * r + c] ^ b31) - b31
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
            q = (((sc[i * r + c] ^ b31) - b31) + half) >> sh
            if q > 2047:
                q = 2047
            if q < -2047:
                q = -2047
            sc[i * r + c] = q
        he = fa + ((ex[eo + i] ^ 0x80) - 0x80) - sh
        sc[HE + i] = he
        if 12 + he < low:
            low = 12 + he
    if low < -4 or low > 30:
        return -1
    sh = ez - low
    half = (1 << (sh - 1)) if 0 < sh <= 30 else 0
    for c in range(nc):
        v = ((row[zo + 2 * c] | (row[zo + 2 * c + 1] << 8)) ^ 0x8000) - 0x8000
        sc[Z + c] = 0 if sh > 30 else (v + half) >> sh
    for i in range(n_layers):
        sh = 12 + ((sc[HE + i] ^ b31) - b31) - low
        if sh <= 30:
            half = (1 << (sh - 1)) if sh > 0 else 0
            # B^T h: sums[c] = sum over j of B[j * nc + c] h[j]
            blk[0] = 2 * meta[6 + 5 * i + 3]
            blk[1] = 2
            blk[2] = 2 * nc
            blk[3] = r
            blk[4] = nc
            blk[5] = 4 * i * r
            blk[6] = 0
            blk[7] = 0
            wsum(_BLK, w, s, _SUMS)
            for c in range(nc):
                sc[Z + c] = ((sc[Z + c] ^ b31) - b31) + ((((sums[c] ^ b31) - b31) + half) >> sh)
    if not train:
        best = 0
        top = (sc[Z] ^ b31) - b31
        for c in range(1, nc):
            v = (sc[Z + c] ^ b31) - b31
            if v > top:
                top = v
                best = c
        return best
    top = (sc[Z] ^ b31) - b31
    for c in range(1, nc):
        v = (sc[Z + c] ^ b31) - b31
        if v > top:
            top = v
    total = 0
    for c in range(nc):
        d = top - ((sc[Z + c] ^ b31) - b31)
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
        sc[P + c] = q
        total += q
    recip = (1 << 29) // total
    lr_mult = meta[4]
    top = 0
    for c in range(nc):
        g = 0 - ((sc[P + c] * recip + 8192) >> 14)
        if c == label:
            g += 32768
        g *= lr_mult
        sc[G + c] = g
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
        q = (((sc[G + c] ^ b31) - b31) + half) >> sh
        if q > 2047:
            q = 2047
        if q < -2047:
            q = -2047
        sc[G + c] = q
    eg = 15 + meta[5] - sh
    for i in range(n_layers):
        m = 6 + 5 * i
        ao = meta[m + 2]
        bo = meta[m + 3]
        he = (sc[HE + i] ^ b31) - b31
        # gh = B g, before B's update: gh[j] = sum over c of B[j * nc + c] g[c]
        blk[0] = 2 * bo
        blk[1] = 2 * nc
        blk[2] = 2
        blk[3] = nc
        blk[4] = r
        blk[5] = 4 * G
        blk[6] = 0
        blk[7] = 4 * GH
        wsum(_BLK, w, s, s)
        top = 0
        for j in range(r):
            acc = (sc[GH + j] ^ b31) - b31
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
            q = (((sc[GH + j] ^ b31) - b31) + half) >> sh
            if q > 2047:
                q = 2047
            if q < -2047:
                q = -2047
            sc[GH + j] = q
        egh = 12 + eg - sh
        # B += h g^T, then A += x gh^T (the shifts as ikernels_viper.py's updates take them)
        sh = he + eg - 12
        if sh < 24:
            blk[0] = 2 * bo
            blk[1] = 4 * i * r
            blk[2] = 4 * G
            blk[3] = r
            blk[4] = nc
            blk[5] = 0
            blk[6] = sh
            blk[7] = (1 << (sh - 1)) if sh > 0 else 0
            blk[8] = 65534 >> (0 - sh) if -16 < sh < 0 else 0
            outer(_BLK, w, s, s)
        sh = ((ex[eo + i] ^ 0x80) - 0x80) + egh - meta[m + 4]
        if sh < 24:
            blk[0] = 2 * ao
            blk[1] = ro + meta[m + 1]
            blk[2] = 4 * GH
            blk[3] = meta[m]
            blk[4] = r
            blk[5] = 1
            blk[6] = sh
            blk[7] = (1 << (sh - 1)) if sh > 0 else 0
            blk[8] = 65534 >> (0 - sh) if -16 < sh < 0 else 0
            outer(_BLK, w, rb, s)
    return total
