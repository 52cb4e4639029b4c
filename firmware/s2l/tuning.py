# The choice of a tuner, on top of both: the board imports this and then only the tuner its job
# needs (the integer path must not pay the heap for the seven float methods, nor the float path for
# the integer kernels). What the tuners share is below them, in tunerbase.py.
from s2l.arena import ON_BOARD
from s2l.tunerbase import METHODS, PATHS, TunerError

BOARDS = ("rp2", "esp32")


def new_tuner(model, method="skip2-lora", path=None, arena=None, **config):
    """A tuner on the float or the integer path; by default the integer one for Skip2-LoRA on a
    board (where it is the fast path), the float one elsewhere (where it is the reference). Without
    an lr, the model file's default (picked at export) when it has one, else the tuner's; without a
    rank, the rank of the file's starting adapter when it has one, else the tuner's. The integer
    tuner carves every buffer from `arena` (arena.py; by default one of its own)."""
    if "lr" not in config and model.lr is not None:
        config["lr"] = model.lr
    if "rank" not in config and model.adapter is not None:
        config["rank"] = model.adapter[0]
    if method not in METHODS:
        raise TunerError("unknown method %r (one of %s)" % (method, ", ".join(METHODS)))
    if path is None:
        path = "int" if ON_BOARD and method == "skip2-lora" else "float"
    if path not in PATHS:
        raise TunerError("unknown path %r (one of %s)" % (path, ", ".join(PATHS)))
    if path == "float":
        from s2l.tuner import Tuner
        return Tuner(model, method, arena=arena, **config)
    if method != "skip2-lora":
        raise TunerError("the integer path runs skip2-lora only, not %r" % method)
    from s2l.inttuner import IntSkip2Tuner
    return IntSkip2Tuner(model, arena, **config)
