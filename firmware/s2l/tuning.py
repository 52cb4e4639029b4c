# What both tuners share, and the choice between them, kept light: the board imports this and then
# only the tuner its job needs (the integer path must not pay the heap for the seven float methods,
# nor the float path for the integer kernels).
import sys

METHODS = ("ft-all", "ft-last", "ft-bias", "lora-all", "lora-last", "skip-lora", "skip2-lora")
PATHS = ("float", "int")
CACHE_MODES = ("float", "compact")  # how the float path stores samples and skip-cache rows
BOARDS = ("rp2", "esp32")
# a MicroPython with a board's fixed heap takes a board's defaults: the boards, and the unix port
# (the emulator that holds a board's heap); the WebAssembly build's heap grows on demand
ON_BOARD = sys.implementation.name == "micropython" and sys.platform != "webassembly"
SPILL_PATH = "skipcache.bin"


class TunerError(ValueError):
    pass


def finite(v):
    # false for NaN, the infinities and what float32 cannot hold; literals, not a named constant:
    # -NAME builds a new float object on every call, a literal is folded once at compile time
    return -3.4028234e38 <= v <= 3.4028234e38


def drain(steps):
    """Run a generator to its end (a sliced loop run whole); what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as e:
            return e.value


def check_sample(x, label, n_in, n_classes):
    """A float sample of the network's input size, every feature finite in float32, and its label."""
    if len(x) != n_in:
        raise TunerError("sample has %d features, the model takes %d" % (len(x), n_in))
    for v in x:
        if not finite(v):  # an int8 sample's too large scale ends here too
            raise TunerError("sample has a non-finite feature (%r; float32 ends at 3.4e38)" % v)
    check_label(label, n_classes)


def check_label(label, n_classes):
    if not 0 <= label < n_classes:
        raise TunerError("label %r out of range 0..%d" % (label, n_classes - 1))


def evaluate(tuner, samples, labels):
    """Accuracy and confusion counts (rows: true class, columns: predicted) of tuner.predict(x).
    Evaluation is not fine-tuning: the tuner's MAC counters are left as they were."""
    n = tuner.n_classes
    counted = dict(tuner.macs)
    confusion = [[0] * n for _ in range(n)]
    correct = 0
    for x, label in zip(samples, labels):
        p = tuner.predict(x)
        confusion[label][p] += 1
        correct += p == label
    tuner.macs = counted
    return correct / max(1, len(labels)), confusion


def epoch_order(tuner, count):
    """The tuner's sample order for an epoch, shuffled: all stored samples (count None), or the
    first `count` entries as the caller (the guard) arranged them. One array, allocated once."""
    n = tuner.n_samples
    if not n:
        raise TunerError("no fine-tune samples stored")
    order = tuner.sample_order()
    if count is None:
        for i in range(n):
            order[i] = i
        count = n
    tuner.rng.shuffle(order, count)
    return order, count


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
