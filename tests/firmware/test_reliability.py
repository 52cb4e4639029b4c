"""The protocol core under bad input, lost frames and power cuts (CPython; the MicroPython runs of the
same paths are in test_protocol.py and the fuzz corpus): every rejected request answers one ERROR
with a specific code and changes nothing; events can be fetched again; files survive a cut."""
import binascii
import json
import math
import struct

import numpy as np
import pytest

from s2l import adapterfile, configcheck, storage
from s2l import frames as F
from s2l.protocol import Core
from skip2lora.train.modelfile import quantize, write_model

from .test_protocol import Session, samples_payload
from .test_tuner import BITS, CONFIG, DIMS, fixed_problem


@pytest.fixture(scope="module")
def problem():
    return fixed_problem()


class Board:
    """A Core fed one request at a time; replies decoded."""

    def __init__(self, path):
        self.core, self.seq, self.decoder = Core(str(path)), 0, F.Decoder()

    def frames(self, data):
        return [e for e in self.decoder.feed(data) if e[0] == "frame"]

    def send(self, ftype, payload=b""):
        self.seq += 1
        replies = self.frames(self.core.feed(F.encode(ftype, self.seq, payload)))
        assert len(replies) == 1 and replies[0][2] == self.seq, replies
        _, rtype, _, body = replies[0]
        if rtype == F.ERROR:
            return "ERROR", struct.unpack_from("<H", body)[0], body[2:].decode()
        return rtype, json.loads(body) if rtype == F.OK else body

    def json(self, ftype, **fields):
        return self.send(ftype, json.dumps(fields).encode())

    def train(self):
        events = []
        while self.core.busy:
            events += [(e[1], e[2], json.loads(e[3])) for e in self.frames(self.core.work())]
        return events


def ready_board(folder, problem, **config):
    model, _, (X, y), (Xt, yt) = problem
    b = Board(folder)
    b.json(F.MODEL_BEGIN, size=len(model), crc=binascii.crc32(model))
    b.send(F.MODEL_CHUNK, struct.pack("<I", 0) + model)
    assert b.send(F.MODEL_END)[0] == F.OK
    assert b.json(F.CONFIG, **dict(dict(CONFIG, method="skip2-lora"), **config))[0] == F.OK
    assert b.send(F.SAMPLES, samples_payload(X, y, F.KIND_FINETUNE))[0] == F.OK
    for at in (0, 15):
        assert b.send(F.SAMPLES, samples_payload(Xt[at:at + 15], yt[at:at + 15], F.KIND_TEST))[0] == F.OK
    return b


def snapshot(core):
    t = core.tuner
    return (core.model and core.model.dims, id(t), core.config, t and t.n_samples, core.confusion and list(core.confusion),
            t and [bytes(a) for a in adapterfile.parameters(t)], t and (t.epochs_done, t.loss), core.epochs_left)


def test_an_error_message_of_any_length_fits_its_frame_and_the_board_serves_on(runtime):
    s = Session()
    s.json(F.CONFIG, method="m" * 1000)  # no model yet: E_STATE, a short message
    s.send(F.SAMPLES, b"\x00" * 1000)
    s.raw(F.encode(0x55, 7, b"x" * F.MAX_PAYLOAD))
    s.send(F.HELLO)
    replies = s.run(runtime)
    assert replies[-1][0] == F.OK and replies[-1][2]["protocol"] == F.PROTOCOL_VERSION
    payload = F.error_payload(F.E_TUNER, "x" * 5000)
    assert len(payload) == 2 + F.MAX_ERROR_MESSAGE and payload.endswith(b"...")


def test_a_long_config_field_is_an_error_not_a_dead_board(tmp_path, problem):
    b = ready_board(tmp_path, problem)
    before = snapshot(b.core)
    assert b.json(F.CONFIG, method="m" * 1000)[:2] == ("ERROR", F.E_TUNER)
    assert b.send(F.HELLO)[0] == F.OK and snapshot(b.core) == before


@pytest.mark.parametrize("fields, code, words", [
    ({"rank": 100000}, F.E_TUNER, "rank must be in 1..64"),
    ({"rank": 0}, F.E_TUNER, "rank must be in"),
    ({"rank": True}, F.E_PAYLOAD, "rank must be an integer"),
    ({"rank": "4"}, F.E_PAYLOAD, "rank must be an integer"),
    ({"batch": 1.5}, F.E_PAYLOAD, "batch must be an integer"),
    ({"epochs": 0}, F.E_TUNER, "epochs must be in 1..10000"),
    ({"epochs": 10 ** 9}, F.E_TUNER, "epochs must be in"),
    ({"lr": "x"}, F.E_PAYLOAD, "lr must be a number"),
    ({"lr": False}, F.E_PAYLOAD, "lr must be a number"),
    ({"lr": 1e30}, F.E_TUNER, "lr must be in"),
    ({"lr": 0}, F.E_TUNER, "lr must be in"),
    ({"seed": -1}, F.E_TUNER, "seed must be in"),
    ({"method": "ft-everything"}, F.E_TUNER, "unknown method"),
    ({"method": 3}, F.E_PAYLOAD, "method must be a string"),
    ({"cache_mode": "tiny"}, F.E_TUNER, "unknown cache_mode"),
    ({"path": "int", "method": "ft-all"}, F.E_TUNER, "integer path runs skip2-lora only"),
    ({"path": "int", "batch": 4}, F.E_TUNER, "batch 1"),
    ({"colour": "red"}, F.E_PAYLOAD, "unknown field 'colour'"),
])
def test_a_rejected_config_changes_nothing(tmp_path, problem, fields, code, words):
    b = ready_board(tmp_path, problem)
    b.send(F.TRAIN)
    b.train()
    before = snapshot(b.core)
    reply = b.send(F.CONFIG, json.dumps(dict({"method": "skip2-lora"}, **fields)).encode())
    assert reply[:2] == ("ERROR", code) and words in reply[2], reply
    assert snapshot(b.core) == before  # trained adapters, samples, epochs kept
    _, _, _, (Xt, yt) = problem
    for at in (0, 15):  # scored as they arrive: after training
        assert b.send(F.SAMPLES, samples_payload(Xt[at:at + 15], yt[at:at + 15], F.KIND_TEST))[0] == F.OK
    assert b.send(F.EVAL)[0] == F.OK


def test_requests_that_take_no_payload_refuse_one_and_train_checks_its_fields(tmp_path, problem):
    b = ready_board(tmp_path, problem)
    for ftype in F.NO_PAYLOAD:
        assert b.send(ftype, b"{}")[:2] == ("ERROR", F.E_PAYLOAD)
    assert b.json(F.TRAIN, epochs=True)[:2] == ("ERROR", F.E_PAYLOAD)
    assert b.json(F.TRAIN, epochs=0)[:2] == ("ERROR", F.E_TUNER)
    assert b.json(F.TRAIN, epoch=3)[:2] == ("ERROR", F.E_PAYLOAD)
    assert not b.core.busy


def test_int8_samples_whose_scale_overflows_float32_are_rejected(tmp_path, problem):
    b = ready_board(tmp_path, problem)
    stored = b.core.tuner.n_samples
    n = problem[2][0].shape[1]
    payload = struct.pack(F.SAMPLES_HEADER, F.KIND_FINETUNE, F.ENC_INT8, 1, n) + struct.pack("<Bf", 0, 3e38) + \
        bytes([127] * n)
    reply = b.send(F.SAMPLES, payload)
    assert reply[:2] == ("ERROR", F.E_TUNER) and "non-finite" in reply[2]
    assert b.core.tuner.n_samples == stored


def test_events_are_kept_and_a_lost_one_is_fetched_by_status(tmp_path, problem):
    b = ready_board(tmp_path, problem)
    started = b.send(F.TRAIN)[1]
    events = b.train()  # "lost": the host saw none of them
    assert [t for t, _, _ in events] == [F.PROGRESS] * 3 + [F.DONE]
    status = b.json(F.STATUS, after=started["event"])[1]
    assert status["busy"] is False and status["event"] == events[-1][1]
    fetched = status["events"]  # as many as a short reply holds; the rest at the next STATUS
    assert 1 <= len(fetched) < len(events)
    statuses = 1
    while len(fetched) < len(events):
        more = b.json(F.STATUS, after=fetched[-1][0])[1]["events"]
        assert more
        fetched += more
        statuses += 1
    assert fetched == [[n, t, f] for t, n, f in events]
    assert b.json(F.STATUS)[1]["events"] == []  # no "after": the state only, a short reply
    # the last request (TRAIN; STATUS does not count) and its reply, in parts
    assert status["last"][:3] == [b.seq - statuses - 1, F.TRAIN, True]
    b.send(F.STATS)
    whole = b.core.last[4]
    parts = b""
    while len(parts) < len(whole):
        rtype, part = b.json(F.REPLY, seq=b.core.last[0], at=len(parts), size=40)
        assert rtype == F.PART and struct.unpack_from(F.PART_HEADER, part) == (F.OK, len(whole))
        parts += part[F.PART_HEADER_SIZE:]
    assert parts == whole
    # a STATUS that carries events is kept as the last request (a plain one is not): on a noisy
    # link a long one comes in parts too
    one = b.json(F.STATUS, after=started["event"], limit=1)[1]
    asked = b.seq
    assert len(one["events"]) == 1 and b.json(F.STATUS)[1]["last"][:3] == [asked, F.STATUS, True]
    assert b.json(F.STATUS)[1]["last"][0] == asked
    rtype, part = b.json(F.REPLY, seq=asked, at=0, size=1000)
    assert json.loads(part[F.PART_HEADER_SIZE:]) == one
    assert b.json(F.REPLY, seq=12345, at=0, size=40)[:2] == ("ERROR", F.E_STATE)


def test_reset_cancels_training(tmp_path, problem):
    b = ready_board(tmp_path, problem, epochs=50)
    b.send(F.TRAIN)
    b.frames(b.core.work())
    assert b.core.busy and b.send(F.CONFIG, b"{}")[:2] == ("ERROR", F.E_BUSY)
    assert b.send(F.RESET) == (F.OK, {"stopped": True})
    assert not b.core.busy and b.core.work() == b""
    assert b.send(F.HELLO)[0] == F.OK


def test_a_loss_that_is_not_finite_reaches_the_host_as_null_and_stops_training(tmp_path, problem):
    b = ready_board(tmp_path, problem, holdout=0)  # unguarded (the guard restores instead: test_guard.py)
    tuner = b.core.tuner

    def diverged(count=None, tick=None):  # an epoch whose loss is not finite (the core trains a sample at a time)
        yield
        tuner.loss = float("nan")
    tuner.epoch_steps = diverged
    b.send(F.TRAIN)
    events = b.train()  # json.loads above: valid JSON
    assert [t for t, _, _ in events] == [F.PROGRESS, F.FAILED]
    assert events[0][2]["loss"] is None
    assert events[1][2]["code"] == F.E_DIVERGED and "lower the learning rate" in events[1][2]["error"]
    assert not b.core.busy


def test_training_that_raises_ends_in_a_failed_event_and_the_board_serves_on(tmp_path, problem):
    b = ready_board(tmp_path, problem)

    def broken(count=None, tick=None):
        yield
        raise MemoryError
    b.core.tuner.epoch_steps = broken
    b.send(F.TRAIN)
    events = b.train()
    assert [(t, f["code"]) for t, _, f in events] == [(F.FAILED, F.E_MEMORY)]
    assert b.send(F.HELLO)[0] == F.OK


def test_load_refuses_an_adapter_from_the_other_path_and_never_half_restores(tmp_path, problem):
    b = ready_board(tmp_path, problem, path="int", batch=1)
    b.send(F.TRAIN)
    b.train()
    assert b.send(F.SAVE)[0] == F.OK
    b.json(F.CONFIG, method="skip2-lora", path="float", **dict(CONFIG, batch=1))
    before = snapshot(b.core)
    reply = b.send(F.LOAD)
    assert reply[:2] == ("ERROR", F.E_STORAGE) and "from the int path" in reply[2]
    assert snapshot(b.core) == before
    # a crafted file with a valid CRC: the right shapes, but a NaN in the last array
    arrays = [list(a) for a in adapterfile.parameters(b.core.tuner)]
    arrays[-1][-1] = float("nan")
    crc = binascii.crc32(problem[0][:-4])
    (tmp_path / "adapter.s2la").write_bytes(adapterfile.encode(arrays, "float", crc))
    reply = b.send(F.LOAD)
    assert reply[:2] == ("ERROR", F.E_STORAGE) and "non-finite" in reply[2]
    assert snapshot(b.core) == before
    good = adapterfile.encode([[0.5] * len(a) for a in arrays], "float", crc)
    for broken in (good[:-8] + good[-4:], good[:5] + b"\x09" + good[6:], b"S2LA\x02" + good[5:]):
        (tmp_path / "adapter.s2la").write_bytes(broken)
        assert b.send(F.LOAD)[:2] == ("ERROR", F.E_STORAGE)
        assert snapshot(b.core) == before
    (tmp_path / "adapter.s2la").write_bytes(good)
    assert b.send(F.LOAD)[0] == F.OK
    assert all(v == 0.5 for a in adapterfile.parameters(b.core.tuner) for v in a)


def upload(board, model):
    board.json(F.MODEL_BEGIN, size=len(model), crc=binascii.crc32(model))
    board.send(F.MODEL_CHUNK, struct.pack("<I", 0) + model)
    assert board.send(F.MODEL_END)[0] == F.OK


@pytest.mark.parametrize("path", ["float", "int"])
def test_load_refuses_adapters_trained_on_another_model_of_the_same_shapes(tmp_path, problem, path):
    model, _, (X, y), _ = problem
    rng = np.random.default_rng(11)  # the same dims and bits, other weights
    other = write_model([quantize(rng.normal(0, 0.6, (o, i)), rng.normal(0, 0.1, o), b)
                         for i, o, b in zip(DIMS[:-1], DIMS[1:], BITS)])
    b = ready_board(tmp_path, problem, path=path, batch=1)
    b.send(F.TRAIN)
    b.train()
    assert b.send(F.SAVE)[0] == F.OK
    upload(b, other)
    config = dict(CONFIG, method="skip2-lora", path=path, batch=1)
    assert b.json(F.CONFIG, **config)[0] == F.OK
    before = snapshot(b.core)
    reply = b.send(F.LOAD)
    assert reply[:2] == ("ERROR", F.E_STORAGE) and "trained on another model" in reply[2], reply
    assert "%08x" % binascii.crc32(model[:-4]) in reply[2] and "%08x" % binascii.crc32(other[:-4]) in reply[2]
    assert snapshot(b.core) == before
    upload(b, model)  # its own model again: taken
    assert b.json(F.CONFIG, **config)[0] == F.OK
    assert b.send(F.LOAD)[0] == F.OK


class PowerCut(Exception):
    pass


class CuttingFS:
    """os and open for s2l.storage over a dict, cut after `budget` steps (a write step keeps half
    its bytes, as flash does when power goes mid-write)."""

    def __init__(self, files, budget):
        self.files, self.budget = files, budget

    def _step(self):
        if self.budget == 0:
            raise PowerCut
        self.budget -= 1

    def stat(self, path):
        if path not in self.files:
            raise OSError(2, "no such file")

    def remove(self, path):
        self._step()
        if path not in self.files:
            raise OSError(2, "no such file")
        del self.files[path]

    def rename(self, a, b):
        self._step()
        self.files[b] = self.files.pop(a)

    def open(self, path, mode="rb"):
        fs = self

        class File:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                pass

            def write(self, data):
                fs.files[path] = bytes(data[:len(data) // 2])
                fs._step()
                fs.files[path] = bytes(data)

            def read(self):
                return fs.files[path]

            def readinto(self, buf):
                data = fs.files[path][self.at:self.at + len(buf)]
                buf[:len(data)] = data
                self.at += len(data)
                return len(data)
        f = File()
        f.at = 0
        if "w" in mode:
            self._step()
            self.files[path] = b""
        elif path not in self.files:
            raise OSError(2, "no such file")
        return f


def _valid(data):
    if len(data) < 5 or binascii.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise ValueError("broken")


def _file(text):
    data = text.encode() * 20
    return data + struct.pack("<I", binascii.crc32(data))


@pytest.mark.parametrize("had_old", [True, False])
def test_a_power_cut_at_every_step_of_a_write_leaves_the_old_or_the_new_file(monkeypatch, had_old):
    old, new = _file("old"), _file("new")
    cuts = 0
    for budget in range(20):
        files = {"m": old} if had_old else {}
        fs = CuttingFS(files, budget)
        monkeypatch.setattr(storage, "os", fs)
        monkeypatch.setattr(storage, "open", fs.open, raising=False)
        try:
            storage.write_atomic("m", new)
        except PowerCut:
            cuts += 1
            fs.budget = -1  # the board boots again, with power
            data, state = storage.recover("m", _valid)
            assert data in ((old, new) if had_old else (None, new)), (budget, files)
            assert data is None or (files["m"] == data and set(files) == {"m"})
            assert state in (storage.OK, storage.RECOVERED, storage.MISSING, storage.INVALID)
            continue
        fs.budget = -1
        assert files == {"m": new} and storage.recover("m", _valid) == (new, storage.OK)
        break
    assert cuts >= (5 if had_old else 3)  # every step was cut once before a write went through


def test_boot_falls_back_to_a_valid_model_copy_and_hello_says_so(tmp_path, problem):
    model = problem[0]
    (tmp_path / "model.s2lm").write_bytes(model[:100])  # cut mid-rename on a FAT-like flash
    (tmp_path / "model.s2lm.old").write_bytes(model)
    b = Board(tmp_path)
    hello = b.send(F.HELLO)[1]
    assert hello["model"]["dims"] == [12, 8, 6, 4]
    assert hello["storage"] == {"model": storage.RECOVERED, "adapter": storage.MISSING}
    assert (tmp_path / "model.s2lm").read_bytes() == model and not (tmp_path / "model.s2lm.old").exists()
    (tmp_path / "adapter.s2la").write_bytes(b"S2LA garbage")
    assert Board(tmp_path).send(F.HELLO)[1]["storage"] == {"model": storage.OK, "adapter": storage.INVALID}


def test_config_fields_are_checked_without_a_model():
    configcheck.check({"method": "lora-all", "rank": 8, "lr": 0.01, "epochs": 5, "batch": 2, "seed": 0,
                       "cache_mode": "compact", "path": None})
    with pytest.raises(configcheck.ConfigError, match="lr must be in"):
        configcheck.check({"lr": math.nan})


def _int_board(folder, problem, **config):
    # the integer path (a board's default), unguarded unless asked
    return ready_board(folder, problem, **dict(dict(path="int", batch=1, holdout=0), **config))


def test_a_refused_samples_frame_stores_and_scores_nothing(tmp_path, problem):
    # a frame whose last sample the integer path cannot hold (features of 1e-38: an exponent past
    # int8) is refused whole: the samples before it in the frame are not kept; a test frame with a
    # sample out of range (features of 1e30: logits past the softmax's range) scores none of it
    _, _, (X, y), (Xt, yt) = problem
    b = _int_board(tmp_path, problem)
    stored = b.core.tuner.n_samples
    scored = list(b.core.confusion)
    tiny = [[1e-38] * X.shape[1]]
    reply = b.send(F.SAMPLES, samples_payload(np.vstack([X[:3], tiny]), list(y[:3]) + [0], F.KIND_FINETUNE))
    assert reply[0] == "ERROR" and reply[1] == F.E_TUNER and "out of the integer path's range" in reply[2]
    assert b.core.tuner.n_samples == stored
    assert b.send(F.SAMPLES, samples_payload(X[:3], y[:3], F.KIND_FINETUNE))[1]["stored"] == stored + 3
    huge = [[1e30] * X.shape[1]]
    reply = b.send(F.SAMPLES, samples_payload(np.vstack([Xt[:3], huge]), list(yt[:3]) + [0], F.KIND_TEST))
    assert reply[0] == "ERROR" and "test sample 3 of this frame is out of the integer path's range" in reply[2]
    assert list(b.core.confusion) == scored


@pytest.mark.parametrize("holdout", [0, 0.2])
def test_one_bad_fine_tune_sample_is_skipped_not_a_dead_run(tmp_path, problem, holdout):
    # one accepted sample whose logits leave the softmax's range made every epoch's loss infinite:
    # unguarded FAILED, guarded four halvings then "diverged". It is skipped and counted instead
    _, _, (X, y), _ = problem
    b = _int_board(tmp_path, problem, holdout=holdout)
    assert b.send(F.SAMPLES, samples_payload(np.full((1, X.shape[1]), 1e30), [1], F.KIND_FINETUNE))[0] == F.OK
    assert b.send(F.TRAIN)[0] == F.OK
    events = b.train()
    progress = [e[2] for e in events if e[0] == F.PROGRESS]
    assert [e[0] for e in events][-1] == F.DONE
    assert all(p["loss"] is not None for p in progress)
    if not holdout:  # with the guard the bad sample may be a validation one: then no step skips it
        assert all(p["skipped"] == 1 for p in progress)
    assert events[-1][2].get("stopped") != "diverged"


def test_training_keeps_nothing_that_grows_with_its_length(tmp_path, problem):
    # tuner.losses grew by one float per epoch: a long run died of a fragmented heap (epoch 256 on the
    # unix port at 241 KB); now an epoch count and the last loss
    b = _int_board(tmp_path, problem, epochs=5)
    assert b.json(F.TRAIN, epochs=300)[0] == F.OK
    b.train()
    t = b.core.tuner
    assert t.epochs_done == 300 and not hasattr(t, "losses")
    assert len(b.core.events) <= 16


def test_a_guard_with_fewer_samples_than_planned_splits_only_those_stored(tmp_path, problem):
    # CONFIG planned 200 samples, 20 arrived: the guard's split walked the planned length (labels of
    # samples never stored); it takes the stored ones only
    model, _, (X, y), _ = problem
    b = Board(tmp_path)
    b.json(F.MODEL_BEGIN, size=len(model), crc=binascii.crc32(model))
    b.send(F.MODEL_CHUNK, struct.pack("<I", 0) + model)
    b.send(F.MODEL_END)
    reply = b.json(F.CONFIG, method="skip2-lora", path="int", rank=2, epochs=2, samples=200, holdout=0.25)
    assert reply[1]["plan"]["samples"] == 200
    assert b.send(F.SAMPLES, samples_payload(X, y, F.KIND_FINETUNE))[1]["stored"] == len(y)
    reply = b.send(F.TRAIN)
    assert reply[0] == F.OK and reply[1]["samples"] == len(y) and 0 < reply[1]["validation_samples"] <= len(y) // 3
    assert b.train()[-1][0] == F.DONE


def test_samples_past_what_the_board_holds_are_refused_and_it_trains_on_the_rest(tmp_path, problem):
    # CONFIG without a plan, samples streamed until memory runs out: every later frame is refused
    # with the same clear error, rows and labels stay in step, and TRAIN trains on what was stored
    model, _, (X, y), _ = problem
    b = Board(tmp_path)
    b.core.arena.buf = b.core.arena.buf[:8 * 1024]  # a small board: 8 KB of arena
    b.core.arena.view = memoryview(b.core.arena.buf)
    b.json(F.MODEL_BEGIN, size=len(model), crc=binascii.crc32(model))
    b.send(F.MODEL_CHUNK, struct.pack("<I", 0) + model)
    b.send(F.MODEL_END)
    assert b.json(F.CONFIG, method="skip2-lora", path="int", rank=2, epochs=2, holdout=0)[0] == F.OK
    refused = []
    for _ in range(30):
        reply = b.send(F.SAMPLES, samples_payload(X, y, F.KIND_FINETUNE))
        if reply[0] == "ERROR":
            refused.append(reply[2])
    t = b.core.tuner
    assert refused and all(r.startswith("more fine-tune samples than the %d planned" % t.n_planned) for r in refused)
    assert t.n_samples % len(y) == 0 and t.n_samples <= t.n_planned
    assert b.send(F.TRAIN)[0] == F.OK and b.train()[-1][0] == F.DONE
