# The protocol core: bytes in, bytes out, no I/O but its own files on flash. The board's main.py
# and the host's emulator both drive it: feed() with what arrived, write what it returns, and
# call work() while busy (training runs one epoch per call, so the board stays responsive and
# the WebAssembly interpreter can collect garbage between calls). Every failure is an ERROR frame;
# nothing raises out of feed() or work().
import binascii
import gc
import json
import os
import struct
import sys
from array import array

from s2l import VERSION, adapterfile, clock, configcheck, storage
from s2l import frames as F
from s2l.arena import ON_BOARD, Arena, ArenaFull, aligned, boot_arena, free_heap, largest_free_block
from s2l.model import Model
from s2l.modelfile import ModelError
from s2l.tunerbase import TunerError, finite
if ON_BOARD:  # the board's job modules, imported before the arena is taken: never into what it leaves
    import s2l.inttuner  # noqa: F401
# last: compiled from source (a test's unix port), it fragments the heap least here (measured)
from s2l.learner import ADAPTER_FILE, MODEL_FILE, Learner, keep_model, read_model  # noqa: E402

FIELD_LOG = "field.json"  # what the field loop did (field.py), for LOG
FIELD_CONFIG = "field_config.json"  # a board that has one runs the field loop at boot (field.py)
STATUS_EVENT_BYTES = 256
KEPT_EVENTS = 16  # the last events (PROGRESS, DONE, FAILED) kept for STATUS: a lost one is asked for
# during a long epoch (the first one runs the frozen layers), a WORKING frame at least this far
# apart, so that the host hears the board is alive well within its 2 s heartbeat
WORKING_EVERY_US = 1000000
FREED = " (the previous tuner was freed to make room)"  # what a refused CONFIG says when it cost the old tuner


class ProtocolError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def _json(payload):
    try:
        value = json.loads(payload) if payload else {}
    except ValueError:
        raise ProtocolError(F.E_PAYLOAD, "payload is not JSON")
    if not isinstance(value, dict):
        raise ProtocolError(F.E_PAYLOAD, "payload must be a JSON object")
    return value


def flash_free(path):
    try:
        st = os.statvfs(path)
        return st[0] * st[4]  # block size x blocks free
    except (AttributeError, OSError):
        return None


def _error_of(e):
    """(error code, message) for an exception raised while handling a request or training."""
    if isinstance(e, (ProtocolError, configcheck.ConfigError)):
        return e.code, str(e)
    if isinstance(e, TunerError):
        return F.E_TUNER, str(e)
    if isinstance(e, ModelError):
        return F.E_MODEL, str(e)
    if isinstance(e, adapterfile.AdapterError):
        return F.E_STORAGE, str(e)
    if isinstance(e, ArenaFull):
        return F.E_MEMORY, str(e)
    if isinstance(e, MemoryError):
        return F.E_MEMORY, "out of memory"
    return F.E_INTERNAL, "%s: %s" % (type(e).__name__, e)


def _error_reply(e):
    try:
        code, message = _error_of(e)
        return F.ERROR, F.error_payload(code, message)
    except Exception:  # even the message failed (out of memory?): a reply that cannot fail
        return F.ERROR, F.error_payload(F.E_INTERNAL, "error")


def move_down(view, src, n):
    # view[0:n] = view[src:src + n], in pieces that never overlap (src > 0)
    for k in range(0, n, src):
        end = min(n, k + src)
        view[k:end] = view[src + k:src + end]


class Core:
    """storage_dir: the board's flash. A field loop (field.py) passes the learner it opened (s2l.learner.open):
    the core serves it, in its arena, rather than taking an arena of its own."""

    def __init__(self, storage_dir=".", arena_bytes=None, learner=None):
        self.dir = storage_dir
        self.decoder = F.Decoder()
        self.model = None
        self.learner = learner  # the model's tuner and guard (learner.py), from CONFIG
        self.config = None
        self.upload = None  # (buffer, expected CRC) during a model upload
        self.confusion = None  # counts of the test samples scored since the last TRAIN or CONFIG
        self.training = None  # the learner's adaptation TRAIN started
        self.rx_bytes = self.rx_us = 0  # bytes fed in, and the board time spent handling them
        self.events = []  # (number, type, JSON payload) of the last KEPT_EVENTS events
        self.working_every_us = WORKING_EVERY_US
        self.event_number = 0
        # (seq, type, payload, reply type, reply payload) of the last request: a retry gets the
        # reply again, and REPLY hands it out in parts (a long reply on a noisy link)
        self.last = None
        self.status_events = 0  # events the STATUS being handled carries
        self.handlers = {
            F.HELLO: self.hello, F.MODEL_BEGIN: self.model_begin, F.MODEL_CHUNK: self.model_chunk,
            F.MODEL_END: self.model_end, F.CONFIG: self.configure, F.SAMPLES: self.samples,
            F.TRAIN: self.train, F.EVAL: self.evaluate, F.STATS: self.stats, F.SAVE: self.save,
            F.LOAD: self.load, F.RESET: self.reset,
            F.STATUS: self.status, F.REPLY: self.reply, F.LOG: self.field_log,
        }
        if learner is not None:  # its model file and adapters were recovered as it opened
            self.arena, self.model, self.model_end = learner.arena, learner.model, learner.start_mark
            self.storage = {"model": storage.OK, "adapter": storage.OK if storage.exists(
                self._path(ADAPTER_FILE)) else storage.MISSING}
            return
        # one block for every job's buffers, taken once, after the imports (arena.py)
        self.arena = boot_arena() if arena_bytes is None else Arena(arena_bytes)
        self.model_end = 0  # the arena's bytes the loaded model holds; a job's start after them
        # a power cut may have interrupted a write: keep the valid copy of each file
        data, model_state = storage.recover(self._path(MODEL_FILE), Model, lambda path: read_model(self.arena, path))
        if data is not None:
            self._keep_model(data)
        _, adapter_state = storage.recover(self._path(ADAPTER_FILE), adapterfile.check)
        self.storage = {"model": model_state, "adapter": adapter_state}

    @property
    def tuner(self):
        return self.learner and self.learner.tuner

    @property
    def guard(self):
        """The tuner's epoch guard (guard.py), unless CONFIG's holdout is 0."""
        return self.learner and self.learner.guard

    @property
    def epochs_left(self):
        return self.learner.epochs_left if self.learner else 0

    @property
    def busy(self):
        """Training a TRAIN started (a field loop's adaptations are the loop's to run: field.py)."""
        return self.learner is not None and self.learner.busy and self.learner.run is self.training

    def _path(self, name):
        return self.dir + "/" + name

    def _keep_model(self, buf):
        self.model = keep_model(self.arena, buf)
        self.model_end = self.arena.mark()

    def _drop_model(self):
        self._drop_tuner()
        self.model = None
        self.model_end = 0
        self.arena.release(0)
        gc.collect()

    # -- bytes in, bytes out -----------------------------------------------------------------------
    def wanted(self):
        """Bytes the frame in progress still needs at least: a cap for a read, not a promise."""
        return self.decoder.wanted()

    def feed(self, data, n=None):
        """Reply bytes for data[:n] (all of data by default)."""
        t0 = clock.ticks_us()
        out = bytearray()
        for event in self.decoder.feed(data, n):
            if event[0] == "error":
                out += F.encode(F.ERROR, event[3], F.error_payload(event[1], event[2]))
                continue
            _, ftype, seq, payload = event
            if self.last is not None and self.last[:3] == (seq, ftype, payload):
                out += F.encode(self.last[3], seq, self.last[4])  # a retry: same answer, not done twice
                continue
            self.status_events = 0
            rtype, rpayload = self._handle(ftype, seq, payload)
            # STATUS and REPLY only read, and report the last request; a STATUS that carries events
            # is kept too, so that a lost event too long for a noisy link comes in parts (REPLY)
            if ftype != F.REPLY and (ftype != F.STATUS or self.status_events):
                self.last = (seq, ftype, payload, rtype, rpayload)
            out += F.encode(rtype, seq, rpayload)
        self.rx_bytes += len(data) if n is None else n
        self.rx_us += clock.ticks_diff(clock.ticks_us(), t0)
        return bytes(out)

    def _handle(self, ftype, seq, payload):
        """(reply type, reply payload) that fits a frame. Never raises: the board serves on."""
        try:
            handler = self.handlers.get(ftype)
            if handler is None:
                raise ProtocolError(F.E_UNKNOWN, "unknown frame type 0x%02x" % ftype)
            if payload and ftype in F.NO_PAYLOAD:
                raise ProtocolError(F.E_PAYLOAD, "request 0x%02x takes no payload, got %d bytes" % (ftype, len(payload)))
            if self.busy and ftype not in (F.HELLO, F.STATS, F.RESET, F.STATUS, F.REPLY, F.LOG):
                raise ProtocolError(F.E_BUSY, "training in progress (RESET stops it)")
            result = handler(payload)
            if ftype == F.REPLY:
                return F.PART, result
            body = json.dumps(result or {}).encode()
            if len(body) > F.MAX_PAYLOAD:
                raise ProtocolError(F.E_INTERNAL, "reply of %d bytes exceeds the frame limit" % len(body))
            return F.OK, body
        except Exception as e:
            return _error_reply(e)

    def _event(self, ftype, fields):
        """An event frame, numbered (its seq) and kept for STATUS."""
        self.event_number = (self.event_number + 1) & 0xFFFF
        payload = json.dumps(fields).encode()
        self.events.append((self.event_number, ftype, payload))
        if len(self.events) > KEPT_EVENTS:
            self.events.pop(0)
        return F.encode(ftype, self.event_number, payload)

    def _failed(self, code, message):
        self.learner and self.learner.stop()
        return self._event(F.FAILED, {"code": code, "error": message[:F.MAX_ERROR_MESSAGE],
                                      "epoch": self.tuner.epochs_done if self.tuner else 0})

    def _tick(self, done, of):
        # the tuner's tick while work() runs with an emit: a WORKING frame whenever working_every_us
        # have passed (epoch 0: the guard's first scoring, before epoch 1)
        now = clock.ticks_us()
        if clock.ticks_diff(now, self.beat[1]) >= self.working_every_us:
            self.beat[1] = now
            self.beat[0](F.encode(F.WORKING, 0, json.dumps({"epoch": self.beat[2], "done": done, "of": of}).encode()))

    def work(self, emit=None):
        """One epoch of pending training; its PROGRESS event (and DONE after the last), or b"".
        emit(bytes), if given, takes WORKING frames during the epoch (the one place the core sends
        before it returns: an epoch may outlast the host's patience). Never raises: a failure ends
        training with a FAILED event."""
        if not self.busy:
            return b""
        try:
            learner = self.learner
            learner.tick = self._tick if emit else None
            guard = self.guard if learner.guarded else None
            # epoch 0: the guard's first scoring, a call of its own (the board answers between)
            self.beat = [emit, clock.ticks_us(), 0 if guard and not guard.started else self.tuner.epochs_done + 1]
            fields = None
            while fields is None:
                fields = learner.step()
            if not fields:
                return b""
            loss_finite = finite(fields["loss"])
            if not loss_finite:  # JSON has no NaN: the host gets null
                fields["loss"] = None
            out = self._event(F.PROGRESS, fields)
            if not (loss_finite or guard):
                return out + self._failed(F.E_DIVERGED, "training diverged at epoch %d (the loss is not finite): "
                                                        "lower the learning rate" % fields["epoch"])
            if not self.busy:
                out += self._event(F.DONE, learner.result)
            return out
        except Exception as e:
            try:
                code, message = _error_of(e)
                return self._failed(code, "training stopped: %s" % message)
            except Exception:
                self.learner.stop()
                return b""

    # -- commands ----------------------------------------------------------------------------------
    def hello(self, payload):
        model = None
        if self.model is not None:
            model = {"dims": self.model.dims, "bits": self.model.bits}
        free = free_heap()
        return {"protocol": F.PROTOCOL_VERSION, "firmware": VERSION, "platform": sys.platform,
                "free_heap": free, "largest_free": largest_free_block(free) if free else None,
                "arena": {"size": self.arena.size, "model": self.model_end, "free": self.arena.free},
                "flash_free": flash_free(self.dir), "model": model, "max_payload": F.MAX_PAYLOAD,
                "storage": self.storage}

    def model_begin(self, payload):
        args = _json(payload)
        size, crc = args.get("size"), args.get("crc")
        if not isinstance(size, int) or not isinstance(crc, int) or not 0 < size <= 256 * 1024:
            raise ProtocolError(F.E_PAYLOAD, "MODEL_BEGIN needs an int size (1..262144) and crc")
        if size > self.arena.size:  # refused before anything is dropped
            raise ProtocolError(F.E_MEMORY, "the model's %d bytes do not fit this board's arena of %d bytes: this "
                                            "board cannot hold this model" % (size, self.arena.size))
        self._cancel_upload()
        # into the arena beside what is loaded; when that leaves no room, the tuner goes, then the
        # model (its file on flash stays until a new one is written): the reply says which
        freed = []
        if self.arena.free < size and self.tuner is not None:
            self._drop_tuner()
            freed.append("tuner")
        if self.arena.free < size:
            self._drop_model()
            freed.append("model")
        at = aligned(self.arena.mark())  # where take() puts it
        self.upload = (self.arena.take(size, "the model"), crc, at)
        return {"size": size, "freed": freed}

    def _cancel_upload(self):
        # an upload is the arena's top: anything else carved gives it up first
        if self.upload is not None:
            self.arena.release(self.upload[2])
            self.upload = None

    def model_chunk(self, payload):
        if self.upload is None:
            raise ProtocolError(F.E_STATE, "MODEL_CHUNK before MODEL_BEGIN")
        if len(payload) < 4:
            raise ProtocolError(F.E_PAYLOAD, "MODEL_CHUNK needs a u32 offset")
        offset = struct.unpack_from("<I", payload, 0)[0]
        buf = self.upload[0]
        if offset + len(payload) - 4 > len(buf):
            raise ProtocolError(F.E_PAYLOAD, "chunk at %d runs past the model's %d bytes" % (offset, len(buf)))
        buf[offset:offset + len(payload) - 4] = payload[4:]
        return {"offset": offset}

    def model_end(self, payload):
        if self.upload is None:
            raise ProtocolError(F.E_STATE, "MODEL_END before MODEL_BEGIN")
        buf, crc, at = self.upload
        self.upload = None
        try:
            if binascii.crc32(buf) & 0xFFFFFFFF != crc:
                raise ProtocolError(F.E_PAYLOAD, "model upload failed its overall CRC (chunks missing?)")
            Model(buf)  # validate before anything is replaced
            storage.write_atomic(self._path(MODEL_FILE), buf)
        except Exception:
            self.arena.release(at)  # what was loaded stays as it was
            raise
        self.storage["model"] = storage.OK
        self._drop_tuner()
        self.model = None
        if at:  # to the arena's start, where a model lives
            move_down(self.arena.view, at, len(buf))
        self._keep_model(self.arena.view[0:len(buf)])
        return {"dims": self.model.dims, "bits": self.model.bits}

    def configure(self, payload):
        if self.model is None:
            raise ProtocolError(F.E_STATE, "CONFIG before a model is loaded")
        args = _json(payload)
        configcheck.check(args)  # all of it, before the old tuner is dropped
        # "samples": how many fine-tune samples will follow, so that the board allocates for them
        # up front; with "fit": true, as many of them as it can hold (the reply's plan says how many)
        planned, fit = args.pop("samples", None), args.pop("fit", False)
        # the epoch guard's settings (guard.py); a holdout of 0 trains on every sample, unguarded
        holdout, patience = args.pop("holdout", None), args.pop("patience", None)
        # the new tuner (and its guard) is first built beside the old one, so that a refusal (a range
        # the integer path cannot hold, ...) leaves the old tuner and its samples serving; then it is
        # built again where a job starts, after the model, so that the arena stays in one piece (the
        # build is deterministic). With no room beside the old one, the old one goes first.
        self._cancel_upload()
        if self.tuner is not None:
            at = self.arena.mark()
            try:
                Learner(self.model, self.arena, self.dir, holdout, patience, **args)
            except ArenaFull:
                pass
            except TunerError as e:
                raise TunerError("%s (the previous tuner and its samples are kept)" % e)
            finally:
                self.arena.release(at)
        freed = self.tuner is not None
        self._drop_tuner()
        try:
            learner = Learner(self.model, self.arena, self.dir, holdout, patience, **args)
            tuner = learner.tuner
            reply = {"method": tuner.method, "cache_mode": tuner.cache_mode, "path": tuner.path,
                     "lr": tuner.lr, "rank": tuner.rank}  # CONFIG's, else the model file's
            if planned is not None:
                reply["plan"] = learner.plan(planned, flash_free(self.dir), fit is True)
        except ArenaFull as e:
            self._drop_tuner()
            raise ProtocolError(F.E_MEMORY, "no memory for the tuner: %s; this board cannot fine-tune this model "
                                            "(a smaller model, or more RAM)%s" % (e, FREED if freed else ""))
        except TunerError as e:
            self._drop_tuner()
            raise TunerError("%s%s" % (e, FREED if freed else ""))
        except Exception:
            self._drop_tuner()
            raise
        self.learner, self.config = learner, args
        reply["free_heap"] = free_heap()
        reply["arena_free"] = self.arena.free
        return reply

    def _drop_tuner(self):
        if self.learner is not None:
            self.learner.close()
        self.learner, self.config = None, None
        self._drop_samples()
        self.arena.release(self.model_end)
        gc.collect()

    def _drop_samples(self):
        self.confusion = None

    def samples(self, payload):
        if self.tuner is None:
            raise ProtocolError(F.E_STATE, "SAMPLES before MODEL and CONFIG")
        if len(payload) < F.SAMPLES_HEADER_SIZE:
            raise ProtocolError(F.E_PAYLOAD, "SAMPLES header is %d bytes" % F.SAMPLES_HEADER_SIZE)
        kind, encoding, count, n = struct.unpack_from(F.SAMPLES_HEADER, payload, 0)
        if kind not in (F.KIND_FINETUNE, F.KIND_TEST) or encoding not in (F.ENC_FLOAT32, F.ENC_INT8):
            raise ProtocolError(F.E_PAYLOAD, "unknown sample kind %d or encoding %d" % (kind, encoding))
        size = F.sample_size(encoding, n)
        if len(payload) != F.SAMPLES_HEADER_SIZE + count * size:
            raise ProtocolError(F.E_PAYLOAD, "%d samples of %d features need %d bytes, got %d" % (
                count, n, F.SAMPLES_HEADER_SIZE + count * size, len(payload)))
        if n != self.model.dims[0]:
            raise TunerError("samples have %d features, the model takes %d" % (n, self.model.dims[0]))
        learner, tuner, starts = self.learner, self.tuner, range(F.SAMPLES_HEADER_SIZE, len(payload), size)
        # int8 samples go to the tuner as they are on the wire (label, f32 scale, values)
        floats = encoding == F.ENC_FLOAT32
        for at in starts:  # all or nothing: check every sample before storing or scoring one
            if floats:
                tuner.check_sample(struct.unpack_from("<%df" % n, payload, at + 1), payload[at])
            else:
                tuner.check_int8(payload, at + 1, payload[at])
        self._cancel_upload()  # the samples' memory is the arena's top from here
        if kind == F.KIND_FINETUNE:
            stored = tuner.n_samples
            try:
                for at in starts:
                    if floats:
                        learner.add(struct.unpack_from("<%df" % n, payload, at + 1), payload[at])
                    else:
                        learner.add_int8(payload, at + 1, payload[at])
            except Exception:
                tuner.truncate(stored)  # all or nothing: the frame's earlier samples go too
                raise
            return {"kind": kind, "stored": tuner.n_samples}
        # test samples are scored as they arrive against the current adapters, and not kept; every
        # guess comes before a count changes
        nc = self.model.dims[-1]
        guesses = bytearray(count)
        macs = dict(tuner.macs)  # scoring is not fine-tuning: its MACs are not counted
        try:
            for k in range(count):
                at = starts[k]
                if floats:
                    guess = tuner.predict(struct.unpack_from("<%df" % n, payload, at + 1))
                else:
                    guess = tuner.predict_int8(payload, at + 1)
                if guess < 0:
                    raise TunerError("test sample %d of this frame is out of the integer path's range "
                                     "(its logits): none of the frame was scored" % k)
                guesses[k] = guess
        finally:
            tuner.macs = macs
        if self.confusion is None:
            self.confusion = array("H", bytes(2 * nc * nc))
        for k in range(count):
            self.confusion[payload[starts[k]] * nc + guesses[k]] += 1
        return {"kind": kind, "scored": sum(self.confusion)}

    def train(self, payload):
        if self.tuner is None or not self.tuner.n_samples:
            raise ProtocolError(F.E_STATE, "TRAIN with no fine-tune samples")
        args = _json(payload)
        configcheck.check_train(args)
        epochs = args.get("epochs", self.tuner.epochs)
        # unguarded when there is no guard, or too few samples to hold any out
        guarded = self.learner.start(epochs)
        self.training = self.learner.run
        self._drop_samples()  # test samples scored from here on are scored after training
        return {"epochs": epochs, "samples": self.tuner.n_samples, "event": self.event_number,
                "validation_samples": self.guard.n_val if guarded else 0}

    def evaluate(self, payload):
        """Accuracy over the test samples scored since the last TRAIN or CONFIG, and the confusion
        counts: all of them when they fit one frame, else the rows asked for ({"rows": [a, b]})."""
        if self.confusion is None:
            raise ProtocolError(F.E_STATE, "EVAL with no test samples scored")
        nc = self.model.dims[-1]
        counts = self.confusion
        total = sum(counts)
        correct = sum(counts[c * nc + c] for c in range(nc))
        reply = {"accuracy": correct / total, "samples": total, "classes": nc}
        rows = _json(payload).get("rows", [0, nc] if 8 * nc * nc < F.MAX_PAYLOAD - 128 else None)
        if rows is not None:
            if not (isinstance(rows, list) and len(rows) == 2 and 0 <= rows[0] <= rows[1] <= nc
                    and 8 * (rows[1] - rows[0]) * nc < F.MAX_PAYLOAD - 128):
                raise ProtocolError(F.E_PAYLOAD, "rows must be [first, end] within 0..%d, few enough for a frame" % nc)
            reply["rows"] = rows
            reply["confusion"] = [list(counts[r * nc:(r + 1) * nc]) for r in range(rows[0], rows[1])]
        return reply

    def stats(self, payload):
        if self.tuner is None:
            raise ProtocolError(F.E_STATE, "STATS before CONFIG")
        t, cache = self.tuner, self.tuner.cache
        return {"method": t.method, "us": t.us, "macs": t.macs, "epochs": t.epochs_done,
                "samples": t.n_samples, "test_scored": sum(self.confusion) if self.confusion else 0,
                "cache_hits": cache.hits if cache else 0, "cache_bytes": cache.bytes if cache else 0,
                "cache_spilled_bytes": cache.spilled_bytes if cache else 0,
                "peak_alloc": t.peak_alloc, "cache_mode": t.cache_mode, "path": t.path,
                "kernels": t.kernels, "kernel_calls": getattr(t, "kernel_calls", None),
                "rx_bytes": self.rx_bytes, "rx_us": self.rx_us, "free_heap": free_heap()}

    def save(self, payload):
        if self.tuner is None:
            raise ProtocolError(F.E_STATE, "SAVE before CONFIG")
        size = self.learner.save()
        self.storage["adapter"] = storage.OK
        return {"bytes": size}

    def load(self, payload):
        if self.tuner is None:
            raise ProtocolError(F.E_STATE, "LOAD before CONFIG")
        return {"bytes": self.learner.load()}

    def reset(self, payload):
        stopped = self.busy  # a cancelled TRAIN: no DONE follows
        self._cancel_upload()
        self._drop_tuner()
        return {"stopped": stopped}

    def status(self, payload):
        """Training state, the kept events after `after` if given (a lost PROGRESS or DONE is asked
        for here, not waited for), and the last request handled: seq, type, OK or not, reply size."""
        args = _json(payload)
        after, limit = args.get("after"), args.get("limit", KEPT_EVENTS)
        if after is not None and type(after) is not int or type(limit) is not int:
            raise ProtocolError(F.E_PAYLOAD, "STATUS takes {\"after\": event number, \"limit\": events} or nothing")
        events, size = [], 0
        for number, ftype, body in self.events if after is not None else ():
            if (number - after) & 0xFFFF < 0x8000 and number != after & 0xFFFF:  # newer, modulo 2^16
                size += len(body) + 16
                if len(events) >= limit or (events and size > STATUS_EVENT_BYTES):
                    break  # the rest at the next STATUS (a short reply survives a noisy link)
                events.append([number, ftype, json.loads(body)])
        self.status_events = len(events)
        last = None
        if self.last is not None:
            last = [self.last[0], self.last[1], self.last[3] == F.OK, len(self.last[4])]
        return {"busy": self.busy, "left": self.epochs_left, "event": self.event_number,
                "events": events, "last": last}

    def field_log(self, payload):
        """The field loop's log (field.py) as it was last written to flash."""
        try:
            return json.loads(storage.read(self._path(FIELD_LOG)))
        except (OSError, ValueError):
            raise ProtocolError(F.E_STORAGE, "no field log on flash (the field loop writes %s)" % FIELD_LOG)

    def reply(self, payload):
        """Bytes at..at+size of the last request's reply payload (that request's seq must match)."""
        args = _json(payload)
        seq, at, size = args.get("seq"), args.get("at", 0), args.get("size", F.MAX_PAYLOAD - F.PART_HEADER_SIZE)
        if type(seq) is not int or type(at) is not int or type(size) is not int or at < 0 or \
                not 0 < size <= F.MAX_PAYLOAD - F.PART_HEADER_SIZE:
            raise ProtocolError(F.E_PAYLOAD, "REPLY takes {\"seq\", \"at\", \"size\"} (ints)")
        if self.last is None or self.last[0] != seq:
            raise ProtocolError(F.E_STATE, "no stored reply for seq %d" % seq)
        return struct.pack(F.PART_HEADER, self.last[3], len(self.last[4])) + self.last[4][at:at + size]
