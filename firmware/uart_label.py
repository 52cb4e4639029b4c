# Labels from a UART for the field loop (field.py): another device (a machine's controller, a
# technician's terminal) writes a class number and a newline, e.g. b"2\n", and that labels the next
# reading the loop takes. A read never waits: it takes the bytes already there (any()). A line that
# is not a number is dropped; a number outside the model's classes reaches the learner, which
# refuses it (the log counts it).
from s2l.link import open_uart

LINE = 8  # bytes a label line may hold; a longer one is dropped


class UartLabels:
    def __init__(self, cfg):
        self.uart = open_uart(cfg, "label_uart")
        self.line = b""
        self.latched = None

    def __call__(self, x, guess):
        n = self.uart.any()
        while n > 0:
            byte = self.uart.read(1)
            n -= 1
            if byte == b"\n":
                text = self.line.strip()
                if len(self.line) <= LINE and text.isdigit():  # the last line before a reading wins
                    self.latched = int(text.decode())
                self.line = b""
            elif len(self.line) <= LINE:  # past LINE it stops growing: too long to be a label
                self.line += byte
        k, self.latched = self.latched, None
        return k
