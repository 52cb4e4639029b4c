"""What the board's serving set costs in heap, measured under the MicroPython unix port with the
firmware compiled by mpy-cross as a board holds it (x64 here; objects are 64-bit, so a 32-bit
board's figures are lower): the protocol core's imports, and the integer tuner (its modules and the
object). The integer path must not import the float path's tuner, row store or kernels."""
import json
import subprocess

from s2l.arena import GENERAL_HEAP
from skip2lora.link.board import HOST_ARCH, build
from skip2lora.runtimes.mpyrun import BOARD_HEAP, unix_command, unix_env

SCRIPT = """
import gc, json, sys
gc.collect(); a0 = gc.mem_alloc()
from s2l.protocol import Core
gc.collect(); a1 = gc.mem_alloc()
core = Core(".")  # takes its arena, then loads the model file from "flash" into it
gc.collect(); a2 = gc.mem_alloc()
from s2l.tuning import new_tuner
t = new_tuner(core.model, "skip2-lora", path="int", arena=core.arena)
gc.collect(); a3 = gc.mem_alloc()
print(json.dumps({"imports": a1 - a0, "core": a2 - a1 - core.arena.size, "int_tuner": a3 - a2,
                  "arena": core.arena.size, "arena_free": core.arena.free, "free": gc.mem_free(),
                  "float_modules": [m for m in ("s2l.tuner", "s2l.rowstore", "s2l.skipcache", "s2l.kernels")
                                    if m in sys.modules]}))
"""
# measured here (x64 unix port, objects twice a board's size): imports 91.8 KB (the protocol core and
# the integer path's modules, all taken at boot, before the arena; 91.4 KB before the softmax tables
# left ikernels.py for a module of their own, exp2.py, issue 26; 75.6 KB before the learner API and
# the sliced epochs, 82.0 KB before the samples on flash, issue 24: their few new names filled the
# port's fifth qstr pool, 620 names, and the sixth, twice the fifth's size, is ~7.3 KB on x64; a
# board's pools step alike at its own counts), the core's own heap beside its
# arena (the model's float arrays, decoder buffers) 4.6 KB, the integer tuner's Python objects 2.8 KB
# (its buffers are the arena's); the bounds leave room to grow a little, not for a module the
# integer path need not load, nor for a buffer taken from the heap instead of the arena
IMPORTS_BOUND = 93 * 1024
CORE_BOUND = 10 * 1024
INT_TUNER_BOUND = 6 * 1024


def test_the_serving_set_fits_its_measured_heap(tmp_path):
    lib = build(HOST_ARCH, tmp_path / "build")
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "model.s2lm").write_bytes(open("models/digits-rotate.s2lm", "rb").read())
    (flash / "main_test.py").write_text(SCRIPT)
    out = subprocess.run(unix_command(BOARD_HEAP) + ["main_test.py"], cwd=flash, capture_output=True, text=True,
                         env=dict(unix_env(), MICROPYPATH=str(lib)), timeout=60)
    cost = json.loads(out.stdout)
    print(cost)
    assert cost["float_modules"] == []
    assert cost["imports"] <= IMPORTS_BOUND, cost
    assert cost["core"] <= CORE_BOUND, cost
    assert cost["int_tuner"] <= INT_TUNER_BOUND, cost
    # the arena is what the imports leave, less the general heap the board keeps beside it
    assert cost["arena"] > 241 * 1024 - IMPORTS_BOUND - GENERAL_HEAP - 40 * 1024, cost
    assert cost["free"] > GENERAL_HEAP - CORE_BOUND - INT_TUNER_BOUND, cost
