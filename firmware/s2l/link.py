# The board's end of the link: the stream it serves (USB-CDC, or the UART of uart.json) and a read
# that never waits. Kept out of main.py: a board compiles main.py from source at boot, and the
# compiler's heap is what an ESP32's 110 KB lacks; this module comes compiled (.mpy).
import gc
import json
import select
import sys

from s2l.frames import CRC_SIZE, HEADER_SIZE, MAX_PAYLOAD

UART_CONFIG = "uart.json"
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE  # the most a read asks for
GAP_MS = 100  # ms without a byte in the middle of a frame: the rest is not coming
GC_EVERY = 4096  # bytes allocated between collections


def collect_often():
    """Collect every few KB of allocation: garbage never spreads over the heap the arena leaves, so
    what outlives a request (events, the last reply, a tuner's small objects) lands low, and the
    heap's largest free block stays the same job after job (measured: 40 KB, against 3 KB without)."""
    if hasattr(gc, "threshold"):  # MicroPython's (CPython's collector counts objects, not bytes)
        gc.threshold(GC_EVERY)


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
    uart = open_uart(cfg, UART_CONFIG)
    return uart, uart, uart


def open_uart(cfg, source):
    """The UART that cfg ({"id", "baudrate", "tx", "rx"}: pin numbers) describes; `source` names
    where cfg came from in the error about a missing pin."""
    from machine import UART, Pin
    try:
        return UART(cfg.get("id", 0), baudrate=cfg.get("baudrate", 115200), tx=Pin(cfg["tx"]), rx=Pin(cfg["rx"]))
    except KeyError as e:
        raise ValueError("%s needs %s (a pin number)" % (source, e))


def waiting_bytes(stream, poll):
    """read(view): the bytes already waiting, up to len(view), into view; how many. A UART counts
    them (any()); USB-CDC's stdin does not, and its reads return only once every byte asked for has
    come, so it is read a byte at a time, each after poll says one is there (ipoll: no allocation)."""
    if hasattr(stream, "any"):
        def read(view):
            n = min(stream.any(), len(view))
            return (stream.readinto(view[:n]) or 0) if n else 0
        return read
    ready = getattr(poll, "ipoll", poll.poll)  # CPython has only poll()
    one = bytearray(1)

    def read(view):
        n = 0
        while n < len(view):
            for _ in ready(0):
                break
            else:
                return n
            if not stream.readinto(one):  # end of file (a host side that closed, off a board)
                return n
            view[n] = one[0]
            n += 1
        return n
    return read


class Server:
    """The protocol core on the link: serve(wait_ms) once per turn of a board's loop (main.py's, or
    the field loop's between its slices)."""

    def __init__(self, core):
        self.core = core
        stream, self.writer, pollable = open_link()
        self.poll = select.poll()
        self.poll.register(pollable, select.POLLIN)
        self.read = waiting_bytes(stream, self.poll)
        self.buf = bytearray(MAX_FRAME)
        self.view = memoryview(self.buf)

    def serve(self, wait_ms):
        """Bytes waiting (up to wait_ms for the first) into the core and its replies out; with none,
        a frame cut short is dropped and pending training runs one epoch (the core's work)."""
        core = self.core
        partial = core.decoder.receiving()
        n = self.read(self.view[:core.wanted()]) if self.poll.poll(GAP_MS if partial else wait_ms) else 0
        if n:
            reply = core.feed(self.buf, n)
        elif partial:
            core.decoder.abandon()  # a frame cut short: the host retries it (with a new START)
            reply = None
        else:
            reply = core.work(self.writer.write)  # WORKING frames go out during a long epoch
        if reply:
            self.writer.write(reply)
