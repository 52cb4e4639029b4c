# Labels from buttons for the field loop (field.py): one GPIO pin a class, each a button to ground
# (the pin's pull-up holds it high). A press labels the next reading the loop takes with its class;
# an interrupt latches it, so a press while a reading is being taken is not missed.
from machine import Pin


class PinLabels:
    def __init__(self, pins):
        self.classes = len(pins)
        self.pressed = None
        self.pins = [Pin(p, Pin.IN, Pin.PULL_UP) for p in pins]
        for k in range(self.classes):
            self.pins[k].irq(self._handler(k), Pin.IRQ_FALLING)

    def _handler(self, k):
        def pressed(pin):
            self.pressed = k
        return pressed

    def __call__(self, x, guess):
        k, self.pressed = self.pressed, None
        return k
