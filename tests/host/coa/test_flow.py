"""CoA-LoRA end to end on the default scenario, kept short (few steps, one search round): `coa
train` writes the front and the CoA parameters, `export --budget-bytes/--board/--port` writes the best
fitting configuration with its folded adapter, bad input is a one-line error, and the benchmark's
parts run (the full-size numbers are in `skip2lora coa bench` and the README)."""
import json
import re

import numpy as np
import pytest

from s2l import modelfile as fmt
from skip2lora import cli
from skip2lora.coa import flow as coaflow
from skip2lora.coa.model import CoA
from skip2lora.train.modelfile import read_model_file
from skip2lora.train.quantconfig import QuantConfig


@pytest.fixture(scope="module")
def record_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("coa") / "coa.json"
    # rank 3, not the tuner's default 4: `run` must take the exported file's rank by itself
    cli.main(["coa", "train", "--rank", "3", "--steps", "400", "--rounds", "1", "--out", str(path), "--quiet"])
    return path


@pytest.fixture(scope="module")
def record(record_path):
    return json.loads(record_path.read_text())


def test_train_writes_the_front_and_keeps_held_out_configurations_out(record):
    dims = record["dims"]
    assert dims == [64, 64, 64, 10] and record["rank"] == 3
    held = set(map(str, record["held_out"]))
    assert len(held) == 12 and not held & set(map(str, record["training_configs"]))
    bits = sorted(QuantConfig.from_json(c).average_bits(dims) for c in record["held_out"])
    assert bits[0] < 3 and bits[-1] >= 7  # spread over 2..8 average bits
    for e in record["front"]:
        c = QuantConfig.from_json(e["config"])
        assert e["model_bytes"] == fmt.file_size(dims, c.bits, c.granularity)
        assert e["file_bytes"] == fmt.file_size(dims, c.bits, c.granularity, 3)
    sizes = [e["model_bytes"] for e in record["front"]]
    assert sizes == sorted(sizes) and sizes[0] < 4000 and sizes[-1] > 9000


def test_coa_recovers_low_bit_accuracy_on_held_out_configurations(record):
    scenario, net = coaflow.source_net("rotate", progress=False)
    held = coaflow.held_out_table(record, net, scenario, grid=((1e-2, 50), (3e-3, 50)), progress=False)
    rows = held["rows"]
    assert held["seeds"] == [0, 1, 2] and [s["seed"] for s in record["seeds"]] == [0, 1, 2]
    assert all(len(r["coa"]) == len(r["baseline"]) == 3 for r in rows)
    # the baseline's setting is chosen on the validation part, not on the test set
    chosen = "lr %g, %d steps" % (held["chosen"]["lr"], held["chosen"]["steps"])
    assert set(held["grid"]) == {"lr 0.01, 50 steps", "lr 0.003, 50 steps"}
    assert held["grid"][chosen]["validation_damage"] == min(v["validation_damage"] for v in held["grid"].values())
    assert np.isclose(np.mean([r["baseline_damage"] for r in rows]), held["grid"][chosen]["validation_damage"])
    low = [r for r in rows if r["average_bits"] < 4]
    # 2- and 3-bit configurations lose 5-12 points without an adapter; CoA gets most of it back
    # (measured with this short training: 90.2% -> 95.0% on their mean)
    assert np.mean([np.mean(r["coa"]) for r in low]) >= np.mean([r["none"] for r in low]) + 0.03
    assert all(r["baseline_seconds"] > r["coa_seconds"] for r in rows)
    text = coaflow.format_bench(record, held, coaflow.uniform_check(record, net, scenario), [])
    assert "within 1.0 point" in text and "both with no adapter" in text and "both with CoA adapter" in text
    assert text.count("alone:") == 3 and "mean over seeds:" in text


def test_the_training_and_validation_parts_split_the_pretraining_set():
    scenario, _ = coaflow.source_net("rotate", progress=False)
    X, X_val = coaflow.source_split(scenario)
    assert len(X_val) == coaflow.VALIDATION
    rows = lambda a: sorted(map(bytes, np.asarray(a, np.float64)))
    assert rows(np.concatenate([X, X_val])) == rows(scenario.pretrain[0])


def test_export_picks_the_least_coa_damage_that_fits_and_writes_its_adapter(record, record_path, tmp_path, capsys):
    out = tmp_path / "m.s2lm"
    budget = 8000
    cli.main(["export", "--budget-bytes", str(budget), "--coa", str(record_path), "--model", str(out), "--quiet"])
    data = out.read_bytes()
    assert len(data) <= budget
    fits = [e for e in record["front"] if e["file_bytes"] <= budget]
    best = min(fits, key=lambda e: e["damage_coa"])
    printed = capsys.readouterr().out
    assert len(data) == best["file_bytes"] and best["label"] in printed
    assert "beyond the board's integer path" not in printed  # rank 3 x 3 layers: the integer path holds it
    assert coaflow.int_path_holds(5, 3) and not coaflow.int_path_holds(8, 3)  # rank 8: float path only
    model = read_model_file(data)
    config = QuantConfig.from_json(best["config"])
    assert [layer.bits for layer in model.layers] == list(config.bits)
    want = CoA.from_json(record["coa"]).adapter(config)
    for got, expected in zip(model.adapter[0] + model.adapter[1], want[0] + want[1]):
        np.testing.assert_array_equal(got, expected)
    # the board fine-tunes from it with no --rank: its tuner takes the file's adapter rank
    from skip2lora.link.emulator import Emulator
    result_path = tmp_path / "run.json"
    with Emulator("cpython") as emu:
        cli.main(["run", "--port", emu.port, "--path", "float", "--limit", "40", "--epochs", "1", "--quiet",
                  "--json", str(result_path), "--model", str(out)])
    result = json.loads(result_path.read_text())
    assert result["config"]["rank"] == 3 and result["epochs"] == 1


def test_board_budget(record_path, tmp_path):
    out = tmp_path / "esp32.s2lm"
    cli.main(["export", "--board", "esp32", "--coa", str(record_path), "--model", str(out), "--quiet"])
    assert len(out.read_bytes()) <= coaflow.BOARD_BUDGETS["esp32"]


@pytest.mark.parametrize("argv,message", [
    (["--budget-bytes", "3000"], "no configuration on the CoA front fits 3000 bytes"),
    (["--board", "pico"], "unknown board 'pico' (known: esp32, rp2040)"),
    (["--board", "esp32", "--budget-bytes", "9000"], "give one of --budget-bytes, --board, --port"),
    (["--board", "esp32", "--port", "/dev/null"], "give one of --budget-bytes, --board, --port"),
    (["--budget-bytes", "9000", "--bits", "8,8,8"], "--bits and --budget-bytes/--board/--port exclude each other"),
    (["--budget-bytes", "0"], "--budget-bytes must be >= 1, got 0"),
])
def test_bad_budget_input_is_a_one_line_error(record_path, tmp_path, capsys, argv, message):
    out = tmp_path / "never.s2lm"
    with pytest.raises(SystemExit) as exc:
        cli.main(["export", "--coa", str(record_path), "--model", str(out), "--quiet"] + argv)
    assert str(exc.value).startswith("error: " + message) and "\n" not in str(exc.value)
    assert not out.exists()


def test_a_configuration_the_file_cannot_hold_or_a_missing_or_old_record_is_a_one_line_error(record_path, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["export", "--bits", "5,8,8", "--model", str(tmp_path / "x.s2lm"), "--quiet"])
    assert "--bits: 5 is not a bit width the model format has (8, 4, 3, 2)" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="^error: no CoA results at"):
        cli.main(["export", "--budget-bytes", "9000", "--coa", str(tmp_path / "none.json"), "--quiet"])
    old = dict(json.loads(record_path.read_text()))
    del old["seeds"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit, match="^error: .*old.json was written by an older `skip2lora coa train`"):
        cli.main(["export", "--budget-bytes", "9000", "--coa", str(tmp_path / "old.json"), "--quiet"])


def test_on_device_start_from_coa_is_loaded_by_the_firmware(record):
    _, net = coaflow.source_net("rotate", progress=False)
    rows = coaflow.on_device(record, net, "rotate", epochs=1, seeds=(1,), progress=False)
    assert [(r["path"], r["label"]) for r in rows] == [(p, c.label) for p in ("float", "int")
                                                        for c in coaflow.ON_DEVICE_CONFIGS]
    for r in rows:
        assert 0 < r["zero"] <= 1 and 0 < r["coa"] <= 1
    # the firmware started from the file's adapter: same seed and sample order, another result
    assert all(r["coa"] != r["zero"] for r in rows)
    text = "\n".join(coaflow.format_on_device(rows))
    for r in rows:
        assert "%-5s %-28s mean over 1 seeds: CoA %.1f%%, zero %.1f%%" % (
            r["path"], r["label"], 100 * r["coa"], 100 * r["zero"]) in text


def test_budget_from_hello_is_the_arena_less_the_fine_tune_within_the_flash():
    reserve = coaflow.FINETUNE_RESERVE

    def hello(arena, flash):
        return {"free_heap": 30000, "largest_free": 20000, "arena": {"size": arena}, "flash_free": flash}
    assert coaflow.budget_from_hello(hello(reserve + 9000, None), "p") == 9000
    assert coaflow.budget_from_hello(hello(reserve + 9000, 6000), "p") == 6000
    with pytest.raises(ValueError, match="^the board at p has a 60000-byte arena: nothing is left"):
        coaflow.budget_from_hello(hello(60000, None), "p")


def test_export_takes_its_budget_from_the_free_memory_the_board_reports(record, record_path, tmp_path, capsys):
    from skip2lora.link.emulator import Emulator
    out = tmp_path / "board.s2lm"
    with Emulator("micropython-unix", heap="224k") as emu:  # an arena of ~9 KB more than the fine-tune's
        cli.main(["export", "--port", emu.port, "--coa", str(record_path), "--model", str(out), "--quiet"])
    printed = capsys.readouterr().out
    arena, budget = map(int, re.search(r"reports a (\d+)-byte arena and \d+ bytes of free flash: a (\d+)-byte budget",
                                       printed).groups())
    assert budget == arena - coaflow.FINETUNE_RESERVE
    assert budget < max(e["file_bytes"] for e in record["front"])  # the board's memory decided
    assert len(out.read_bytes()) == coaflow.pick(record, budget)["file_bytes"] <= budget


@pytest.mark.parametrize("runtime,heap,message", [
    ("cpython", None, "reports no free heap (an emulator under CPython or WebAssembly): give --budget-bytes or --board"),
    ("micropython-unix", "160k", "-byte arena: nothing is left for a model beside the fine-tune's 65536"),
])
def test_a_board_with_no_room_or_no_figure_is_a_one_line_error(record_path, tmp_path, runtime, heap, message):
    from skip2lora.link.emulator import Emulator
    out = tmp_path / "never.s2lm"
    with Emulator(runtime, **({"heap": heap} if heap else {})) as emu:
        with pytest.raises(SystemExit) as exc:
            cli.main(["export", "--port", emu.port, "--coa", str(record_path), "--model", str(out), "--quiet"])
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert not out.exists()
