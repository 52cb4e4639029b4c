"""The epoch guard (guard.py): the validation split, a diverging rate caught and halved, the
starting adapters kept when nothing helps, early stopping; on both paths, and through the protocol
under every runtime."""
from array import array

import numpy as np
import pytest

from s2l import frames as F
from s2l.guard import HOLDOUT, MAX_RESTORES, Guard, split
from s2l.model import Model
from s2l.tuning import new_tuner
from skip2lora.data.catalog import load_scenario

from .test_protocol import Session, fixed_problem, samples_payload
from .test_tuner import CONFIG

MODEL = "models/digits-rotate.s2lm"


def _held(labels, n_classes, holdout):
    order = array("H", bytes(2 * len(labels)))
    n_val = split(labels, len(labels), n_classes, holdout, order)
    assert sorted(order) == list(range(len(labels)))  # every sample once: trained or validated
    return list(order[len(labels) - n_val:])


def test_split_holds_out_a_share_of_each_class_spread_over_its_samples():
    labels = bytearray([0] * 50 + [1] * 10 + [2] * 4 + [3] * 2 + [4])
    held = _held(labels, 5, HOLDOUT)
    per_class = [sum(labels[i] == c for i in held) for c in range(5)]
    # 20% of 50 and of 10; "a few" (2) once a class has 8; 1 of 4 by the share; none of 2 or 1
    assert per_class == [10, 2, 1, 0, 0]
    zeros = [i for i in held if labels[i] == 0]
    assert np.diff(zeros).tolist() == [5] * 9  # spread evenly, not the first ten
    assert _held(labels, 5, 0) == []
    # every second sample of each class, in arrival order
    assert _held(bytearray([0, 1] * 20), 2, 0.5) == [i for i in range(40) if (i // 2) % 2 == 1]


@pytest.fixture(scope="module")
def rotate():
    scenario = load_scenario("rotate")
    X, y = scenario.finetune
    Xt, yt = scenario.test
    return open(MODEL, "rb").read(), (X[:100].tolist(), y[:100].tolist()), (Xt.tolist(), yt.tolist())


def _guarded(rotate, path, lr, epochs, patience=0):
    model, (X, y), (Xt, yt) = rotate
    tuner = new_tuner(Model(model), "skip2-lora", path=path, lr=lr, epochs=epochs, seed=1)
    for x, label in zip(X, y):
        tuner.add_sample(x, label)
    before = tuner.evaluate(Xt, yt)[0]
    guard = Guard(tuner, patience=patience)
    assert guard.arrange()
    events = []
    while len(events) < epochs and not guard.stopped:
        events.append(guard.epoch(len(events) == epochs - 1))
    done = guard.finish()
    return tuner, events, done, before, tuner.evaluate(Xt, yt)[0]


@pytest.mark.parametrize("path", ["float", "int"])
def test_a_diverging_rate_is_caught_the_best_adapters_restored_and_the_rate_halved(rotate, path):
    # lr 0.5 blows up at once on both paths (NaN on the float path, logits out of range or a loss
    # far above guessing on the integer one); the guard brings back the best adapters at half the
    # rate until one trains, and ends above where it started
    tuner, events, done, before, after = _guarded(rotate, path, lr=0.5, epochs=6)
    restored = [e for e in events if e["restored"]]
    assert restored and events[0]["restored"]
    assert [e["lr"] for e in restored] == [0.5 / 2 ** k for k in range(len(restored))]
    assert tuner.lr == 0.5 / 2 ** len(restored) < 0.5
    assert not events[-1]["restored"] and done["trained"] and done["val"] > done["val_start"]
    assert done["restores"] == len(restored) and done["kept"] == events[-1]["best"]
    assert after > before + 0.05


@pytest.mark.parametrize("path", ["float", "int"])
def test_when_nothing_helps_the_starting_adapters_are_kept(rotate, path):
    # a rate so high that every halving still diverges: the guard gives up and the board predicts
    # exactly as before fine-tuning
    tuner, events, done, before, after = _guarded(rotate, path, lr=10.0, epochs=MAX_RESTORES + 3)
    assert all(e["restored"] for e in events) and len(events) == MAX_RESTORES + 1
    assert done["stopped"] == "diverged" and not done["trained"] and done["val"] == done["val_start"]
    assert after == before


def test_training_stops_when_validation_stops_improving(rotate):
    tuner, events, done, _, _ = _guarded(rotate, "int", lr=0.05, epochs=40, patience=3)
    assert done["stopped"] == "patience" and len(events) < 40
    best = max(e["val"] for e in events)
    assert done["val"] == best and events[done["kept"] - 1]["val"] == best
    # the stop came `patience` epochs after the last better score
    first_best = min(i for i, e in enumerate(events) if e["val"] == best)
    assert len(events) == first_best + 1 + 3


def test_the_guard_runs_through_the_protocol_the_same_under_every_runtime(runtime):
    # the integer path (viper under the unix port) at a rate that spikes in epoch 2: PROGRESS
    # carries the restore and the halved rate, DONE what was kept; identical on every runtime
    model, _, (X, y), _ = fixed_problem()
    s = Session().upload(model)
    s.json(F.CONFIG, method="skip2-lora", path="int", holdout=0.2, patience=0, **dict(CONFIG, lr=1.5, batch=1, epochs=4))
    s.send(F.SAMPLES, samples_payload(X, y, F.KIND_FINETUNE))
    s.send(F.TRAIN)
    s.lines.append("WORK")
    replies = s.run(runtime)
    train = [r[2] for r in replies if r[0] == F.OK and "validation_samples" in r[2]][0]
    progress = [r[2] for r in replies if r[0] == F.PROGRESS]
    done = [r[2] for r in replies if r[0] == F.DONE][0]
    assert train["validation_samples"] == 4
    assert [p["restored"] for p in progress] == [False, True, False, False]
    assert [p["lr"] for p in progress] == [1.5, 1.5, 0.75, 0.75]
    assert done["restores"] == 1 and done["val_samples"] == 4 and done["epochs"] == 4
    assert 0 <= done["val_start"] <= done["val"] <= 1
