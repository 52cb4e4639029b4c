# The board in the field, with no host: it reads its sensor, predicts, keeps the labelled readings
# in a ring (on flash too: a power cut loses none but those held while an adaptation ran), adapts
# (guarded Skip2-LoRA, in slices between readings), saves what it learned, logs what it did to a
# small file, and serves the serial protocol beside all that, so that a technician with a laptop can
# read the log (LOG: `skip2lora status`), the stats, pull or push adapters.
# A board runs it at boot when it has a field_config.json (`skip2lora flash --field` writes one):
#     {"sensor": "adc_sensor", "label_pins": [14, 15, 16], "labels": 10, "budget_ms": 20}
# sensor: a module whose read() returns a reading (a sequence of floats in the sensor's units; None:
# no more, a replay's end; one the model cannot take, e.g. a NaN, is counted in the log and skipped,
# unlabelled; an OSError from read() is counted and read() asked again a second later) and,
# optionally, label(x, predicted) returning its class when one is known, else None; label_pins:
# buttons instead, one GPIO pin a class (pin_label.py), or label_uart: a class number a line on a
# UART, {"tx": 4, "rx": 5, "id": 1, "baudrate": 9600} (uart_label.py); the rest are run()'s and
# s2l.open()'s settings. Or a user's own main.py calls run() itself:
#     import field, sensor
#     field.run(sensor.read, label=sensor.label)
import json

import s2l
from s2l import clock, storage
from s2l import frames as F
from s2l.link import Server, collect_often
from s2l.protocol import FIELD_CONFIG, FIELD_LOG, Core
from s2l.tuning import TunerError

LABELS = 10  # new labels that start an adaptation
PERIOD_S = 3600  # or this long since the last one, with any new label
BUDGET_MS = 20  # an adaptation slice: this long plus one sample's work, then the loop reads on
PENDING = 4  # labelled readings held while an adaptation runs (more: it ends, keeping its best)
HISTORY = 4  # adaptations the log keeps in full (fewer when the log would pass a frame's 1 KB)
LOG_EVERY = 100  # readings between log writes besides those after each adaptation (flash wear)
RETRY_MS = 1000  # the pause after read() raised OSError, before it is asked again
REASON = 60  # characters the log keeps of a skipped reading's or a sensor error's reason
# what a config may set: where readings and labels come from, then run()'s settings and s2l.open()'s
SOURCES = ("sensor", "label_pins", "label_uart")
SETTINGS = ("model", "labels", "period_s", "budget_ms", "samples", "holdout", "patience", "epochs", "lr", "rank")


class Log:
    """What the loop did, in a file a host reads with LOG; the counts go on across boots."""

    def __init__(self, path, n_classes, restored):
        self.path = path
        self.data = read_log(path) or {
            "boots": 0, "samples": 0, "labels": 0, "adaptations": 0, "improved": 0, "slice_ms_max": 0,
            "predictions": [0] * n_classes, "unknown": 0, "last": []}
        self.data["boots"] += 1
        self.data["restored"] = restored  # labelled readings this boot found on flash
        self.data.pop("error", None)
        self.data.pop("ended", None)
        self.data.pop("heap", None)
        self.write()

    def adapted(self, result, kept, ms, free):
        d = self.data
        if free is not None:  # this boot's free heap after its adaptations (collected): a leak shows
            heap = d.setdefault("heap", {"first": free, "low": free})
            heap["last"] = free
            heap["low"] = min(heap["low"], free)
        d["adaptations"] += 1
        d["improved"] += bool(result.get("trained"))
        d["last"] = (d["last"] + [{"samples": kept, "epochs": result["epochs"],
                                   "val_before": _short(result.get("val_start")), "val_after": _short(result.get("val")),
                                   "trained": result.get("trained"), "ms": ms}])[-HISTORY:]

    def write(self):
        write_log(self.path, self.data)


def _short(score):
    return None if score is None else round(score, 4)


def write_log(path, data):
    """The log on flash, atomically, within one LOG reply's frame: past it, the oldest adaptations
    go first, then the reasons' texts (only a model of many classes with years of counts gets there)."""
    body = json.dumps(data, separators=(",", ":"))
    while len(body) > F.MAX_PAYLOAD and data.get("last"):
        data["last"].pop(0)
        body = json.dumps(data, separators=(",", ":"))
    for key in ("sensor_error", "bad_reason", "error"):
        if len(body) <= F.MAX_PAYLOAD:
            break
        data.pop(key, None)
        body = json.dumps(data, separators=(",", ":"))
    storage.write_atomic(path, body.encode())


def read_log(path):
    data, _ = storage.recover(path, json.loads)
    return json.loads(data) if data else None


def failed(message, path=FIELD_LOG):
    """The field loop could not run: the reason, in the log a host reads (LOG), counts kept."""
    log = read_log(path) or {}
    log["error"] = message[:F.MAX_ERROR_MESSAGE]
    write_log(path, log)


def main(path=FIELD_CONFIG):
    """The field loop as field_config.json at `path` sets it up, until read() returns None or it fails
    (the config, the sensor, the loop: the reason goes to the log, failed()); then the board serves
    the protocol alone."""
    try:
        with open(path) as f:
            config = json.loads(f.read())
        unknown = [key for key in config if key not in SOURCES + SETTINGS]
        if unknown:
            raise ValueError("%s: unknown setting %s (it takes %s)" % (
                path, ", ".join(unknown), ", ".join(SOURCES + SETTINGS)))
        sensor = __import__(config.pop("sensor", "sensor"))
        pins, uart = config.pop("label_pins", None), config.pop("label_uart", None)
        if pins and uart:
            raise ValueError("%s: label_pins or label_uart, not both" % path)
        if pins:
            from pin_label import PinLabels
            label = PinLabels(pins)
        elif uart:
            from uart_label import UartLabels
            label = UartLabels(uart)
        else:
            label = getattr(sensor, "label", None)
        run(sensor.read, label=label, **config)
    except Exception as e:  # the board keeps serving; the host reads why (skip2lora status)
        failed("%s: %s" % (type(e).__name__, e))


def _add(learner, pending, d):
    for x, y in pending:
        try:
            learner.add(x, y)
        except TunerError:  # a label outside the model's classes, a reading the integer path cannot hold
            d["refused"] = d.get("refused", 0) + 1


def _adapted(learner, log, t_adapt):
    """An adaptation is over: its adapters saved, and logged with the free heap after it."""
    learner.save()
    log.adapted(learner.result, learner.tuner.n_samples, clock.ticks_diff(clock.ticks_ms(), t_adapt), clock.mem_free())
    log.write()


def run(read, label=None, model="model.s2lm", labels=LABELS, period_s=PERIOD_S, budget_ms=BUDGET_MS,
        serve=True, **settings):
    """The field loop, until read() returns None (a real sensor never does). settings: s2l.open's
    (samples: the ring's size; holdout, patience, epochs, lr, ...)."""
    collect_often()
    learner = s2l.open(model, **settings)
    at = model.rfind("/")
    if getattr(label, "classes", 0) > learner.tuner.n_classes:
        raise ValueError("%d label pins for a model of %d classes" % (label.classes, learner.tuner.n_classes))
    log = Log((model[:at] if at > 0 else ".") + "/" + FIELD_LOG, learner.tuner.n_classes, learner.restored)
    core = Core(learner.dir, learner=learner)
    server = None
    if serve:
        server = Server(core)
    d = log.data
    pending, new, since, adapting, t_adapt = [], 0, 0, False, clock.ticks_ms()
    while True:
        if server is not None:
            server.serve(0)
        learner = core.learner  # a host's CONFIG or RESET replaces or drops it: learning waits
        try:
            x = read()
        except OSError as e:  # the sensor did not answer (a bus error, a loose wire): again after a pause
            d["sensor_errors"] = d.get("sensor_errors", 0) + 1
            d["sensor_error"] = str(e)[:REASON]
            if d["sensor_errors"] % LOG_EVERY == 1:  # the first of a run, then as readings are logged
                log.write()
            if server is not None:
                server.serve(RETRY_MS)  # the pause still answers a host
            else:
                clock.sleep_ms(RETRY_MS)
            continue
        if x is None:  # a replay's end (a real sensor never ends): what runs ends, kept
            d["ended"] = True
            if adapting and learner is not None and not core.busy:
                learner.finish()  # with the best adapters it reached
                _add(learner, pending, d)
                _adapted(learner, log, t_adapt)
            break
        d["samples"] += 1
        since += 1
        if learner is None or core.busy:  # a host's TRAIN runs on the link's turns
            adapting = False
            continue
        try:
            guess, _ = learner.predict(x)
        except TunerError as e:  # a glitch (a NaN, a short read): counted and skipped, the loop goes on
            d["bad"] = d.get("bad", 0) + 1
            d["bad_reason"] = str(e)[:REASON]
            continue
        if guess < 0:
            d["unknown"] += 1
        else:
            d["predictions"][guess] += 1
        y = label(x, guess) if label else None
        if y is not None:
            d["labels"] += 1
            new += 1
            pending.append((x, y))
        if pending and (not learner.busy or len(pending) > PENDING):
            _add(learner, pending, d)  # an adaptation in progress ends first (its best adapters kept)
            pending = []
        if not learner.busy and new and (new >= labels or clock.ticks_diff(clock.ticks_ms(), t_adapt) >= 1000 * period_s):
            learner.start()
            adapting, new, t_adapt = True, 0, clock.ticks_ms()
        if learner.busy:
            t0 = clock.ticks_us()
            learner.adapt(budget_ms=budget_ms)
            d["slice_ms_max"] = max(d["slice_ms_max"], clock.ticks_diff(clock.ticks_us(), t0) // 1000)
        if adapting and not learner.busy:  # over: whole, or ended by a new sample
            adapting = False
            _adapted(learner, log, t_adapt)
            since = 0
        if since >= LOG_EVERY:
            log.write()
            since = 0
    log.write()
    return learner
