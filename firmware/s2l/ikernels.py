# Integer kernels of the board's fast path (integer Skip2-LoRA), portable flavour. The viper twins
# in ikernels_viper.py, and the Thumb flavour (ikernels_thumb.py: viper around assembler, RP2040),
# compute the same integers; on boards they replace these at import time (below: Thumb, else viper,
# else these). The softmax's tables are exp2.py's, which every flavour imports.
# A board pays for every call into a kernel and for every line of Python between calls, so the
# work is cut into few, large kernels: a sample arrives in one call (ingest8), a frozen layer is
# one call (frozen_layer), and a whole training step from the skip-cache, or the adapters' part of
# a prediction, is one call (step).
#
# A sample's row (bytes): its layer inputs x_0 .. x_{L-1} as int8, then the frozen logits z0 as
# int16 little-endian; each vector has an exponent (value = q * 2^-e) kept beside the row (int8).
# Adapters: int16 values holding A_i (n_in x rank) and B_i (rank x n_classes), row-major.
# Buffers are raw memory, as the viper twins' pointers see them (the tuner's are bytes views of
# its arena): this twin reads its int16/int32 arguments through typed() views.
# The ranges keep every sum inside int32, where viper's machine words wrap on a board: n terms of
# 32767 * 127 (int8 inputs) need n <= 512, of 32767 * 2047 (int12 activations) n <= 32.
# Rounding: rshift(v, s) = floor((v + 2^(s-1)) / 2^s), half up, as an arithmetic shift does it.

from s2l.arena import typed
from s2l.exp2 import EXP2_COARSE, EXP2_FINE, LOG2E_Q12

INT8 = 127
INT12 = 2047
INT16_MAX = 32767
FB = 12  # B's fixed exponent: B starts at zero and stays within +-8, 1/4096 resolution
# step's layout of `meta` (array('i')): these header fields, then per layer META_LAYER fields
# n_in, x offset in the row, A's and B's offsets in the adapters' array, A's exponent
META_HEADER = 6  # n_layers, rank, n_classes, z0 offset in the row, lr multiplier, lr exponent
META_LAYER = 5
# frozen_layer's per-layer parameters (array('i')): row_bytes, bits, n_out, n_in, the scales'
# exponent, the bias's exponent, x offset, y offset, y is int16 (the logits), clamp limit, the
# inputs a scale covers (n_in: per output channel; 16 or 32: per group)


def scratch_size(n_layers, rank, n_classes):
    """Length of step's int32 scratch: h of every layer, their exponents, B g, logits, p, g."""
    return n_layers * rank + n_layers + rank + 3 * n_classes


def rshift(v, s):
    return (v + (1 << (s - 1))) >> s if s > 0 else v << -s


def _s8(b):
    return b - 256 if b > 127 else b


def _least_shift(top, limit):
    # the least s >= 0 with rshift(top, s) <= limit
    s = 0
    t = top
    while t > limit:
        s += 1
        t = rshift(top, s)
    return s


def _fit12(s, at, n):
    # s[at:at + n] rounded into int12 in place with the least shift that fits them all; returns it
    top = 0
    for k in range(at, at + n):
        a = s[k] if s[k] >= 0 else -s[k]
        if a > top:
            top = a
    sh = _least_shift(top, INT12)
    for k in range(at, at + n):
        q = rshift(s[k], sh)
        s[k] = INT12 if q > INT12 else (-INT12 if q < -INT12 else q)
    return sh


def _sat16(w):
    return INT16_MAX if w > INT16_MAX else (-INT16_MAX if w < -INT16_MAX else w)


def ingest8(src, at, n, mult, dst, dat):
    # dst[dat + k] = rshift(q_k * mult, s) as int8, q_k = src[at + k] signed, with the least s that
    # keeps every |value| <= 127; returns s. A wire sample (int8 q, float32 scale = mult * 2^-E)
    # becomes a row vector at exponent E - s, in one pass (|q * mult| <= 2^23).
    top = 0
    for k in range(n):
        a = _s8(src[at + k]) * mult
        if a < 0:
            a = -a
        if a > top:
            top = a
    s = _least_shift(top, INT8)
    for k in range(n):
        q = rshift(_s8(src[at + k]) * mult, s)
        dst[dat + k] = (INT8 if q > INT8 else (-INT8 if q < -INT8 else q)) & 0xFF
    return s


def frozen_layer(packed, lp, mult, bias, rb, ro, e, acc):
    # One frozen layer in integers: y = relu?(W x * scale + bias), W `bits`-bit packed (model format),
    # x int8 at rb[ro + x offset] with exponent e; y rounded into its limit (int8, or int12 as
    # int16 for the logits) at rb[ro + y offset]; returns y's exponent. A scale per group of lp[10]
    # inputs (lp[10] = n_in: per channel) is an integer multiplier, |mult[r * groups + g]| <= 2^14,
    # at exponent lp[4]; the bias an int32 at exponent lp[5]. acc: n_out * groups int32 of scratch.
    lp, mult, bias, acc = typed(lp, "i"), typed(mult, "i"), typed(bias, "i"), typed(acc, "i")
    row_bytes, bits, n_out, n_in, size = lp[0], lp[1], lp[2], lp[3], lp[10]
    xo, yo, wide, limit = ro + lp[6], ro + lp[7], lp[8], lp[9]
    groups = (n_in + size - 1) // size
    gs = 0  # the least gs with 2^gs >= groups: each group's product is shifted by it (below)
    while (1 << gs) < groups:
        gs += 1
    shift = 0 if bits == 8 else (1 if bits == 4 else 2)  # log2(values per byte), but for 3 bits
    mask = (1 << bits) - 1
    sign = 1 << (bits - 1)
    lane = (1 << shift) - 1
    top = 0
    for r in range(n_out):
        start = r * row_bytes
        for g in range(groups):
            total = 0
            for c in range(g * size, min(g * size + size, n_in)):
                if bits == 3:  # format v2: a little-endian bit stream, value c at bit 3c
                    at, lo = start + ((3 * c) >> 3), (3 * c) & 7
                    q = ((packed[at] | (packed[at + 1] << 8 if lo > 5 else 0)) >> lo) & mask
                else:
                    q = (packed[start + (c >> shift)] >> ((c & lane) * bits)) & mask
                total += (q - mask - 1 if q & sign else q) * _s8(rb[xo + c])
            acc[r * groups + g] = total
            if total < 0:
                total = -total
            if total > top:
                top = total
    # a group's sum times its multiplier at exponent lp[4] + e - pre: |acc >> pre| <= 2^15 keeps
    # the product within 2^29, and shifted right by gs the groups' products of a row sum to within
    # 2^29 too (per channel gs = 0); pre keeps the exponent at or below the bias's, so the bias
    # only shifts right, and the row's sum with its bias stays within 2^30
    bits_top = 0
    while top:
        top >>= 1
        bits_top += 1
    exp = lp[4] + e - gs
    pre = bits_top - 15
    if pre < exp - lp[5]:
        pre = exp - lp[5]
    if pre < 0:
        pre = 0
    exp -= pre
    bias_shift = lp[5] - exp
    top = 0
    for r in range(n_out):
        a = 0
        k = r * groups
        for g in range(groups):
            a += rshift(rshift(acc[k + g], pre) * mult[k + g], gs)
        # |bias| <= 2^29: past 30 bits of shift it rounds to 0 (and no shift leaves a machine word)
        a += 0 if bias_shift > 30 else rshift(bias[r], bias_shift)
        if a < 0 and not wide:  # ReLU between layers
            a = 0
        acc[r] = a  # row r's group sums are read by now (r <= r * groups), later rows' are not touched
        if a < 0:
            a = -a
        if a > top:
            top = a
    s = _least_shift(top, limit)
    for r in range(n_out):
        q = rshift(acc[r], s)
        q = limit if q > limit else (-limit if q < -limit else q)
        if wide:
            rb[yo + 2 * r] = q & 0xFF
            rb[yo + 2 * r + 1] = (q >> 8) & 0xFF
        else:
            rb[yo + r] = q & 0xFF
    return exp - s


def step(rb, ro, ex, eo, w, meta, s, label, train):
    # Skip2-LoRA on one cached sample: the row at rb[ro:] (x_i int8, z0 int16), its exponents at
    # ex[eo:] (signed bytes: x_0 .. x_{L-1}, z0), the adapters w, layout in meta, scratch s.
    #   h_i = A_i^T x_i            (int12, exponent he_i = fa_i + e_i - shift)
    #   z = z0 + sum_i B_i^T h_i   (int32 at the coarsest exponent `low` of its parts)
    # train == 0: returns argmax z (a prediction). Otherwise the softmax in Q15 (exp by the tables),
    # g = lr * (onehot(label) - softmax(z)) rounded to int12, and the SGD step of every adapter:
    #   gh_i = B_i g (with B_i before its update);  B_i += h_i g^T;  A_i += x_i gh_i^T
    # (saturating int16); returns sum(p) with p = s[P + c], so that the loss is log(sum / p[label]).
    # Returns -1 when the logits leave the range the softmax handles (exponent -4..30).
    w, meta, s = typed(w, "h"), typed(meta, "i"), typed(s, "i")
    n_layers, r, nc, zo = meta[0], meta[1], meta[2], ro + meta[3]
    HE = n_layers * r
    GH = HE + n_layers
    Z = GH + r
    P = Z + nc
    G = P + nc
    ez = _s8(ex[eo + n_layers])
    low = ez
    for i in range(n_layers):
        m = META_HEADER + META_LAYER * i
        n_in, xo, ao, fa = meta[m], ro + meta[m + 1], meta[m + 2], meta[m + 4]
        for c in range(r):
            acc = 0
            k = ao + c
            for j in range(n_in):
                acc += w[k] * _s8(rb[xo + j])
                k += r
            s[i * r + c] = acc
        he = fa + _s8(ex[eo + i]) - _fit12(s, i * r, r)
        s[HE + i] = he
        if FB + he < low:
            low = FB + he
    if low < -4 or low > 30:
        return -1
    sh = ez - low
    for c in range(nc):
        v = rb[zo + 2 * c] | (rb[zo + 2 * c + 1] << 8)
        v = v - 65536 if v > 32767 else v
        s[Z + c] = 0 if sh > 30 else rshift(v, sh)
    for i in range(n_layers):
        bo = meta[META_HEADER + META_LAYER * i + 3]
        sh = FB + s[HE + i] - low
        if sh <= 30:  # past 30 bits of shift a term is at most one unit and is skipped
            for c in range(nc):
                acc = 0
                for j in range(r):
                    acc += w[bo + j * nc + c] * s[i * r + j]
                s[Z + c] += rshift(acc, sh)
    if not train:
        best = 0
        for c in range(1, nc):
            if s[Z + c] > s[Z + best]:
                best = c
        return best
    # softmax: exp(z - max z) * 32767 from the distance to the top in base 2 with 10 fraction bits,
    # u = (max z - z) log2(e), capped at 16 (e^-16 rounds to 0)
    top = s[Z]
    for c in range(1, nc):
        if s[Z + c] > top:
            top = s[Z + c]
    total = 0
    for c in range(nc):
        d = top - s[Z + c]
        if low >= 10:
            d = rshift(d, low - 10)
        elif d > (16384 >> (10 - low)):
            d = 16384
        else:
            d = d << (10 - low)
        if d > 16384:
            d = 16384
        u = rshift(d * LOG2E_Q12, 12)
        q = 0
        if u < 16384:
            q = rshift(EXP2_COARSE[(u >> 5) & 31] * EXP2_FINE[u & 31], 15 + (u >> 10))
        s[P + c] = q
        total += q
    # g = (onehot - p / sum p) * lr at exponent 15 + lr exponent: recip = 2^29 // sum p, so that
    # p * recip / 2^14 is p / sum p in Q15 (products under 2^29); then rounded to int12
    recip = (1 << 29) // total
    for c in range(nc):
        s[G + c] = ((32768 if c == label else 0) - rshift(s[P + c] * recip, 14)) * meta[4]
    eg = 15 + meta[5] - _fit12(s, G, nc)
    for i in range(n_layers):
        m = META_HEADER + META_LAYER * i
        n_in, xo, ao, bo, fa = meta[m], ro + meta[m + 1], meta[m + 2], meta[m + 3], meta[m + 4]
        he = s[HE + i]
        # gh = B g, before B's update
        for j in range(r):
            acc = 0
            for c in range(nc):
                acc += w[bo + j * nc + c] * s[G + c]
            s[GH + j] = acc
        egh = FB + eg - _fit12(s, GH, r)
        # B += h g^T, A += x gh^T, each in its own units
        sh = he + eg - FB
        for j in range(r):
            u = s[i * r + j]
            if u:
                for c in range(nc):
                    k = bo + j * nc + c
                    w[k] = _sat16(w[k] + rshift(u * s[G + c], sh))
        sh = _s8(ex[eo + i]) + egh - fa
        k = ao
        for j in range(n_in):
            u = _s8(rb[xo + j])
            if u:
                for c in range(r):
                    w[k + c] = _sat16(w[k + c] + rshift(u * s[GH + c], sh))
            k += r
    return total


FLAVOUR = "portable"
try:
    from s2l.ikernels_thumb import ingest8, frozen_layer, step
    FLAVOUR = "thumb"
except (ImportError, SyntaxError):  # no inline Thumb assembler: every port but the RP2040's (rp2)
    try:
        from s2l.ikernels_viper import ingest8, frozen_layer, step
        FLAVOUR = "viper"
    except (ImportError, SyntaxError):  # no native emitter here (CPython, WebAssembly MicroPython)
        pass
