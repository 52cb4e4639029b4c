# Fine-tuning a board can be left alone with: a slice of the fine-tune samples is held out for
# validation and scored after every epoch; the best adapters seen are kept (a copy of a few KB);
# training stops when validation stops improving; a loss that jumps (or is not finite) brings the
# best adapters back at half the learning rate; and training never ends worse on validation than
# where it started: if no epoch beat the starting adapters' score, they are what the board keeps.
# One Guard drives either tuner (float or integer path) through the same few calls:
# epoch_steps(count, tick), predict_stored(index), stored_logits(index), set_lr(lr), and the arrays
# adapterfile.parameters() names.
import math
from array import array

from s2l import clock
from s2l.adapterfile import parameters
from s2l.tunerbase import drain, finite, softmax_top

HOLDOUT = 0.2  # the default validation share of each class's fine-tune samples
PATIENCE = 8  # epochs without a better validation score before training stops (0: never early)
MIN_VAL_PER_CLASS = 2  # "a few" per class, when the class has four times that many samples
SPIKE = 1.5  # a loss above SPIKE x the lowest so far (+ SPIKE_FLOOR) is a spike
SPIKE_FLOOR = 0.05  # near-zero losses move by more than 1.5x without anything going wrong
MAX_RESTORES = 4  # the learning rate may halve this often (to 1/16) before training gives up


def split(labels, n, n_classes, holdout, order):
    """Arrange `order` (one entry per sample) as the indices of the training samples among the
    first n, then the validation samples'; returns how many are validation: per class,
    round(holdout x its count) but at least min(MIN_VAL_PER_CLASS, a quarter of its count), spread
    evenly over its samples in arrival order. No list of indices: a board's memory is planned to
    the last rows."""
    counts = [0] * n_classes
    for i in range(n):
        counts[labels[i]] += 1
    want = [max(int(holdout * c + 0.5), min(MIN_VAL_PER_CLASS, c // 4)) if holdout > 0 else 0 for c in counts]
    n_val = sum(want)
    seen = [0] * n_classes
    t, v = 0, n - n_val
    for i in range(n):
        c = labels[i]
        j, k, w = seen[c], counts[c], want[c]
        if (j + 1) * w // k > j * w // k:  # the j-th of k samples takes one of w places
            order[v] = i
            v += 1
        else:
            order[t] = i
            t += 1
        seen[c] = j + 1
    return n_val


class Guard:
    """Made with the tuner, before its samples' memory is planned (its copy of the adapters must
    not take the heap a plan counted on); arrange() at each TRAIN, then epoch() per epoch."""

    def __init__(self, tuner, holdout=None, patience=None):
        self.tuner = tuner
        self.holdout = HOLDOUT if holdout is None else holdout
        self.patience = PATIENCE if patience is None else patience
        # (kept copy, live array): slices of one copy into the other; the integer path's adapters are
        # one region of its arena, and so is their copy
        if tuner.path == "int":
            self.pairs = [(tuner.arena.take(len(tuner.w), "the guard's copy of the adapters"), tuner.w)]
        else:
            self.pairs = [(memoryview(array("f", a)), memoryview(a)) for a in parameters(tuner)]
        self.n_val = self.n_train = 0

    def arrange(self):
        """Split the stored samples (the epoch order array holds the training samples first and the
        validation samples after them: train_epoch(n_train) shuffles and trains only the first
        part) and start over from the adapters as they are. False when there is nothing to hold
        out (a holdout of 0, or classes too small): then train unguarded."""
        t = self.tuner
        self.n_val = split(t.labels, t.n_samples, t.n_classes, self.holdout, t.sample_order())
        self.n_train = t.n_samples - self.n_val
        self.lr = t.lr
        self._keep()
        self.start_epoch = t.epochs_done
        self.best_epoch = self.start_epoch  # the epoch whose adapters are kept (the start: none trained)
        self.val_start = self.val_best = None
        self.best_loss = None  # the training loss of the kept epoch (None for the start)
        # the lowest epoch loss so far, from that of guessing uniformly: a first epoch far above it
        # has diverged already
        self.lowest = math.log(t.n_classes)
        self.since_gain = 0
        self.restores = 0
        self.stopped = None  # why training ended early: "patience" or "diverged"
        self.us_train = self.us_guard = 0  # time in training epochs, and in validating and copying
        return self.active

    @property
    def active(self):
        return self.n_val > 0 and self.n_train > 0

    def validate_steps(self):
        """Accuracy of the current adapters on the held-out samples, as a generator that yields
        before each sample (learner.py slices with it)."""
        t, order = self.tuner, self.tuner.order
        correct = 0
        for k in range(self.n_train, self.n_train + self.n_val):
            yield
            index = order[k]
            correct += t.predict_stored(index) == t.labels[index]
        return correct / self.n_val

    def _keep(self):
        for saved, live in self.pairs:
            saved[:] = live

    def _restore(self):
        for saved, live in self.pairs:
            live[:] = saved

    @property
    def started(self):
        return self.val_start is not None

    def start_steps(self, tick=None):
        """Score the starting adapters: the floor training must reach (their first scoring runs the
        validation samples' frozen layers into the skip-cache, long work: tick(done, of)), as a
        generator (learner.py)."""
        # It scores the held-out samples' loss too: a spike is measured from the larger of it and
        # guessing's, since a model far from the data it meets (strong drift) starts above
        # guessing, and its first epochs must not count as diverging
        t0 = clock.ticks_us()
        t, order = self.tuner, self.tuner.order
        correct, loss = 0, 0.0
        for k in range(self.n_train, self.n_train + self.n_val):
            yield
            index = order[k]
            z = t.stored_logits(index)
            if z is not None:  # out of the integer path's range: wrong, and no loss to count
                best, total = softmax_top(z)
                correct += best == t.labels[index]
                loss += z[best] + math.log(total) - z[t.labels[index]]
            if tick:
                tick(k - self.n_train + 1, self.n_val)
        self.val_start = self.val_best = correct / self.n_val
        self.lowest = max(self.lowest, loss / self.n_val)
        self.us_guard += clock.ticks_diff(clock.ticks_us(), t0)

    def epoch(self, last=False, tick=None):
        """One guarded epoch (`last`: the last one asked for, so not a stop worth reporting); the
        fields its PROGRESS event adds: val, lr, restored, best. Its time is split into training
        and the guard's own work, so that the guard's cost is a ratio measured in one run. tick:
        the tuner's (WORKING frames)."""
        return drain(self.epoch_steps(last, tick))

    def epoch_steps(self, last=False, tick=None):
        # epoch as a generator that yields before each sample trained or validated (learner.py);
        # sliced, the times count the pauses between slices too
        if not self.started:
            yield from self.start_steps()
        t0 = clock.ticks_us()
        yield from self.tuner.epoch_steps(self.n_train, tick)
        t1 = clock.ticks_us()
        self.us_train += clock.ticks_diff(t1, t0)
        fields = yield from self._judge(self.tuner.loss, last)
        self.us_guard += clock.ticks_diff(clock.ticks_us(), t1)
        return fields

    def _judge(self, loss, last):
        t = self.tuner
        lr = self.lr
        epoch = t.epochs_done
        spike = not finite(loss) or loss > SPIKE * self.lowest + SPIKE_FLOOR
        if spike:  # back to the best adapters, at half the rate
            self._restore()
            self.restores += 1
            self.lr = self.lr / 2
            t.set_lr(self.lr)
            self.since_gain += 1
            if self.restores > MAX_RESTORES and not last:
                self.stopped = "diverged"
            return {"val": self.val_best, "lr": lr, "restored": True, "best": self.best_epoch}
        self.lowest = min(self.lowest, loss)
        val = yield from self.validate_steps()
        # only a better score replaces the starting adapters ("nothing helped" keeps them); between
        # trained epochs, a tie goes to the one that fits the training samples better
        if val > self.val_best or (val == self.val_best and self.best_loss is not None and loss < self.best_loss):
            self.since_gain = 0 if val > self.val_best else self.since_gain + 1
            self.val_best, self.best_loss, self.best_epoch = val, loss, epoch
            self._keep()
        else:
            self.since_gain += 1
        if self.patience and self.since_gain >= self.patience and not last:
            self.stopped = "patience"
        return {"val": val, "lr": lr, "restored": False, "best": self.best_epoch}

    def finish(self):
        """Put the kept adapters back; what the DONE event says about them."""
        self._restore()  # a later TRAIN goes on from them, at the rate reached here
        return {"kept": self.best_epoch, "trained": self.best_epoch > self.start_epoch,
                "val_start": self.val_start, "val": self.val_best, "val_samples": self.n_val,
                "restores": self.restores, "stopped": self.stopped,
                "train_ms": self.us_train // 1000, "guard_ms": self.us_guard // 1000}
