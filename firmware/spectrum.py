# The fan models' features (host/skip2lora/data/fan.py) of N readings, for the example sensor
# (adc_sensor.py): the magnitude spectrum in bins 1..N/2, log(1 + scale |X_k|), averaged over
# adjacent bins down to BINS. The FFT is fixed point in viper (radix 2, in place, int32 arrays, Q15
# twiddles, every stage halves); floats only for the logs of the N/2 integer magnitudes.
# MicroPython with a native emitter only (every board port has one): only a board reads an ADC, so
# no portable twin (CPython, the WebAssembly build) would ever run.
#
# The range, on which a board's 32-bit viper ints rely (tests/firmware/test_spectrum.py checks it):
# the loaded samples have |q| <= LIMIT = 2^15 - 1; a stage maps moduli |a|, |b| <= M to at most
# M (1 + 2^-16.5) + 1.07 (a halved butterfly, Q15 |W| <= 2^15 + 1, the roundings), so ten stages
# keep every |X| <= 32782: a product |br c - bi s| <= 32782 (2^15 + 1) < 2^30.01 and
# |X|^2 <= 32782^2 < 2^30.01. Loading: |x N - sum x| <= 65535 * N = 2^26 for read_u16 readings.
import math
from array import array

import micropython

N = 1024  # readings a spectrum (one second at 1,024 Hz: 1 Hz bins)
BINS = 128  # the model's inputs
LIMIT = 32767  # the loaded samples' bound (see the range above)

_re, _im = array("i", bytes(4 * N)), array("i", bytes(4 * N))
# W^k = exp(-2 pi i k / N) in Q15; 1 is 32768, hence int32. A board's single-precision floats
# round each within 0.51.
_cos = array("i", [round(32768 * math.cos(2 * math.pi * k / N)) for k in range(N // 2)])
_sin = array("i", [round(-32768 * math.sin(2 * math.pi * k / N)) for k in range(N // 2)])


# Viper loads ptr32 as a machine word, zero-extended on a 64-bit port: (v ^ b31) - b31 restores
# the sign (b31 = 1 << 31 computed at run time; on a 32-bit board it is the identity).

@micropython.viper
def _load(x: ptr16, re: ptr32, im: ptr32, n: int) -> int:
    # re = (x n - sum x) >> e, rounded, in bit-reversed order, im = 0; returns the least e that
    # keeps every |re| <= LIMIT. The mean is removed exactly: n x - sum x is x - mean in 1/n units.
    total = 0
    for k in range(n):
        total += x[k]
    top = 0
    for k in range(n):
        d = x[k] * n - total
        if d < 0:
            d = 0 - d
        if d > top:
            top = d
    e = 0
    while ((top + (1 << e >> 1)) >> e) > 32767:
        e += 1
    half = 1 << e >> 1
    j = 0
    for k in range(n):
        re[j] = (x[k] * n - total + half) >> e
        im[j] = 0
        bit = n >> 1  # j = k + 1 bit-reversed: add 1 from the top
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
    return e


@micropython.viper
def _stage(re: ptr32, im: ptr32, cos: ptr32, sin: ptr32, n: int, size: int):
    # the butterflies of blocks of `size`: a, b = (a + W b) / 2, (a - W b) / 2, rounded half up
    b31 = 1
    b31 <<= 31
    half = size >> 1
    step = n // size
    start = 0
    while start < n:
        k = 0
        for a in range(start, start + half):
            b = a + half
            c = (cos[k] ^ b31) - b31
            s = (sin[k] ^ b31) - b31
            br = (re[b] ^ b31) - b31
            bi = (im[b] ^ b31) - b31
            tr = (br * c - bi * s + 16384) >> 15
            ti = (br * s + bi * c + 16384) >> 15
            ar = (re[a] ^ b31) - b31
            ai = (im[a] ^ b31) - b31
            re[a] = (ar + tr + 1) >> 1
            im[a] = (ai + ti + 1) >> 1
            re[b] = (ar - tr + 1) >> 1
            im[b] = (ai - ti + 1) >> 1
            k += step
        start += size


@micropython.viper
def _magnitudes(re: ptr32, im: ptr32, n: int):
    # re[k] = |X_k| rounded, k = 1..n, by an integer square root of re^2 + im^2 (< 2^31)
    b31 = 1
    b31 <<= 31
    for k in range(1, n + 1):
        r = (re[k] ^ b31) - b31
        i = (im[k] ^ b31) - b31
        v = r * r + i * i
        root = 0
        bit = 1
        bit <<= 30  # at run time: a literal 2^30 is no small int on a 32-bit board
        while bit > v:
            bit >>= 2
        while bit:
            if v >= root + bit:
                v -= root + bit
                root = (root >> 1) + bit
            else:
                root >>= 1
            bit >>= 2
        if v > root:  # v is now the remainder: past (root + 1/2)^2, round up
            root += 1
        re[k] = root


def fft(x):
    """The DFT of N readings x (array('H')) less their mean, scaled: X = (_re + i _im) * 2^e in
    place, k = 0..N-1; returns e."""
    e = _load(x, _re, _im, N)
    size = 2
    while size <= N:
        _stage(_re, _im, _cos, _sin, N, size)
        size <<= 1
    return e


def features(x, scale):
    """BINS floats from N readings x (array('H'), as machine.ADC.read_u16 gives them): each the
    mean over its bins of log(1 + scale |X_k|), k = 1..N/2, X the DFT of x less its mean."""
    unit = scale * (1 << fft(x))
    _magnitudes(_re, _im, N // 2)
    group = (N // 2) // BINS
    out = []
    k = 1
    for _ in range(BINS):  # a group's mean of logs as the log of its product: 128 logs, not 512
        p = 1.0
        for _ in range(group):
            p *= 1.0 + unit * _re[k]
            k += 1
        out.append(math.log(p) / group)
    return out
