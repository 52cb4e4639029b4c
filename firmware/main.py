# A board runs this at boot. It stays two lines: MicroPython compiles main.py from source on the
# board, which costs heap (an ESP32's 110 KB runs short) and leaves stale values on the stack that
# the collector's conservative scan can take for live pointers; the loop itself is s2l/serve.py,
# compiled by mpy-cross.
from s2l.serve import serve

serve()
