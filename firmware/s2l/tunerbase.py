# What both tuners share, below them both: the float tuner (tuner.py) and the integer one
# (inttuner.py) subclass TunerBase, which runs the one epoch loop and calls their own mini-batch
# step; tuning.py, which picks one of them, sits on top.
import math

from s2l import clock

PATHS = ("float", "int")  # the float tuner (the reference), the integer one (a board's fast path)
METHODS = ("ft-all", "ft-last", "ft-bias", "lora-all", "lora-last", "skip-lora", "skip2-lora")
CACHE_MODES = ("float", "compact")  # how the float path stores samples and skip-cache rows
SPILL_PATH = "skipcache.bin"
INF = float("inf")


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


def softmax_top(values):
    """(the index of the largest of the logits `values`, the sum of exp(values - that largest)): a
    class's softmax probability is exp(its logit - the largest) / the sum."""
    best = 0
    for c in range(1, len(values)):
        if values[c] > values[best]:
            best = c
    total = 0.0
    for v in values:
        total += math.exp(v - values[best])
    return best, total


def check_label(label, n_classes):
    if not 0 <= label < n_classes:
        raise TunerError("label %r out of range 0..%d" % (label, n_classes - 1))


class TunerBase:
    """The epoch loop and the sample checks of a tuner. A tuner supplies train(order, start,
    end): the forward and backward passes of the samples order[start:end] and their update, their
    summed loss, a sample it cannot train (the integer path's range) counted in self.skipped; and
    model, n_classes, rng, batch, macs, peak_alloc, n_samples, sample_order() and predict(x)."""
    # whether the last mini-batch did fresh, slow work worth a tick: every one on the float path;
    # on the integer path one that ran a sample's frozen layers (a cached step is fast)
    fresh = True
    epochs_done, loss, skipped = 0, None, 0  # epochs trained; the last one's loss and untrainable samples

    def check_sample(self, x, label):
        """A float sample of the network's input size, every feature finite in float32, and its label."""
        if len(x) != self.model.dims[0]:
            raise TunerError("sample has %d features, the model takes %d" % (len(x), self.model.dims[0]))
        for v in x:
            if not finite(v):  # an int8 sample's too large scale ends here too
                raise TunerError("sample has a non-finite feature (%r; float32 ends at 3.4e38)" % v)
        check_label(label, self.n_classes)

    def evaluate(self, samples, labels):
        """Accuracy and confusion counts (rows: true class, columns: predicted) of predict(x).
        Evaluation is not fine-tuning: the MAC counters are left as they were."""
        n = self.n_classes
        counted = dict(self.macs)
        confusion = [[0] * n for _ in range(n)]
        correct = 0
        for x, label in zip(samples, labels):
            p = self.predict(x)
            confusion[label][p] += 1
            correct += p == label
        self.macs = counted
        return correct / max(1, len(labels)), confusion

    def epoch_order(self, count):
        """The sample order for an epoch, shuffled: all stored samples (count None), or the first
        `count` entries as the caller (the guard) arranged them. One array, allocated once."""
        n = self.n_samples
        if not n:
            raise TunerError("no fine-tune samples stored")
        order = self.sample_order()
        if count is None:
            for i in range(n):
                order[i] = i
            count = n
        self.rng.shuffle(order, count)
        return order, count

    def train_epoch(self, count=None, tick=None):
        """One epoch over the stored samples (or the first `count` of the order the guard arranged)
        in a shuffled order; returns the mean loss of the samples trained, infinite when most of
        them could not be (self.skipped: how many). tick(done, of), if given, is called after each
        mini-batch that did fresh work (every one on the float path; on the integer path those that
        ran the frozen layers, the first epoch's)."""
        drain(self.epoch_steps(count, tick))
        return self.loss

    def epoch_steps(self, count=None, tick=None):
        """train_epoch as a generator that yields before each mini-batch (learner.py cuts epochs
        into slices with it); self.loss is the epoch's loss once it ends."""
        order, count = self.epoch_order(count)
        self.skipped, total = 0, 0.0
        for start in range(0, count, self.batch):
            yield
            end = min(count, start + self.batch)
            total += self.train(order, start, end)
            if tick and self.fresh:
                tick(end, count)
        # heap once an epoch (not per step: gc.mem_alloc walks the heap); the largest transient
        # garbage is not seen here, only what an epoch leaves plus whatever has not been collected
        self.peak_alloc = max(self.peak_alloc, clock.mem_alloc())
        # most samples untrainable: the rate diverged (one bad sample must not spoil the run)
        self.loss = INF if 2 * self.skipped > count else total / (count - self.skipped)
        self.epochs_done += 1
