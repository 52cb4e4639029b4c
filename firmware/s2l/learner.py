# The board's learner: a model, its tuner and epoch guard, the samples it keeps, and its saved
# adapters, behind the few calls a user's own main.py makes:
#     learner = s2l.open("model.s2lm")   # memory planned from the board's arena
#     learner.add(x, label)        # a labelled reading (sensor units); the oldest goes when full
#     learner.adapt(budget_ms=20)  # guarded Skip2-LoRA in slices; True once an adaptation is over
#     label, score = learner.predict(x)
#     learner.save()               # power-cut safe; open() restores it at the next boot
#     learner.forget()             # back to the model's own adapters, samples and files gone
# open()'s learner keeps its labelled samples on flash as they come (samplefile.py): the next
# boot starts with them too.
# The protocol core (protocol.py) holds one too: one way to build, train, save and load.
import struct

from s2l import adapterfile, clock, storage
from s2l.arena import aligned, boot_arena
from s2l.guard import Guard
from s2l.model import Model
from s2l.tunerbase import SPILL_PATH, TunerError, finite, softmax_top
from s2l.tuning import new_tuner

MODEL_FILE = "model.s2lm"
ADAPTER_FILE = "adapter.s2la"
SAMPLE_FILE = "samples.s2ls"


def read_model(arena, path):
    """The model file at path read straight into the arena's start (no copy of it on the heap)."""
    arena.release(0)
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(0)
        buf = arena.take(size, "the model file")
        f.readinto(buf)
    return buf


def keep_model(arena, buf):
    """buf, at the arena's start, becomes the model; a job's buffers follow it."""
    arena.release(aligned(len(buf)))
    return Model(buf)


class Learner:
    """Made for a model in `arena` (its buffers are carved after the model): the tuner (CONFIG's
    settings in `config`) and, unless holdout is 0, its epoch guard."""

    def __init__(self, model, arena, storage_dir=".", holdout=None, patience=None, **config):
        self.model, self.arena, self.dir = model, arena, storage_dir
        self.settings = dict(config, holdout=holdout, patience=patience)
        self.start_mark = arena.mark()  # where its buffers start: forget() builds them again there
        self.tuner = new_tuner(model, arena=arena, spill_path=self._path(SPILL_PATH), **config)
        # the guard before the plan: its copy of the adapters is not the plan's to give
        self.guard = Guard(self.tuner, holdout, patience) if holdout != 0 else None
        self.run = None  # the adaptation in progress (a generator: _steps)
        self.epochs_left = 0
        self.guarded = False
        self.tick = None  # tick(done, of) during long work (the core's WORKING frames)
        self.result = None  # what the last adaptation ended with (DONE's fields)
        self.samples = None  # open()'s learner: its samples on flash (a SampleFile)

    def _path(self, name):
        return self.dir + "/" + name

    def plan(self, n, flash_free=None, fit=False, ring=False):
        """Room for n samples now (tuner.plan); with `ring`, a sample past them overwrites the oldest."""
        if ring and self.tuner.path != "int":
            raise TunerError("a ring of samples needs the integer path")
        plan = self.tuner.plan(n, flash_free, fit)
        self.tuner.ring = ring
        return plan

    # -- samples -----------------------------------------------------------------------------------
    def add(self, x, label):
        """A labelled reading in the sensor's units (normalised by the model file). An adaptation in
        progress ends first, with the best adapters it reached (the guard's): a sample must not
        change under it."""
        self.finish()
        self.tuner.add_sample(x, label)
        if self.samples is not None:
            self.samples.append()

    def add_int8(self, src, at, label):
        """An int8 sample as SAMPLES frames carry it: a f32 scale, then the network's input."""
        self.finish()
        self.tuner.add_int8(src, at, label)

    def predict(self, x):
        """(class, score) for a raw reading: score is the softmax probability of the class; (-1, 0.0)
        for a reading the integer path cannot represent."""
        z = self.tuner.predict_logits(x)
        if z is None:
            return -1, 0.0
        best, total = softmax_top(z)
        return best, 1.0 / total

    # -- adapting ----------------------------------------------------------------------------------
    @property
    def busy(self):
        return self.epochs_left > 0

    def start(self, epochs=None):
        """Begin an adaptation of `epochs` (the tuner's by default) over the samples kept now, from
        the adapters as they are; whether it is guarded (not with a holdout of 0, or too few samples)."""
        if not self.tuner.n_samples:
            raise TunerError("no fine-tune samples stored")
        self.guarded = self.guard is not None and self.guard.arrange()
        self.epochs_left = epochs or self.tuner.epochs
        self.result = None
        self.run = self._steps()
        return self.guarded

    def step(self):
        """Advance the adaptation by one sample; at the end of the guard's first scoring {} and at
        the end of each epoch its PROGRESS fields, else None."""
        fields = next(self.run)
        if fields is not None and not self.busy:
            self.run = None
        return fields

    def adapt(self, epochs=None, budget_ms=None):
        """Guarded Skip2-LoRA over the kept samples, started if none is in progress. With
        budget_ms, it returns once that much time has passed (after the sample then in progress:
        a slice lasts budget_ms plus one sample's work); call again to go on. True once the
        adaptation is over (self.result: what it kept), False while it is not."""
        if not self.busy:
            self.start(epochs)
        t0 = clock.ticks_us()
        while self.busy:
            self.step()
            if budget_ms is not None and clock.ticks_diff(clock.ticks_us(), t0) >= 1000 * budget_ms:
                return not self.busy
        return True

    def finish(self):
        """End an adaptation in progress now, with the best adapters it reached (guarded)."""
        if self.busy:
            self.epochs_left = 0
            self.run = None
            self.result = self._done()

    def stop(self):
        """Drop an adaptation in progress as it is (RESET, or a failure)."""
        self.epochs_left = 0
        self.run = None

    def _done(self):
        loss = self.tuner.loss
        done = {"epochs": self.tuner.epochs_done, "loss": loss if loss is not None and finite(loss) else None}
        if self.guarded:
            done.update(self.guard.finish())
        return done

    def _steps(self):
        # the adaptation as one generator: None before each sample, {} once the guard has scored
        # the starting adapters, an epoch's PROGRESS fields after it
        t, guard = self.tuner, self.guard if self.guarded else None
        if guard is not None:
            yield from guard.start_steps(self._tick)
            yield {}
        while self.busy:
            t0 = clock.ticks_us()
            if guard is None:
                yield from t.epoch_steps(None, self._tick)
                fields = {}
            else:  # validation, best adapters, restores: guard.py
                fields = yield from guard.epoch_steps(self.epochs_left == 1, self._tick)
                if guard.stopped:
                    self.epochs_left = 1
            self.epochs_left -= 1
            fields["loss"], fields["epoch"], fields["left"] = t.loss, t.epochs_done, self.epochs_left
            fields["ms"] = clock.ticks_diff(clock.ticks_us(), t0) // 1000
            if t.skipped:  # samples out of the integer path's range, not trained
                fields["skipped"] = t.skipped
            if not finite(t.loss) and guard is None:  # unguarded, training stops
                self.epochs_left = 0
            if not self.busy:
                self.result = self._done()
            yield fields

    def _tick(self, done, of):
        if self.tick:
            self.tick(done, of)

    # -- adapters on flash ---------------------------------------------------------------------------
    def model_crc(self):
        """The model file's trailer, the CRC32 of all before it: what ties a saved adapter to its model
        (the CRC32 of a whole file, trailer included, is one constant for every valid file)."""
        return struct.unpack_from("<I", self.model.buf, len(self.model.buf) - 4)[0]

    def save(self):
        """The adapters to flash (power-cut safe: storage.write_atomic); the file's bytes."""
        data = adapterfile.encode(adapterfile.parameters(self.tuner), self.tuner.path, self.model_crc())
        storage.write_atomic(self._path(ADAPTER_FILE), data)
        return len(data)

    def load(self):
        """The saved adapters into the tuner (AdapterError, nothing changed, when there are none for
        this model and path); the file's bytes."""
        try:
            data = storage.read(self._path(ADAPTER_FILE))
        except OSError:
            raise adapterfile.AdapterError("no saved adapter on flash")
        adapterfile.restore(self.tuner, data, self.model_crc())
        return len(data)

    def forget(self):
        """Back to the model's own adapters, no samples, no saved file. The tuner is built again where
        it was (the build is deterministic), with the same plan."""
        self.stop()
        n, ring, samples = self.tuner.n_planned, self.tuner.ring, self.samples
        self.close()
        storage.remove(self._path(ADAPTER_FILE))
        storage.remove(self._path(SAMPLE_FILE))
        self.arena.release(self.start_mark)
        self.__init__(self.model, self.arena, self.dir, **self.settings)
        if n is not None:
            self.plan(n, fit=True, ring=ring)
        if samples is not None:
            self._keep_samples()

    def _keep_samples(self):
        # imported here: only a field learner (open()) keeps its samples on flash
        from s2l.samplefile import SampleFile
        self.samples = SampleFile(self._path(SAMPLE_FILE), self.tuner, self.model_crc())
        return self.samples.restore()

    def close(self):
        self.tuner.cache and self.tuner.cache.close()


def open_learner(model_path=MODEL_FILE, samples=None, arena=None, holdout=None, patience=None, **config):
    """A Learner for the model file at model_path (the valid copy a power cut left: storage.recover)
    with its saved adapters restored, and a ring of `samples` samples (default: as many as the
    arena's RAM holds) planned from `arena` (default: the board's, as the serial loop takes it), and
    the samples it kept on flash (learner.restored: how many records were read)."""
    if arena is None:
        arena = boot_arena()
    at = model_path.rfind("/")
    storage_dir = model_path[:at] if at > 0 else "."
    buf, _ = storage.recover(model_path, Model, lambda path: read_model(arena, path))
    if buf is None:
        raise OSError("no valid model file at %s" % model_path)
    config.setdefault("path", "int")
    learner = Learner(keep_model(arena, buf), arena, storage_dir, holdout, patience, **config)
    learner.plan(samples or 65535, fit=True, ring=True)
    try:
        learner.load()
    except adapterfile.AdapterError:  # none saved, or for another model: the model's own adapters
        pass
    learner.restored = learner._keep_samples()
    return learner
