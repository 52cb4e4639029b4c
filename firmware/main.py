# The board's serial loop: bytes from the link into the protocol core, its replies back out, and
# pending training run an epoch at a time while no bytes wait. A read never waits: it takes the
# bytes already there, up to what the frame in progress still needs (the core says), so one stray
# 0x7E or a damaged length field cannot hold the loop for bytes that never come; a frame whose next
# byte is GAP_MS late is dropped (its sender stopped). The link is USB-CDC (the REPL's stdin/stdout),
# or a UART when the board has a uart.json ({"id": 0, "baudrate": 115200, "tx": 0, "rx": 1}: pin
# numbers), for boards without native USB. Frames never contain 0x03, so on USB Ctrl-C still drops
# to the REPL and mpremote keeps working; on a UART the REPL stays on USB.
import json
import select
import sys

from s2l.frames import CRC_SIZE, HEADER_SIZE, MAX_PAYLOAD
from s2l.protocol import Core

MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE  # the most a read asks for
GAP_MS = 100  # ms without a byte in the middle of a frame: the rest is not coming
UART_CONFIG = "uart.json"


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


def serve():
    core = Core()
    stream, writer, pollable = open_link()
    poll = select.poll()
    poll.register(pollable, select.POLLIN)
    read = waiting_bytes(stream, poll)
    buf = bytearray(MAX_FRAME)
    view = memoryview(buf)
    while True:
        partial = core.decoder.receiving()
        n = read(view[:core.wanted()]) if poll.poll(GAP_MS if partial else 0 if core.busy else 1000) else 0
        if n:
            reply = core.feed(buf, n)
        elif partial:
            core.decoder.abandon()  # a frame cut short: the host retries it (with a new START)
            reply = None
        else:
            reply = core.work(writer.write)  # WORKING frames go out during a long epoch
        if reply:
            writer.write(reply)


if __name__ == "__main__":
    serve()
