# An example sensor for the field loop (field.py): a vibration sensor on an analog input read by
# machine.ADC at RATE Hz for N readings (one second), reduced to the features the fan models take
# (host/skip2lora/data/fan.py): the magnitude spectrum in 1 Hz bins 1..512, log(1 + magnitude), averaged
# over adjacent bins down to BINS. The FFT is plain Python (radix 2, in place, float arrays; about
# 5,000 butterflies): a viper one would need fixed point and the tests this one has, and an RP2040's
# floats are not heap objects, so it allocates nothing per butterfly.
#     import adc_sensor, field
#     field.run(adc_sensor.read, label=my_button)
import math
import time
from array import array

PIN = 26  # ADC0 on an RP2040
RATE = 1024  # readings a second: 1 Hz bins
N = 1024  # readings a spectrum: bins 1..512
BINS = 128  # the model's inputs
# spectrum units: the magnitudes must be those of the sensor the model was trained on (the fan
# dataset's); 2 / N gives each bin the amplitude of its sine, in the ADC's units. Calibrate it.
SCALE = 2.0 / N

_re, _im = array("f", bytes(4 * N)), array("f", bytes(4 * N))
_cos = array("f", [math.cos(2 * math.pi * k / N) for k in range(N // 2)])
_sin = array("f", [-math.sin(2 * math.pi * k / N) for k in range(N // 2)])
_adc = None


def _fft(re, im):
    n = len(re)
    j = 0
    for i in range(1, n):  # bit-reversed order
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
                tr = re[b] * _cos[k] - im[b] * _sin[k]
                ti = re[b] * _sin[k] + im[b] * _cos[k]
                re[b], im[b] = re[a] - tr, im[a] - ti
                re[a] += tr
                im[a] += ti
                k += step
        size <<= 1


def spectrum(samples):
    """The features of N readings: BINS values, each the mean of log(1 + SCALE |X_k|) over its bins."""
    mean = sum(samples) / N  # the DC offset of an ADC's bias is not vibration
    for k in range(N):
        _re[k], _im[k] = samples[k] - mean, 0.0
    _fft(_re, _im)
    group = (N // 2) // BINS
    out = [0.0] * BINS
    for k in range(1, N // 2 + 1):  # bin 512 is the Nyquist one, real
        v = math.log(1.0 + SCALE * math.sqrt(_re[k] * _re[k] + _im[k] * _im[k]))
        out[(k - 1) // group] += v / group
    return out


def read():
    """N readings at RATE Hz (paced by ticks_us), as a spectrum."""
    global _adc
    if _adc is None:
        from machine import ADC
        _adc = ADC(PIN)
    samples = array("f", bytes(4 * N))
    period = 1000000 // RATE
    due = time.ticks_us()
    for k in range(N):
        while time.ticks_diff(time.ticks_us(), due) < 0:
            pass
        samples[k] = _adc.read_u16() * (3.3 / 65535)
        due = time.ticks_add(due, period)
    return spectrum(samples)
