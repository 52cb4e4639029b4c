"""What the board's serving set costs in heap, measured under the MicroPython unix port with the
firmware compiled by mpy-cross as a board holds it (x64 here; objects are 64-bit, so a 32-bit
board's figures are lower): the protocol core's imports, and the integer tuner (its modules and the
object). The integer path must not import the float path's tuner, row store or kernels."""
import json
import subprocess

from skip2lora.board import HOST_ARCH, build
from skip2lora.mpyrun import BOARD_HEAP, unix_command, unix_env

SCRIPT = """
import gc, json, sys
gc.collect(); a0 = gc.mem_alloc()
from s2l.protocol import Core
gc.collect(); a1 = gc.mem_alloc()
core = Core(".")  # loads the model file from "flash"
from s2l.tuning import new_tuner
gc.collect(); a2 = gc.mem_alloc()
t = new_tuner(core.model, "skip2-lora", path="int")
gc.collect(); a3 = gc.mem_alloc()
print(json.dumps({"imports": a1 - a0, "int_tuner": a3 - a2, "free": gc.mem_free(),
                  "float_modules": [m for m in ("s2l.tuner", "s2l.rowstore", "s2l.skipcache", "s2l.kernels")
                                    if m in sys.modules]}))
"""
# measured (README, "Memory on a board"): imports 46.8 KB, the integer tuner 24.8 KB; the bounds
# leave room for the firmware to grow a little, not for a module the integer path need not load
IMPORTS_BOUND = 52 * 1024
INT_TUNER_BOUND = 32 * 1024


def test_the_serving_set_fits_its_measured_heap(tmp_path):
    lib = build(HOST_ARCH, tmp_path / "build")
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "model.s2lm").write_bytes(open("models/digits-rotate.s2lm", "rb").read())
    (flash / "main_test.py").write_text(SCRIPT)
    out = subprocess.run(unix_command(BOARD_HEAP) + ["main_test.py"], cwd=flash, capture_output=True, text=True,
                         env=dict(unix_env(), MICROPYPATH=str(lib)), timeout=60)
    cost = json.loads(out.stdout)
    assert cost["float_modules"] == []
    assert cost["imports"] <= IMPORTS_BOUND, cost
    assert cost["int_tuner"] <= INT_TUNER_BOUND, cost
    # of 241 KB, with the 10 KB model loaded: what the two bounds above leave, and a little more
    assert cost["free"] > 145 * 1024, cost
