# The board's serial loop: bytes from the link into the protocol core, its replies back out, and
# pending training run an epoch at a time while no bytes wait. A read never waits: it takes the
# bytes already there, up to what the frame in progress still needs (the core says), so one stray
# 0x7E or a damaged length field cannot hold the loop for bytes that never come; a frame whose next
# byte is GAP_MS late is dropped (its sender stopped). The link is USB-CDC (the REPL's stdin/stdout),
# or a UART when the board has a uart.json ({"id": 0, "baudrate": 115200, "tx": 0, "rx": 1}: pin
# numbers), for boards without native USB. Frames never contain 0x03, so on USB Ctrl-C still drops
# to the REPL and mpremote keeps working; on a UART the REPL stays on USB.
import gc
import select

from s2l.frames import CRC_SIZE, HEADER_SIZE, MAX_PAYLOAD
from s2l.link import open_link, waiting_bytes
from s2l.protocol import Core

MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE  # the most a read asks for
GAP_MS = 100  # ms without a byte in the middle of a frame: the rest is not coming
GC_EVERY = 4096  # bytes allocated between collections


def serve():
    core = Core()
    # collect every few KB of allocation: garbage never spreads over the heap the arena leaves, so
    # what outlives a request (events, the last reply, a tuner's small objects) lands low, and the
    # heap's largest free block stays the same job after job (measured: 40 KB, against 3 KB without)
    if hasattr(gc, "threshold"):  # MicroPython's (CPython's collector counts objects, not bytes)
        gc.threshold(GC_EVERY)
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

