"""Labels from buttons (firmware/pin_label.py) under CPython, the WebAssembly MicroPython and the unix
port, with a stand-in machine.Pin that records the interrupt handlers and fires them as presses."""

MACHINE = """
class Pin:
    IN, PULL_UP, IRQ_FALLING = 0, 1, 2
    made = []

    def __init__(self, number, mode, pull):
        self.number, self.mode, self.pull = number, mode, pull
        Pin.made.append(self)

    def irq(self, handler, trigger):
        self.handler, self.trigger = handler, trigger

    def press(self):
        self.handler(self)
"""
SCRIPT = """
from machine import Pin
from pin_label import PinLabels
labels = PinLabels([14, 15, 16])
out = [labels.classes, [(p.number, p.mode, p.pull, p.trigger) for p in Pin.made], labels(None, 0)]
Pin.made[2].press()
out.append(labels(None, 0))  # the press labels the next reading
out.append(labels(None, 0))  # and only that one
Pin.made[0].press(); Pin.made[1].press()
out.append(labels(None, 2))  # the last press before a reading wins
print(out)
"""


def test_a_press_labels_the_next_reading(run):
    out = run(SCRIPT, files={"machine.py": MACHINE.encode()}).strip().splitlines()[-1]
    assert out.replace(" ", "") == "[3,[(14,0,1,2),(15,0,1,2),(16,0,1,2)],None,2,None,1]"
