# An example sensor for the field loop (field.py): a vibration sensor on an analog input read by
# machine.ADC at RATE Hz for N readings (one second), reduced to the features the fan models take
# (host/skip2lora/data/fan.py) by spectrum.py: the magnitude spectrum in 1 Hz bins 1..512,
# log(1 + magnitude), averaged over adjacent bins down to 128, by a fixed-point viper FFT: about
# 90 ms a spectrum on an RP2040 (estimated: tests/firmware/test_spectrum.py), where the plain-Python
# float FFT it replaced took about 1.8 s.
# `skip2lora flash --field` makes it the board's sensor by default (field_config.json).
import time
from array import array

from spectrum import N, features

PIN = 26  # ADC0 on an RP2040
RATE = 1024  # readings a second: 1 Hz bins
# spectrum units: the magnitudes must be those of the sensor the model was trained on (the fan
# dataset's); 3.3 / 65535 turns read_u16 into volts, 2 / N gives each bin the amplitude of its
# sine. Calibrate it.
SCALE = 3.3 / 65535 * 2 / N

_x = array("H", bytes(2 * N))
_adc = None


def read():
    """N readings at RATE Hz (paced by ticks_us), as the model's features."""
    global _adc
    if _adc is None:
        from machine import ADC
        _adc = ADC(PIN)
    period = 1000000 // RATE
    due = time.ticks_us()
    for k in range(N):
        while time.ticks_diff(time.ticks_us(), due) < 0:
            pass
        _x[k] = _adc.read_u16()
        due = time.ticks_add(due, period)
    return features(_x, SCALE)
