# The board's serial loop: bytes from USB-CDC into the protocol core, its replies back out, and
# pending training run an epoch at a time while no bytes wait. Frames never contain 0x03, so
# Ctrl-C still drops to the REPL and mpremote keeps working.
import select
import sys

from s2l.protocol import Core


def serve():
    core = Core()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdin = getattr(stdin, "raw", stdin)  # CPython buffers ahead of poll(); boards do not
    poll = select.poll()
    poll.register(sys.stdin, select.POLLIN)
    while True:
        if poll.poll(0 if core.busy else 1000):
            reply = core.feed(stdin.read(1))  # poll promised one byte; read(n) would block for n
        else:
            reply = core.work()
        if reply:
            stdout.write(reply)


if __name__ == "__main__":
    serve()
