"""The protocol core under both runtimes: a full session, and every kind of bad input answered
with an ERROR frame after which the next valid command works."""
import binascii
import json
import struct

import numpy as np
import pytest
from s2l.arena import aligned

from s2l import frames as F
from skip2lora.train import reference

from .test_tuner import CONFIG, fixed_problem

SCRIPT = """
import json
from s2l import frames as F
from s2l.protocol import Core
core = Core(".")
decoder = F.Decoder()
replies = []
def collect(data):
    for e in decoder.feed(data):
        if e[0] == "error":
            replies.append(["decode-error", e[1]])
        elif e[1] == F.ERROR:
            replies.append(["ERROR", e[2], e[3][0] | e[3][1] << 8, e[3][2:].decode()])
        else:
            replies.append([e[1], e[2], json.loads(e[3])])
for line in open("requests.txt"):
    if line.startswith("WORK"):
        while core.busy:
            collect(core.work())
    else:
        collect(core.feed(bytes.fromhex(line.strip())))
print(json.dumps(replies))
"""


def samples_payload(X, y, kind, encoding=F.ENC_FLOAT32):
    out = struct.pack(F.SAMPLES_HEADER, kind, encoding, len(y), X.shape[1])
    for x, label in zip(X, y):
        if encoding == F.ENC_FLOAT32:
            out += struct.pack("<B%df" % len(x), label, *x)
        else:
            scale = float(np.abs(x).max() / 127) or 1.0
            out += struct.pack("<Bf", label, scale) + np.round(x / np.float32(scale)).astype(np.int8).tobytes()
    return out


class Session:
    def __init__(self):
        self.lines, self.seq = [], 0

    def send(self, ftype, payload=b"", seq=None):
        if seq is None:
            self.seq += 1
        self.lines.append(F.encode(ftype, self.seq if seq is None else seq, payload).hex())
        return self

    def raw(self, data):
        self.lines.append(bytes(data).hex())

    def json(self, ftype, **fields):
        return self.send(ftype, json.dumps(fields).encode())

    def upload(self, model, chunk=300):
        self.json(F.MODEL_BEGIN, size=len(model), crc=binascii.crc32(model))
        for at in range(0, len(model), chunk):
            self.send(F.MODEL_CHUNK, struct.pack("<I", at) + model[at:at + chunk])
        return self.send(F.MODEL_END)

    def run(self, runtime):
        from skip2lora.runtimes.mpyrun import run_firmware_script
        text = "\n".join(self.lines + ["WORK"]) + "\n"
        return json.loads(run_firmware_script(SCRIPT, runtime, files={"requests.txt": text.encode()}))


@pytest.fixture(scope="module")
def problem():
    return fixed_problem()


def test_a_full_session_matches_the_reference(runtime, problem):
    # unguarded (holdout 0): every sample trains, as in the reference
    model, net, (X, y), (Xt, yt) = problem
    s = Session().send(F.HELLO)
    s.upload(model).json(F.CONFIG, method="skip2-lora", holdout=0, path="float", cache_mode="float", **CONFIG)
    s.send(F.SAMPLES, samples_payload(X[:12], y[:12], F.KIND_FINETUNE))
    s.send(F.SAMPLES, samples_payload(X[12:], y[12:], F.KIND_FINETUNE))
    s.send(F.SAMPLES, samples_payload(X[12:], y[12:], F.KIND_FINETUNE), seq=s.seq)  # a retry: not stored twice
    s.send(F.SAMPLES, samples_payload(Xt[:15], yt[:15], F.KIND_TEST))  # scored now: before training
    s.send(F.SAMPLES, samples_payload(Xt[15:], yt[15:], F.KIND_TEST)).send(F.EVAL)
    s.send(F.TRAIN)
    s.lines.append("WORK")
    s.send(F.EVAL)  # nothing scored since TRAIN
    s.send(F.SAMPLES, samples_payload(Xt[:15], yt[:15], F.KIND_TEST))
    s.send(F.SAMPLES, samples_payload(Xt[15:], yt[15:], F.KIND_TEST))
    s.send(F.EVAL).send(F.STATS).send(F.SAVE).send(F.RESET).json(F.CONFIG, method="skip2-lora", holdout=0, path="float", cache_mode="float", **CONFIG)
    s.send(F.LOAD).send(F.SAMPLES, samples_payload(Xt[:15], yt[:15], F.KIND_TEST))
    s.send(F.SAMPLES, samples_payload(Xt[15:], yt[15:], F.KIND_TEST)).send(F.EVAL)
    replies = s.run(runtime)
    by_seq = {}
    for r in replies:
        by_seq.setdefault(r[1], []).append(r)
    hello = by_seq[1][0][2]
    assert hello["protocol"] == F.PROTOCOL_VERSION and hello["model"] is None
    errors = [r for r in replies if r[0] not in (F.OK, F.PROGRESS, F.DONE)]
    assert [r[2] for r in errors] == [F.E_STATE], replies  # the EVAL with nothing scored
    stored = [r[2]["stored"] for r in replies if r[0] == F.OK and "stored" in r[2]]
    assert stored == [12, 20, 20]  # the retried batch answered again, not stored again
    scored = [r[2]["scored"] for r in replies if r[0] == F.OK and "scored" in r[2]]
    assert scored == [15, 30] * 3  # test samples are scored as they arrive, never stored
    progress = [r[2] for r in replies if r[0] == F.PROGRESS]
    assert [p["epoch"] for p in progress] == [1, 2, 3] and any(r[0] == F.DONE for r in replies)
    want, _ = reference.run(net, reference.Config("skip2-lora", **CONFIG), (X, y), (Xt, yt))
    evals = [r[2] for r in replies if r[0] == F.OK and "confusion" in r[2]]
    before = float((net.forward(Xt)[1].argmax(axis=1) == yt).mean())
    assert evals[0]["accuracy"] == before
    assert evals[1]["accuracy"] == want["accuracy"]
    assert sum(map(sum, evals[1]["confusion"])) == 30 == evals[1]["samples"]
    assert evals[2]["accuracy"] == want["accuracy"]  # the saved adapter, loaded into a fresh tuner
    np.testing.assert_allclose([p["loss"] for p in progress], want["losses"], rtol=1e-4)
    stats = [r[2] for r in replies if r[0] == F.OK and "macs" in r[2]][0]
    assert stats["cache_hits"] == 20 * 2 and stats["macs"]["backward"] == want["macs"]["backward"]


def test_a_session_on_the_integer_path(runtime, problem):
    # what a board runs by default: CONFIG path int; test samples, EVAL, SAVE and LOAD as on the float path
    from s2l.model import Model
    from s2l.tuning import new_tuner
    model, _, (X, y), (Xt, yt) = problem
    config = dict(CONFIG, batch=1)
    s = Session().upload(model).json(F.CONFIG, method="skip2-lora", path="int", holdout=0, **config)
    for at in (0, 10):  # frames of at most 10 samples
        s.send(F.SAMPLES, samples_payload(X[at:at + 10], y[at:at + 10], F.KIND_FINETUNE))
    s.send(F.TRAIN)
    s.lines.append("WORK")
    for at in (0, 10, 20):
        s.send(F.SAMPLES, samples_payload(Xt[at:at + 10], yt[at:at + 10], F.KIND_TEST))
    s.send(F.EVAL).send(F.SAVE).send(F.RESET).json(F.CONFIG, method="skip2-lora", path="int", holdout=0, **config)
    s.send(F.LOAD)
    for at in (0, 10, 20):
        s.send(F.SAMPLES, samples_payload(Xt[at:at + 10], yt[at:at + 10], F.KIND_TEST))
    s.send(F.EVAL).send(F.STATS)
    replies = s.run(runtime)
    assert all(r[0] in (F.OK, F.PROGRESS, F.DONE) for r in replies), replies
    tuner = new_tuner(Model(model), "skip2-lora", path="int", **config)  # the same, in this process
    for x, label in zip(X, y):
        tuner.add_sample(x, int(label))
    for _ in range(tuner.epochs):
        tuner.train_epoch()
    want, _ = tuner.evaluate(Xt, yt)
    evals = [r[2] for r in replies if r[0] == F.OK and "confusion" in r[2]]
    assert [e["accuracy"] for e in evals] == [want, want]
    assert [r[2]["path"] for r in replies if r[0] == F.OK and "path" in r[2]] == ["int"] * 3


def test_bad_input_gets_an_error_and_the_next_command_works(runtime, problem):
    model, _, (X, y), _ = problem
    s = Session()
    s.send(F.SAMPLES, samples_payload(X[:2], y[:2], F.KIND_FINETUNE))   # SAMPLES before MODEL
    s.send(F.TRAIN)                                                    # TRAIN with nothing
    s.send(0x55)                                                       # unknown command
    bad = bytearray(F.encode(F.HELLO, 99))
    bad[-1] ^= 1
    s.raw(bad)                                                         # bad CRC
    s.raw(F.encode(F.HELLO, 98)[:5] + b"garbage")                      # truncated, then garbage
    broken = bytearray(model)
    broken[20] ^= 0xFF
    s.json(F.MODEL_BEGIN, size=len(model), crc=binascii.crc32(broken))
    s.send(F.MODEL_CHUNK, struct.pack("<I", 0) + bytes(broken[:900]))
    s.send(F.MODEL_CHUNK, struct.pack("<I", 900) + bytes(broken[900:]))
    s.send(F.MODEL_END)                                                # model fails validation
    s.upload(model).json(F.CONFIG, method="skip2-lora", rank=0)        # bad config
    s.json(F.CONFIG, method="skip2-lora", holdout=0, path="float", cache_mode="float", **CONFIG)
    s.send(F.SAMPLES, samples_payload(X[:2], y[:2], F.KIND_FINETUNE)[:-3])  # wrong size
    labels = y[:3].copy()
    labels[2] = 9
    s.send(F.SAMPLES, samples_payload(X[:3], labels, F.KIND_FINETUNE))  # a bad label: none stored
    s.send(F.SAMPLES, samples_payload(X[:3], y[:3], F.KIND_FINETUNE, F.ENC_INT8))
    s.send(F.TRAIN)
    s.send(F.HELLO)
    replies = s.run(runtime)
    errors = [r[2:] for r in replies if r[0] == "ERROR"]
    codes = [code for code, _ in errors]
    assert codes[:3] == [F.E_STATE, F.E_STATE, F.E_UNKNOWN]
    assert ["ERROR", 99, F.E_CRC, "frame failed its CRC"] in replies
    assert F.E_MODEL in codes and F.E_TUNER in codes and F.E_PAYLOAD in codes
    assert any("label 9 out of range" in m for _, m in errors)
    assert [r[2]["stored"] for r in replies if r[0] == F.OK and "stored" in r[2]] == [3]
    hello = [r for r in replies if r[0] == F.OK and "protocol" in r[2]]
    assert hello[-1][2]["model"]["dims"] == [12, 8, 6, 4]
    assert [r[0] for r in replies].count(F.PROGRESS) == CONFIG["epochs"]


def test_a_config_the_tuner_refuses_keeps_the_old_tuner_and_its_samples(runtime, problem):
    # rank 6 passes the CONFIG checks, but the integer path holds at most 16 / 3 layers = 5 in
    # int32: refused, and the trained tuner serves on (same predictions, its samples, TRAIN again)
    model, _, (X, y), (Xt, yt) = problem
    config = dict(CONFIG, batch=1)
    s = Session().upload(model).json(F.CONFIG, method="skip2-lora", path="int", **config)
    for at in (0, 10):
        s.send(F.SAMPLES, samples_payload(X[at:at + 10], y[at:at + 10], F.KIND_FINETUNE))
    s.send(F.TRAIN)
    s.lines.append("WORK")
    test = [samples_payload(Xt[at:at + 10], yt[at:at + 10], F.KIND_TEST) for at in range(0, len(yt), 10)]
    for payload in test:
        s.send(F.SAMPLES, payload)
    s.send(F.EVAL).json(F.CONFIG, method="skip2-lora", path="int", **dict(config, rank=6))
    s.send(F.STATS).send(F.EVAL)  # the scores since TRAIN are kept too
    for payload in test:
        s.send(F.SAMPLES, payload)
    s.send(F.EVAL)
    s.json(F.TRAIN, epochs=1)
    s.lines.append("WORK")
    replies = s.run(runtime)
    errors = [r[2:] for r in replies if r[0] == "ERROR"]
    assert errors[0] == [F.E_TUNER, "rank must be 1..5 on the integer path, got 6 (the previous tuner and its "
                                    "samples are kept)"]
    assert len(errors) == 1
    stats = [r[2] for r in replies if r[0] == F.OK and "macs" in r[2]]
    assert len(stats) == 1 and stats[0]["samples"] == 20 and stats[0]["epochs"] == CONFIG["epochs"]
    evals = [r[2] for r in replies if r[0] == F.OK and "confusion" in r[2]]
    assert len(evals) == 3 and evals[0] == evals[1] and evals[2]["samples"] == 2 * len(yt)
    assert evals[2]["accuracy"] == evals[0]["accuracy"]
    progress = [r[2]["epoch"] for r in replies if r[0] == F.PROGRESS]
    assert progress == list(range(1, CONFIG["epochs"] + 2))  # trained on from where it stopped


def _core_with_model(tmp_path, model, arena_bytes):
    from s2l import protocol
    core = protocol.Core(str(tmp_path), arena_bytes=arena_bytes)
    for ftype, payload in ((F.MODEL_BEGIN, json.dumps({"size": len(model), "crc": binascii.crc32(model)}).encode()),
                           (F.MODEL_CHUNK, struct.pack("<I", 0) + model), (F.MODEL_END, b"")):
        assert core._handle(ftype, 1, payload)[0] == F.OK
    return core


def test_a_new_tuner_is_tried_beside_the_old_one_and_built_where_a_job_starts(monkeypatch, tmp_path, problem):
    # CONFIG builds the new tuner beside the old one first: a refusal keeps the old one serving; with
    # no room beside it, the old one goes first, and a refusal then says so. Whatever happens, the
    # new job starts where the model ends: the arena stays in one piece
    from s2l import protocol
    monkeypatch.setattr(protocol, "flash_free", lambda path: None)  # no flash to spill rows to
    model, *_ = problem
    config = json.dumps({"method": "skip2-lora", "path": "int", "holdout": 0}).encode()
    roomy = _core_with_model(tmp_path, model, 64 * 1024)
    assert roomy._handle(F.CONFIG, 2, config)[0] == F.OK
    one_job = roomy.arena.mark() - roomy.model_end
    old = roomy.tuner
    assert roomy._handle(F.CONFIG, 3, config)[0] == F.OK  # the new one replaces it, in the same place
    assert roomy.tuner is not old and roomy.arena.mark() - roomy.model_end == one_job
    refused = roomy._handle(F.CONFIG, 4, json.dumps({"path": "int", "rank": 9}).encode())  # 3 layers x 9 > 16
    assert refused[0] == F.ERROR and refused[1][2:].decode().endswith("(the previous tuner and its samples are kept)")
    assert roomy.tuner is not None and roomy.arena.mark() - roomy.model_end == one_job

    tight = _core_with_model(tmp_path, model, aligned(len(model)) + one_job + 100)  # room for one tuner
    assert tight._handle(F.CONFIG, 2, config)[0] == F.OK
    assert tight._handle(F.CONFIG, 3, config)[0] == F.OK  # no room beside: the old one went first
    plan = json.dumps({"method": "skip2-lora", "path": "int", "holdout": 0, "samples": 200}).encode()
    rtype, body = tight._handle(F.CONFIG, 4, plan)  # the tuner fits, 200 samples do not (no flash here)
    assert rtype == F.ERROR and body[2:].decode().startswith("200 fine-tune samples do not fit")
    assert body[2:].decode().endswith(" (the previous tuner was freed to make room)")
    assert tight.tuner is None and tight.arena.mark() == tight.model_end
    assert tight._handle(F.STATS, 5, b"")[0] == F.ERROR  # STATS before CONFIG


WORKING_SCRIPT = """
import json
from s2l import frames as F
from s2l.protocol import Core
core = Core(".")
core.working_every_us = 0  # a WORKING frame at every chance
decoder = F.Decoder()
for line in open("requests.txt"):
    core.feed(bytes.fromhex(line.strip()))
epochs = []
while core.busy:
    sent = []
    reply = core.work(sent.append)
    working = [e for data in sent for e in decoder.feed(data)]
    epochs.append([[e[1], e[2], json.loads(e[3])] for e in working] + [[e[1] for e in decoder.feed(reply)]])
print(json.dumps(epochs))
"""


@pytest.mark.parametrize("path,batch", [("int", 1), ("float", 4)])
def test_the_board_sends_working_frames_during_an_epoch(runtime, problem, path, batch):
    # the integer path after each frozen forward (the first epoch only: a cached step pays nothing),
    # the float path after each mini-batch; each before the epoch's PROGRESS
    from skip2lora.runtimes.mpyrun import run_firmware_script
    model, _, (X, y), _ = problem
    s = Session().upload(model).json(F.CONFIG, method="skip2-lora", path=path, holdout=0, **dict(CONFIG, batch=batch))
    s.send(F.SAMPLES, samples_payload(X[:10], y[:10], F.KIND_FINETUNE)).send(F.TRAIN)
    epochs = json.loads(run_firmware_script(WORKING_SCRIPT, runtime, files={"requests.txt": "\n".join(s.lines).encode()}))
    assert len(epochs) == CONFIG["epochs"]
    _check_working(epochs, path)


def _check_working(epochs, path, n=10):
    for k, epoch in enumerate(epochs):
        working, after = epoch[:-1], epoch[-1]
        assert after[0] == F.PROGRESS and all(w[:2] == [F.WORKING, 0] for w in working)
        done = [w[2]["done"] for w in working]
        if path == "int":
            assert done == (list(range(1, n + 1)) if k == 0 else [])
        else:
            assert done == [4, 8, 10]
        assert all(w[2]["epoch"] == k + 1 and w[2]["of"] == n for w in working)


def test_the_guards_first_scoring_sends_working_frames_too(runtime, problem):
    # a call of its own before the first epoch, which runs the validation samples' frozen layers
    from skip2lora.runtimes.mpyrun import run_firmware_script
    model, _, (X, y), _ = problem
    s = Session().upload(model).json(F.CONFIG, method="skip2-lora", path="int", holdout=0.5, **dict(CONFIG, batch=1))
    s.send(F.SAMPLES, samples_payload(X[:10], y[:10], F.KIND_FINETUNE)).send(F.TRAIN)
    calls = json.loads(run_firmware_script(WORKING_SCRIPT, runtime, files={"requests.txt": "\n".join(s.lines).encode()}))
    start, epochs = calls[0], calls[1:]
    assert start[-1] == [] and len(epochs) == CONFIG["epochs"]  # no event: the guard's start
    n_val = start[0][2]["of"]
    assert [w[2]["done"] for w in start[:-1]] == list(range(1, n_val + 1)) and 0 < n_val < 10
    assert all(w[2]["epoch"] == 0 for w in start[:-1])  # before epoch 1
    _check_working(epochs, "int", 10 - n_val)
