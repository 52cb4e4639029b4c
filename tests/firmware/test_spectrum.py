"""The example sensor's features (firmware/spectrum.py), run for real by the MicroPython unix port
(viper needs a native emitter: the WebAssembly build and CPython have none, and only a board reads
an ADC): synthetic sines and the cooling-fan dataset's spectra as time signals match numpy's
log1p(scale |rfft(x - mean)|) averaged to 128 bins within the fixed point's error bound, the
worst-case inputs keep every stage inside the range that bound and int32 assume, and the viper FFT
against the plain-Python float FFT it replaced (timed; printed with -s).

The error bound, in units of |X| / 2^e (e: the loading's shift), by a worst-case argument:
loading rounds each sample within 1/2, which moves an output by at most 1/2 (the DFT / N of
errors <= 1/2); a stage adds at most STAGE to an element (the Q15 twiddle's rounding, <= 0.72,
times |b| <= M, over 2^16; the product's rounding, <= sqrt(2)/2, halved; the halving's, <= sqrt(2)/2),
and the later stages, a DFT of 2^m elements divided by 2^m, do not grow it; the magnitude is
rounded within 1/2. A feature moves by at most scale * 2^e times that: |d log(1 + u)| <= |du|."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from skip2lora.runtimes.mpyrun import run_firmware_script

N, BINS, LIMIT = 1024, 128, 32767
STAGES = 10
INT32 = 2 ** 31
TWIDDLE = 0.72  # |Wq - 2^15 W|: each part rounded within 0.51 (a board's single-precision floats)
FAN = Path(__file__).resolve().parents[3] / "shared" / "data" / "cooling-fan"
VOLTS = 3.3 / 65535 * 2 / N  # adc_sensor.SCALE: read_u16 in volts, bins as sine amplitudes


def moduli():
    """The bound on every element's modulus before each stage and after the last."""
    out = [LIMIT]
    for _ in range(STAGES):  # (M + M (1 + TWIDDLE / 2^15) + sqrt(2)/2) / 2 + sqrt(2)/2
        out.append(out[-1] * (1 + TWIDDLE / 2 ** 16) + 3 * math.sqrt(2) / 4)
    return out


STAGE = moduli()[-1] * TWIDDLE / 2 ** 16 + math.sqrt(2) / 4 + math.sqrt(2) / 2
DELTA = 0.5 + STAGES * STAGE + 0.5  # loading, the stages, the magnitude's rounding


def shift(x):
    """The loading's e: the least with round((x N - sum x) / 2^e) inside LIMIT."""
    x = [int(v) for v in x]
    top, e = max(abs(v * N - sum(x)) for v in x), 0
    while (top + (1 << e >> 1)) >> e > LIMIT:
        e += 1
    return e


def tolerance(x, scale):
    return scale * 2 ** shift(x) * DELTA


def reference(x, scale):
    x = np.asarray(x, float)
    return np.log1p(scale * np.abs(np.fft.rfft(x - x.mean()))[1:N // 2 + 1]).reshape(BINS, -1).mean(axis=1)


FEATURES = """
import json
from array import array
from spectrum import features
cases = json.load(open("cases.json"))
print(json.dumps([features(array("H", x), scale) for x, scale in cases]))
"""


def features(cases):
    """[(readings, scale)] -> the firmware's features of each, under the unix port."""
    files = {"cases.json": json.dumps([[list(map(int, x)), s] for x, s in cases]).encode()}
    return [np.array(f) for f in json.loads(run_firmware_script(FEATURES, "micropython-unix", files=files))]


def tone(k, amplitude, phase=0.0):
    return amplitude * np.cos(2 * np.pi * k * np.arange(N) / N + phase)


def adc(signal, mid=32768):
    """read_u16 readings of a signal in counts around mid."""
    return np.clip(np.round(mid + signal), 0, 65535)


def test_sines_at_known_bins_match_numpy():
    rng = np.random.default_rng(3)
    signals = [adc(tone(50, 10000) + tone(201, 3000, 1.0) + np.arange(N) % 7),  # the old sensor test's shape
               adc(tone(1, 30000)), adc(tone(511, 20000, 0.3)), adc(tone(512, 32767)), adc(tone(100, 4, 2.0)),
               adc(tone(37, 12000, 0.5) + tone(300, 40) + rng.integers(0, 16, N)),  # a weak tone in noise
               np.round(adc(tone(64, 20000)) / 16) * 16,  # a 12-bit ADC's read_u16 steps
               np.full(N, 40000)]  # no vibration: every feature 0
    cases = [(x, VOLTS) for x in signals] + [(signals[0], 2 / N)]  # bins in counts: large features
    got = features(cases)
    worst = 0.0
    for (x, scale), f in zip(cases, got):
        err, tol = np.abs(f - reference(x, scale)).max(), tolerance(x, scale)
        assert err <= tol, (err, tol)
        worst = max(worst, err / tol)
    for k, f in zip((50, 1, 511, 512), got):  # each tone's bin in its feature
        assert np.argmax(f) == (k - 1) // (N // 2 // BINS)
    assert not got[7].any()
    print("\nsines: largest error %.3f of the bound (%.1f units of |X| / 2^e)" % (worst, DELTA))


def fan_windows():
    """One noisy fan-env test spectrum of each class (512 magnitudes) and its loader features."""
    from skip2lora.data.fan import read_recording
    out = []
    for cls in ("normal", "damage1", "damage2"):
        path = str(FAN / ("12cm_hmlo_%s_noisy_2.zip" % cls))
        out.append((np.expm1(read_recording(path, 512)[10].astype(float)), read_recording(path, BINS)[10]))
    return out


@pytest.mark.skipif(not FAN.is_dir(), reason="the cooling-fan dataset is not at ../shared/data")
def test_fan_spectra_as_time_signals_give_the_loaders_features():
    # The dataset keeps spectra, not signals: each window becomes the sum of its bins' sines (random
    # phases; Nyquist's a cosine at half its magnitude), read_u16 counts around mid-scale, peak 30,000.
    rng = np.random.default_rng(5)
    n = np.arange(N)
    cases, loader = [], []
    for mags, feats in fan_windows():
        phases = rng.uniform(0, 2 * np.pi, N // 2)
        amps = mags.copy()
        amps[-1], phases[-1] = mags[-1] / 2, 0.0
        wave = (amps[:, None] * np.cos(2 * np.pi * np.arange(1, N // 2 + 1)[:, None] * n / N + phases[:, None])).sum(0)
        gain = 30000 / np.abs(wave).max()  # counts a unit
        cases.append((adc(gain * wave), 2 / (N * gain)))
        loader.append((feats, 1 / gain))  # rounding to counts moves a bin's magnitude by <= N / 2 counts
    worst = 0.0
    for (x, scale), (feats, rounding), got in zip(cases, loader, features(cases)):
        tol = tolerance(x, scale)
        err = np.abs(got - reference(x, scale)).max()
        assert err <= tol, (err, tol)
        assert np.abs(got - feats).max() <= tol + rounding + 1e-6  # the loader's float32
        worst = max(worst, err / tol)
    print("\nfan windows: largest error %.3f of the bound" % worst)


RANGES = """
import json
from array import array
import spectrum as S

def top():  # the largest |element|^2
    return max(r * r + i * i for r, i in zip(S._re, S._im))

out = {"twiddle": max(c * c + s * s for c, s in zip(S._cos, S._sin)), "inputs": []}
for x in json.load(open("cases.json")):
    S._load(array("H", x), S._re, S._im, S.N)
    tops = [top()]
    size = 2
    while size <= S.N:
        S._stage(S._re, S._im, S._cos, S._sin, S.N, size)
        tops.append(top())
        size <<= 1
    out["inputs"].append(tops)
print(json.dumps(out))
"""


def test_worst_case_inputs_stay_inside_int32():
    # On the unix port a viper int has 64 bits, so an overflow would not show in the results: the
    # stages' moduli are read out (after loading and after each stage) and held to the bound the
    # error argument and the int32 products assume.
    # Full scale: 0 and 65534 load as -+32767 = LIMIT exactly (mean 32767, shift 10).
    n = np.arange(N)
    full = 65534
    inputs = [np.where(n % 2, full, 0),  # a square wave at Nyquist: every stage adds up
              np.where(n % 64 < 32, full, 0),  # at 16 Hz: its odd harmonics
              np.where(n == 0, 65535, 0),  # an impulse
              adc(tone(1, 32767), 32767), adc(tone(171, 32767, 0.4), 32767),
              np.random.default_rng(1).choice([0, full], N)]
    files = {"cases.json": json.dumps([x.astype(int).tolist() for x in inputs]).encode()}
    out = json.loads(run_firmware_script(RANGES, "micropython-unix", files=files))
    assert out["twiddle"] <= (2 ** 15 + TWIDDLE) ** 2
    bound = moduli()
    for tops in out["inputs"]:
        assert len(tops) == STAGES + 1
        for observed, limit in zip(tops, bound):
            assert math.sqrt(observed) <= limit
    top = math.sqrt(max(max(tops) for tops in out["inputs"]))
    assert top >= LIMIT  # the Nyquist square wave reaches the loaded bound at the last stage
    m = bound[-1]
    assert m * (2 ** 15 + TWIDDLE) + 2 ** 14 < INT32  # |br c - bi s| + rounding, in every butterfly
    assert 2 * m + 1 < INT32 and m * m < INT32  # a +- t + 1 and the magnitude's r^2 + i^2
    assert 65535 * N < INT32  # loading: |x N - sum x|
    print("\nint32: largest modulus %.1f (bound %.1f): |W b| <= %.4g, |X|^2 <= %.4g, of 2^31 = %.4g"
          % (top, m, m * (2 ** 15 + TWIDDLE), m * m, INT32))


TIMING = """
import math, time
from array import array
import micropython
import spectrum as S

# the plain-Python float FFT this one replaced (adc_sensor.py before), as the baseline
_fre, _fim = array("f", bytes(4 * S.N)), array("f", bytes(4 * S.N))
_fcos = array("f", [math.cos(2 * math.pi * k / S.N) for k in range(S.N // 2)])
_fsin = array("f", [-math.sin(2 * math.pi * k / S.N) for k in range(S.N // 2)])

def plain_fft(re, im):
    n = len(re)
    j = 0
    for i in range(1, n):
        bit = n >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
        if i < j:
            re[i], re[j] = re[j], re[i]
            im[i], im[j] = im[j], im[i]
    size = 2
    while size <= n:
        half, step = size >> 1, n // size
        for start in range(0, n, size):
            k = 0
            for a in range(start, start + half):
                b = a + half
                tr = re[b] * _fcos[k] - im[b] * _fsin[k]
                ti = re[b] * _fsin[k] + im[b] * _fcos[k]
                re[b], im[b] = re[a] - tr, im[a] - ti
                re[a] += tr
                im[a] += ti
                k += step
        size <<= 1

def plain_features(samples, scale):
    mean = sum(samples) / S.N
    for k in range(S.N):
        _fre[k], _fim[k] = samples[k] - mean, 0.0
    plain_fft(_fre, _fim)
    group = (S.N // 2) // S.BINS
    out = [0.0] * S.BINS
    for k in range(1, S.N // 2 + 1):
        out[(k - 1) // group] += math.log(1.0 + scale * math.sqrt(_fre[k] * _fre[k] + _fim[k] * _fim[k])) / group
    return out

# the RP2040's measured kernel, a 64x32 matrix-vector product at 125 MHz, in both flavours: this
# machine's multiply-accumulates a second against the RP2040's (plain floats 20,000/s, viper int8 x
# int16 1,000,000/s, measured in an instruction-level emulation of the Pico's MicroPython)
@micropython.viper
def mv_viper(w: ptr8, x: ptr16, y: ptr32, rows: int, cols: int):
    for r in range(rows):
        acc = 0
        base = r * cols
        for c in range(cols):
            acc += ((w[base + c] ^ 0x80) - 0x80) * ((x[c] ^ 0x8000) - 0x8000)
        y[r] = acc

def mv_plain(w, x, y, rows, cols):
    for r in range(rows):
        acc = 0.0
        base = r * cols
        for c in range(cols):
            acc += w[base + c] * x[c]
        y[r] = acc

def best(fn, repeat, setup=None):  # the least of `repeat` runs, in us: the machine is shared
    least = None
    for _ in range(repeat):
        if setup:
            setup()
        t0 = time.ticks_us()
        fn()
        dt = time.ticks_diff(time.ticks_us(), t0)
        least = dt if least is None or dt < least else least
    return least

x = array("H", [int(32768 + 10000 * math.sin(2 * math.pi * 50 * k / 1024)) for k in range(S.N)])
wb, xh, yi = bytearray(range(64 * 32)), array("h", range(32)), array("i", bytes(4 * 64))
wf, xf, yf = array("f", range(64 * 32)), array("f", range(32)), array("f", bytes(4 * 64))
t = {"viper_fft": best(lambda: S.fft(x), 20),
     "viper_magnitudes": best(lambda: S._magnitudes(S._re, S._im, S.N // 2), 20, lambda: S.fft(x)),
     "viper_features": best(lambda: S.features(x, 1e-4), 20),
     "plain_features": best(lambda: plain_features(x, 1e-4), 5),
     "mv_viper": best(lambda: mv_viper(wb, xh, yi, 64, 32), 50),
     "mv_plain": best(lambda: mv_plain(wf, xf, yf, 64, 32), 20)}
print(t)
"""


def test_viper_fft_time_against_the_plain_python_one():
    t = eval(run_firmware_script(TIMING, "micropython-unix", timeout=300))
    viper = t["viper_fft"] + t["viper_magnitudes"]
    logs = t["viper_features"] - viper  # the 512 logs: plain floats
    # on an RP2040: each part scaled by its flavour's speed there against here (the 64x32 product)
    viper_here, plain_here = 64 * 32 / t["mv_viper"] * 1e6, 64 * 32 / t["mv_plain"] * 1e6
    rp_viper = viper * viper_here / 1e6 + logs * plain_here / 2e4
    rp_plain = t["plain_features"] * plain_here / 2e4
    print("\nunix port: features by the viper FFT %d us (FFT %d, magnitudes %d, logs %d), by the plain "
          "FFT %d us: %.1fx; RP2040 estimate %.0f ms against %.0f ms"
          % (t["viper_features"], t["viper_fft"], t["viper_magnitudes"], logs, t["plain_features"],
             t["plain_features"] / t["viper_features"], rp_viper / 1e3, rp_plain / 1e3))
    print("calibration: 64x32 product here %.3g MAC/s viper, %.3g MAC/s plain float" % (viper_here, plain_here))
    assert t["viper_features"] < t["plain_features"]
