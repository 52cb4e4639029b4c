# The board's end of the link: the stream it serves (USB-CDC, or the UART of uart.json) and a read
# that never waits. Kept out of main.py: a board compiles main.py from source at boot, and the
# compiler's heap is what an ESP32's 110 KB lacks; this module comes compiled (.mpy).
import json
import sys

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
