"""Labels from a UART (firmware/uart_label.py) under CPython, the WebAssembly MicroPython and the unix
port, with a stand-in machine.UART fed lines as another device would write them."""
import json

MACHINE = """
class Pin:
    def __init__(self, number):
        self.number = number


class UART:
    made = []

    def __init__(self, id, baudrate, tx, rx):
        self.settings = [id, baudrate, tx.number, rx.number]
        self.waiting = b""
        UART.made.append(self)

    def any(self):
        return len(self.waiting)

    def read(self, n):
        out, self.waiting = self.waiting[:n], self.waiting[n:]
        return out
"""
SCRIPT = """
import json
from machine import UART
from uart_label import UartLabels
labels = UartLabels({"id": 1, "baudrate": 9600, "tx": 4, "rx": 5})
uart = UART.made[0]
out = [uart.settings, labels(None, 0)]
uart.waiting = b"2\\n"
out.append(labels(None, 0))  # the line labels the next reading
out.append(labels(None, 0))  # and only that one
uart.waiting = b"1\\r\\n0\\n"
out.append(labels(None, 0))  # the last line before a reading wins (a CR is stripped)
uart.waiting = b"abc\\n123456789012\\n"
out.append(labels(None, 0))  # not a number, too long: dropped
uart.waiting = b"1"
out.append(labels(None, 0))  # a line not yet complete waits for its newline
uart.waiting = b"\\n"
out.append(labels(None, 0))
try:
    UartLabels({"tx": 4})
except ValueError as e:
    out.append(str(e))
print(json.dumps(out))
"""


def test_a_line_labels_the_next_reading(run):
    out = json.loads(run(SCRIPT, files={"machine.py": MACHINE.encode()}).strip().splitlines()[-1])
    assert out[:-1] == [[1, 9600, 4, 5], None, 2, None, 0, None, None, 1]
    assert out[-1].startswith("label_uart needs") and "rx" in out[-1]
