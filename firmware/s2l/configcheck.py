# CONFIG and TRAIN fields checked before anything changes: types (a bool is not an int), ranges,
# and combinations the tuners refuse, so a rejected request leaves the board as it was.
from s2l import frames as F
from s2l.modelfile import LR_RANGE
from s2l.arena import ON_BOARD
from s2l.tunerbase import CACHE_MODES, METHODS, PATHS

MAX_RANK = 64
MAX_EPOCHS = 10000
MAX_BATCH = 1024
MAX_SAMPLES = 65535
MAX_HOLDOUT = 0.5


class ConfigError(ValueError):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def _int(args, name, low, high):
    v = args[name]
    if type(v) is not int:  # bool is a subclass of int: True is not a rank
        raise ConfigError(F.E_PAYLOAD, "%s must be an integer" % name)
    if not low <= v <= high:
        raise ConfigError(F.E_TUNER, "%s must be in %d..%d, got %d" % (name, low, high, v))


def _choice(args, name, choices):
    v = args[name]
    if type(v) is not str:
        raise ConfigError(F.E_PAYLOAD, "%s must be a string" % name)
    if v not in choices:
        raise ConfigError(F.E_TUNER, "unknown %s %r (one of %s)" % (name, v[:40], ", ".join(choices)))


def _lr(args, name):
    v = args[name]
    if type(v) not in (int, float):
        raise ConfigError(F.E_PAYLOAD, "lr must be a number")
    if not LR_RANGE[0] <= v <= LR_RANGE[1]:  # also false for NaN
        raise ConfigError(F.E_TUNER, "lr must be in %g..%g, got %r" % (LR_RANGE[0], LR_RANGE[1], v))


def _holdout(args, name):
    v = args[name]
    if type(v) not in (int, float):
        raise ConfigError(F.E_PAYLOAD, "holdout must be a number")
    if not 0 <= v <= MAX_HOLDOUT:
        raise ConfigError(F.E_TUNER, "holdout must be in 0..%g (0: no validation guard), got %r" % (MAX_HOLDOUT, v))


def _bool(args, name):
    if type(args[name]) is not bool:
        raise ConfigError(F.E_PAYLOAD, "%s must be true or false" % name)


def _path(args, name):
    if args[name] is not None:
        _choice(args, name, PATHS)


FIELDS = {
    "method": lambda a, n: _choice(a, n, METHODS),
    "rank": lambda a, n: _int(a, n, 1, MAX_RANK),
    "lr": _lr,
    "epochs": lambda a, n: _int(a, n, 1, MAX_EPOCHS),
    "batch": lambda a, n: _int(a, n, 1, MAX_BATCH),
    "seed": lambda a, n: _int(a, n, 0, 0xFFFFFFFF),
    "cache_mode": lambda a, n: _choice(a, n, CACHE_MODES),
    "path": _path,
    "samples": lambda a, n: _int(a, n, 1, MAX_SAMPLES),  # fine-tune samples to plan memory for
    "fit": _bool,  # with samples: as many of them as fit
    "holdout": _holdout,  # the share of each class's samples the guard validates on
    "patience": lambda a, n: _int(a, n, 0, MAX_EPOCHS),  # epochs without gain before it stops
}


def check(args, fields=FIELDS):
    """Raise ConfigError unless args (a dict from JSON) holds only known, valid fields."""
    for name in args:
        if name not in fields:
            raise ConfigError(F.E_PAYLOAD, "unknown field %r (known: %s)" % (str(name)[:40], ", ".join(sorted(fields))))
        fields[name](args, name)
    method = args.get("method", "skip2-lora")
    path = args.get("path")
    if path is None:  # as new_tuner chooses it
        path = "int" if ON_BOARD and method == "skip2-lora" else "float"
    if path == "int":
        if method != "skip2-lora":
            raise ConfigError(F.E_TUNER, "the integer path runs skip2-lora only, not %r" % args["method"])
        if args.get("batch", 1) != 1:
            raise ConfigError(F.E_TUNER, "the integer path trains with batch 1 (got %d)" % args["batch"])


def check_train(args):
    """TRAIN's optional payload: {"epochs": N}."""
    check(args, {"epochs": FIELDS["epochs"]})
