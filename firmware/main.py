# The board's serial loop: bytes from the link into the protocol core, its replies back out, and
# pending training run an epoch at a time while no bytes wait. Bytes are read in blocks into one
# buffer: as many as the frame in progress still needs (the core says), so a read never waits for
# bytes the host has not sent, and a frame costs a few reads, not a Python loop turn a byte. The
# link is USB-CDC (the REPL's stdin/stdout), or a UART when the board has a uart.json ({"id": 0,
# "baudrate": 115200, "tx": 0, "rx": 1}: pin numbers), for boards without native USB. Frames never contain 0x03, so on USB
# Ctrl-C still drops to the REPL and mpremote keeps working; on a UART the REPL stays on USB.
import gc
import json
import select
import sys

from s2l.frames import CRC_SIZE, HEADER_SIZE, MAX_PAYLOAD
from s2l.protocol import Core

MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE  # the most a read asks for
UART_CONFIG = "uart.json"
GC_EVERY = 4096  # bytes allocated between collections


def open_link():
    """(reader, writer, pollable): the UART of uart.json if there is one, else USB-CDC."""
    try:
        with open(UART_CONFIG) as f:
            cfg = json.load(f)
    except OSError:  # no uart.json: USB-CDC
        stdin = sys.stdin.buffer
        return getattr(stdin, "raw", stdin), sys.stdout.buffer, sys.stdin  # CPython buffers ahead of poll()
    except ValueError as e:
        raise ValueError("%s is not JSON: %s" % (UART_CONFIG, e))
    from machine import UART, Pin
    try:
        uart = UART(cfg.get("id", 0), baudrate=cfg.get("baudrate", 115200), tx=Pin(cfg["tx"]), rx=Pin(cfg["rx"]))
    except KeyError as e:
        raise ValueError("%s needs %s (a pin number)" % (UART_CONFIG, e))
    return uart, uart, uart


def serve():
    core = Core()
    # collect every few KB of allocation: garbage never spreads over the heap the arena leaves, so
    # what outlives a request (events, the last reply, a tuner's small objects) lands low, and the
    # heap's largest free block stays the same job after job (measured: 40 KB, against 3 KB without)
    if hasattr(gc, "threshold"):  # MicroPython's (CPython's collector counts objects, not bytes)
        gc.threshold(GC_EVERY)
    reader, writer, pollable = open_link()
    poll = select.poll()
    poll.register(pollable, select.POLLIN)
    buf = bytearray(MAX_FRAME)
    view = memoryview(buf)
    while True:
        if poll.poll(0 if core.busy else 1000):
            n = reader.readinto(view[:core.wanted()]) or 0  # poll promised one byte, the frame the rest
            reply = core.feed(buf, n)
        else:
            reply = core.work(writer.write)  # WORKING frames go out during a long epoch
        if reply:
            writer.write(reply)


if __name__ == "__main__":
    serve()
