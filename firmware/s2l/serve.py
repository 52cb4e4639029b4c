# The board's serial loop: bytes from the link into the protocol core, its replies back out, and
# pending training run an epoch at a time while no bytes wait. A read never waits: it takes the
# bytes already there, up to what the frame in progress still needs (the core says), so one stray
# 0x7E or a damaged length field cannot hold the loop for bytes that never come; a frame whose next
# byte is GAP_MS late is dropped (its sender stopped). The link is USB-CDC (the REPL's stdin/stdout),
# or a UART when the board has a uart.json ({"id": 0, "baudrate": 115200, "tx": 0, "rx": 1}: pin
# numbers), for boards without native USB. Frames never contain 0x03, so on USB Ctrl-C still drops
# to the REPL and mpremote keeps working; on a UART the REPL stays on USB. (link.py's Server; the
# field loop, field.py, serves the same way between its slices, and runs instead when the board
# has a field_config.json.)
from s2l.protocol import FIELD_CONFIG, Core  # first, while the heap is whole
from s2l.link import Server, collect_often
from s2l import storage
import gc


def serve():
    if storage.exists(FIELD_CONFIG):  # a board left in the field: the field loop serves the link
        from field import main
        main()  # back here only when it fails (the reason is in its log): the protocol alone
        gc.collect()
    core = Core()
    collect_often()
    server = Server(core)
    while True:
        server.serve(0 if core.busy else 1000)
