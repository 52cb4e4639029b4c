"""The whole `run` flow on a board's heap: the emulator runs the board's main.py under the MicroPython
unix port (viper kernels for real, the firmware compiled by mpy-cross as a board holds it) with an
RP2040's free heap at boot, and with an ESP32's."""
import json
from pathlib import Path

import numpy as np
import pytest
from s2l import frames as F

from skip2lora import cli
from skip2lora.link.client import BoardError, Client
from skip2lora.link.emulator import Emulator
from skip2lora.runtimes.mpyrun import BOARD_HEAP

ESP32_ON_THIS_PORT = "130k"  # an ESP32's 110 KB, its imports scaled to the unix port's 64-bit objects
from skip2lora.data.catalog import FAN_DATA

MODEL = "models/digits-rotate.s2lm"  # the tracked model: read, never written


def run(port, tmp_path, *args, model=MODEL):
    out = tmp_path / "run.json"
    cli.main(["run", "--port", port, "--model", str(model), "--quiet", "--json", str(out)] + list(args))
    return json.loads(out.read_text())


def test_the_readme_board_command_completes_on_an_rp2040_heap(tmp_path):
    command = ("--path", "int", "--limit", "200", "--epochs", "10", "--holdout", "0")
    with Emulator("micropython-unix", heap=BOARD_HEAP) as emu:
        board = run(emu.port, tmp_path, *command)
    with Emulator("cpython") as emu:
        host = run(emu.port, tmp_path, *command)
    assert board["kernels"] == "viper" and host["kernels"] == "portable"
    assert board["epochs"] == 10 and board["link"]["finetune_samples"] == 200
    assert board["plan"]["ram_rows"] == 200 and board["plan"]["spilled_rows"] == 0
    # the viper kernels give the portable twin's integers: the same accuracies, before and after
    assert (board["accuracy_before"], board["accuracy"]) == (host["accuracy_before"], host["accuracy"])
    assert board["accuracy"] - board["accuracy_before"] >= 0.10
    assert board["test_samples"] == 250
    # the arena (measured: 78 KB on the 64-bit unix port) holds the job; the heap beside it keeps
    # what the protocol needs (measured: 20-21 KB in one block above the arena, 55 KB free after the job)
    assert board["board"]["arena"]["size"] > 64 * 1024 and board["board"]["largest_free"] > 16 * 1024
    assert board["free_heap_after"] > 32 * 1024


@pytest.mark.skipif(not Path(FAN_DATA).is_dir(), reason="the cooling-fan dataset is not at ../shared/data")
def test_fan_env_streams_as_many_samples_as_the_boards_plan_holds(tmp_path):
    # 705 fine-tune samples of 128 features are more than an RP2040's RAM: the plan puts the rest
    # of the rows (sample and skip-cache entry) on flash, and run streams them all
    with Emulator("micropython-unix", heap=BOARD_HEAP) as emu:
        result = run(emu.port, tmp_path, "--scenario", "fan-env", "--path", "int", "--epochs", "3",
                     model=tmp_path / "fan-env.s2lm")
    plan = result["plan"]
    assert plan["samples"] == result["link"]["finetune_samples"] == 705
    assert plan["spilled_rows"] > 0 and plan["ram_rows"] + plan["spilled_rows"] == 705
    assert result["cache_spilled_bytes"] > 0 and result["epochs"] == 3
    assert result["accuracy"] - result["accuracy_before"] >= 0.20


def test_an_esp32_heap_completes_or_is_refused_before_streaming(tmp_path, capsys):
    # 110 KB, an ESP32 without PSRAM: the unix port's objects are twice a board's size, and its
    # 110 KB cannot even import the firmware (83 KB here, about 63 KB of a board's 32-bit objects),
    # so the ESP32's room after the imports (~47 KB) is 130 KB here. Either the run completes (rows
    # on flash) or the upload or CONFIG refuses it with the reason, before a sample is sent.
    with Emulator("micropython-unix", heap=ESP32_ON_THIS_PORT) as emu:
        try:
            result = run(emu.port, tmp_path, "--path", "int", "--limit", "200", "--epochs", "3")
        except SystemExit as stop:
            message = str(stop)
            assert any(m in message for m in ("do not fit", "no memory for the tuner", "no memory for the model")), message
            assert "send fine-tune samples" not in capsys.readouterr().out
            return
    assert result["plan"]["samples"] == 200 and result["epochs"] == 3


def write_csv(path, n_features, n_classes, rows, seed, drift=False):
    """A user's sensor data: `rows` rows of n_features in classes 0..n_classes-1 (header, label column);
    drifted: a per-feature gain and offset, as a new sensor would read the same things."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(n_features * 100 + n_classes).normal(0, 0.6, (n_classes, n_features))
    y = np.arange(rows) % n_classes
    X = means[y] + rng.normal(0, 1.0, (rows, n_features))
    if drift:
        X = X * rng.uniform(0.5, 1.5, n_features) + rng.uniform(-2.0, 2.0, n_features)
    path.write_text(",".join("f%d" % i for i in range(n_features)) + ",label\n" + "".join(
        ",".join("%.3f" % v for v in x) + ",%d\n" % k for x, k in zip(X, y)))
    return str(path)


@pytest.fixture(scope="module")
def own_models(tmp_path_factory):
    """Three users' data and models (exported as a user does): 128-64-64-4, 30-64-64-2, 64-64-64-3."""
    folder = tmp_path_factory.mktemp("own")
    made = {}
    for n_features, n_classes in ((128, 4), (30, 2), (64, 3)):
        name = "f%d" % n_features
        lab = write_csv(folder / (name + "-lab.csv"), n_features, n_classes, 400, 1)
        drift = write_csv(folder / (name + "-drift.csv"), n_features, n_classes, 600, 2, drift=True)
        model = folder / (name + ".s2lm")
        cli.main(["export", "--data", lab, "--model", str(model), "--quiet"])  # no --drift: no lr probe, quick
        made[name] = {"data": ["--data", lab, "--drift", drift], "model": model}
    return made


def hello(port):
    with Client(port) as board:
        return board.hello()


def test_ten_jobs_in_a_row_keep_the_boards_memory(tmp_path, own_models, capsys):
    # one emulated board, no reset: ten jobs of three models (and a refused CONFIG, a RESET, a job cut
    # off mid-stream) between them; every job completes, the arena is the same size throughout and
    # the heap beside it keeps its largest free block within 5% of the first HELLO's. The free heap
    # falls over the first jobs and then stays: what a job keeps there is bounded (the model's
    # object, the job's learner, the last KEPT_EVENTS events: 56.2 KB at boot, 43.4-44.3 KB from the
    # sixth job on the unix port), so from the eighth a job leaves what the job three before it (the
    # same model; the fourth had the extras below) left, a leak of a few hundred bytes a job shows
    jobs = [((), MODEL), (("--limit", "200", "--epochs", "10", "--holdout", "0"), MODEL)]
    for name in ("f128", "f30", "f64") * 2 + ("f128", "f30"):
        jobs.append((tuple(own_models[name]["data"]) + ("--epochs", "4"), own_models[name]["model"]))
    with Emulator("micropython-unix", heap=BOARD_HEAP) as emu:
        first = hello(emu.port)
        seen = []
        for k, (args, model) in enumerate(jobs):
            result = run(emu.port, tmp_path, *args, model=model)
            assert result["epochs"] >= 1 and result["link"]["finetune_samples"] == result["plan"]["samples"]
            if k == 3:  # things a user's session does: a refused CONFIG, a RESET, a job cut off mid-stream
                with Client(emu.port) as board:
                    with pytest.raises(BoardError, match="rank must be 1..5 on the integer path"):
                        board.configure(path="int", rank=6)
                    board.reset()
                    board.configure(samples=100)
                    n_in = board.hello()["model"]["dims"][0]
                    board.send_samples(np.ones((20, n_in)), np.zeros(20, int), F.KIND_FINETUNE, F.ENC_INT8)
            h = hello(emu.port)
            seen.append((h["largest_free"], h["arena"]["size"], h["free_heap"]))
    capsys.readouterr()
    print("largest free block at HELLO: first %d, after each job %s" % (first["largest_free"], [s[0] for s in seen]))
    free = [s[2] for s in seen]
    print("free heap at HELLO: first %d, after each job %s" % (first["free_heap"], free))
    assert all(size == first["arena"]["size"] for _, size, _ in seen)
    assert all(abs(largest - first["largest_free"]) <= 0.05 * first["largest_free"] for largest, _, _ in seen), seen
    assert all(abs(free[k] - free[k - 3]) <= 1024 for k in range(7, len(jobs))), free


def test_what_export_promises_the_board_plans(tmp_path, own_models):
    # export's "room for N fine-tune samples" in RAM is the board's own plan: with the board's arena,
    # N samples plan all in RAM, and N + 1 put one row on flash
    from s2l import modelfile as fmt

    from skip2lora.train.budget import board_budget
    model = own_models["f128"]["model"]
    layout = fmt.parse(model.read_bytes())
    dims, bits = layout.dims, layout.bits
    with Emulator("micropython-unix", heap=BOARD_HEAP) as emu:
        n = board_budget(dims, bits, arena=hello(emu.port)["arena"]["size"])["samples_that_fit"]
        assert 100 < n < 600
        plans = [run(emu.port, tmp_path, *own_models["f128"]["data"], "--limit", str(k), "--epochs", "1",
                     model=model)["plan"] for k in (n, n + 1)]
    assert (plans[0]["ram_rows"], plans[0]["spilled_rows"]) == (n, 0)
    assert plans[1]["spilled_rows"] >= 1


def test_the_float_path_fits_a_boards_heap_or_says_what_does(tmp_path):
    # the float path (compact rows carved from the arena) on an RP2040's heap: it completes with the
    # samples its plan holds (it could not plan even --limit 10 into 241 KB before the arena)
    with Emulator("micropython-unix", heap=BOARD_HEAP) as emu:
        result = run(emu.port, tmp_path, "--path", "float", "--limit", "100", "--epochs", "2", "--holdout", "0")
    assert result["path"] == "float" and result["cache_mode"] == "compact"
    assert result["plan"]["samples"] == result["link"]["finetune_samples"] == 100 and result["epochs"] == 2


def test_a_long_run_keeps_its_memory(tmp_path):
    # tuner.losses grew by a float every epoch: on this heap `run --epochs 1000` died of out of
    # memory at epoch 256; a job keeps nothing that grows with its length
    with Emulator("micropython-unix", heap=BOARD_HEAP) as emu:
        result = run(emu.port, tmp_path, "--limit", "20", "--epochs", "600", "--holdout", "0")
        after = hello(emu.port)
    assert result["epochs"] == 600
    assert after["largest_free"] >= 0.95 * result["board"]["largest_free"]


def test_samples_past_the_plan_are_refused_and_the_board_trains_on_the_rest():
    # CONFIG without `samples`: the board plans what RAM holds at the first sample; frames past it
    # are refused alike (rows and labels in step: they broke with E_INTERNAL before), and TRAIN
    # trains on what was stored
    from skip2lora.data.catalog import load_scenario
    X, y = load_scenario("rotate").finetune
    with Emulator("micropython-unix", heap=BOARD_HEAP) as emu:
        with Client(emu.port) as board:
            board.upload_model(open(MODEL, "rb").read())
            board.configure(path="int", holdout=0, epochs=2)
            refused = []
            for _ in range(4):  # 1,000 samples: more than the arena holds in RAM
                try:
                    board.send_samples(X, y, F.KIND_FINETUNE, F.ENC_INT8)
                except BoardError as e:
                    refused.append(e.message)
            stored = board.stats()["samples"]
            done = board.train()
    planned = int(refused[0].split("than the ")[1].split()[0])
    assert all(m.startswith("more fine-tune samples than the %d planned" % planned) for m in refused)
    assert 250 <= stored <= planned < 1000 and planned - stored < 15  # frames of 14 samples: the last one refused
    assert done["epochs"] == 2
