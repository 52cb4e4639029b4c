"""The command line as a user meets it (issues 13 and 16): every option acts or is refused with one
line; a user's own CSV goes through export, bench and run with no Python written; progress in a
log is plain text; help shows every default; the demo writes under its output folder only."""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from skip2lora import cli
from skip2lora.train.lrprobe import LR_CHOICES
from skip2lora.train.modelfile import read_model_file

REPO = Path(__file__).resolve().parents[2]
TRACKED_MODEL = str(REPO / "models" / "digits-rotate.s2lm")  # 8,8,8 bits, 64 features, 10 classes
CLASSES = ["idle", "walk", "run", "fall"]


def write_own_data(folder, seed=42):
    """A user's sensor: 300 lab rows x 32 features, 4 named classes (header, label column named), and
    a drifted copy (per-feature gain 0.4..1.4 and offset -3..3; no header)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 0.5, (4, 32))

    def rows(n):
        y = rng.integers(0, 4, n)
        return means[y] + rng.normal(0, 1.0, (n, 32)), y
    X, y = rows(300)
    lab = folder / "lab.csv"
    lab.write_text(",".join("f%d" % i for i in range(32)) + ",label\n" + "".join(
        ",".join("%.4f" % v for v in x) + ",%s\n" % CLASSES[k] for x, k in zip(X, y)))
    X, y = rows(300)
    X = X * rng.uniform(0.4, 1.4, 32) + rng.uniform(-3.0, 3.0, 32)
    drift = folder / "drift.csv"
    drift.write_text("".join(",".join("%.4f" % v for v in x) + ",%s\n" % CLASSES[k] for x, k in zip(X, y)))
    return str(lab), str(drift)


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    folder = tmp_path_factory.mktemp("own")
    return folder, write_own_data(folder)


def test_own_csv_through_export_bench_and_run_on_the_emulator(own, capsys):
    from skip2lora.link.emulator import Emulator
    folder, (lab, drift) = own
    data = ["--data", lab, "--drift", drift, "--quiet"]
    model = folder / "sensor.s2lm"
    cli.main(["export", "--model", str(model)] + data)
    printed = capsys.readouterr().out
    assert "lab.csv: 300 rows, 32 features -> pretrain 240 / source test 60 (disjoint, seed 0)" in printed
    assert "drift.csv: 300 rows -> fine-tune 150 / test 150 (disjoint, seed 0)" in printed
    assert "board budget (RP2040" in printed and "room for" in printed
    assert "classes: %s" % ", ".join(sorted(CLASSES)) in printed
    written = read_model_file(model.read_bytes())  # the lr pick and the normalisation live in the model file
    assert [written.layers[0].q.shape[1]] + [layer.q.shape[0] for layer in written.layers] == [32, 64, 64, 4]
    lr = float(written.lr)
    assert round(lr, 6) in LR_CHOICES and "-> lr %g, written into the model file" % round(lr, 6) in printed
    raw = np.loadtxt(lab, delimiter=",", skiprows=1, usecols=range(32))
    assert np.abs(written.norm[0] - raw.mean(axis=0)).max() < 0.2  # fitted on the lab file's pretrain part
    assert [p.name for p in folder.glob("*.json")] == ["sensor.s2lm.json"]  # the export record, nothing else

    bench = folder / "bench.json"
    cli.main(["bench", "--epochs", "10", "--lr", str(round(lr, 6)), "--methods", "lora-all,skip2-lora",
              "--json", str(bench)] + data)
    record = json.loads(bench.read_text())
    assert record["scenario"] == "lab" and (record["finetune_samples"], record["test_samples"]) == (150, 150)
    before = record["model"]["drifted_accuracy_before"]
    skip2 = [r for r in record["results"] if r["method"] == "skip2-lora"][0]
    assert skip2["accuracy"] - before >= 0.15  # measured: 48.7% -> 80.7% at lr 0.02

    capsys.readouterr()
    run = folder / "run.json"
    with Emulator("cpython") as emu:
        cli.main(["run", "--port", emu.port, "--model", str(model), "--epochs", "3", "--json", str(run)] + data)
    printed = capsys.readouterr().out
    first = printed.splitlines()[2]  # after the two data lines: what is about to run, before any streaming
    assert first.startswith("model %s: dims 32-64-64-4, bits 8,8,8" % model)
    assert "method skip2-lora" in first and "lr %g (picked at export" % lr in first
    assert "150 fine-tune and 150 test samples" in first
    result = json.loads(run.read_text())
    assert result["config"]["lr"] == lr  # no lr in CONFIG: the board took the model file's
    assert result["scenario"] == "lab" and result["link"]["finetune_samples"] == 150
    assert result["accuracy_before"] == pytest.approx(before, abs=0.02)  # int8 on the wire

    cli.main(["report", str(bench), str(run), "--out", str(folder / "report")])
    table = (folder / "report" / "table.md").read_text()
    # the board held 30 of the 150 out to validate on (--holdout 0.2): not counted as fine-tune samples
    assert "%s: lab (serial to linux, lr %g, 3 epochs, 120 fine-tune + 30 validation / 150 test samples)" % (
        run, lr) in table
    assert "%s: lab (numpy, lr %g, 10 epochs, 150 fine-tune / 150 test samples)" % (bench, round(lr, 6)) in table


def _refused(argv, reason, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    message = str(stop.value) if stop.value.code not in (2, None) else capsys.readouterr().err.strip().splitlines()[-1]
    assert reason in message and "\n" not in message, message


def test_options_that_cannot_act_are_refused_with_one_line(own, tmp_path, capsys):
    folder, (lab, drift) = own
    empty = tmp_path / "empty.s2lm"
    empty.write_bytes(b"")
    cases = [
        (["export", "--seed", "5"], "unrecognized arguments: --seed 5"),
        (["run", "--port", "loop://", "--methods", "ft-all"], "unrecognized arguments: --methods ft-all"),
        (["export", "--scenario", "rotate", "--data", str(folder)], "the digits scenario 'rotate' is built in"),
        (["export", "--data", lab, "--scenario", "noise"], "--scenario noise and --data %s are two sources" % lab),
        (["export", "--drift", drift], "--drift goes with --data FILE"),
        (["export", "--data", str(tmp_path / "nope.csv")], "nope.csv: no such file or folder"),
        (["bench", "--port", "loop://"], "--port is for --runtime serial"),
        (["bench", "--data", lab], "give what the board sees with --drift FILE"),
        (["bench", "--data", lab, "--drift", drift, "--finetune", drift, "--test", drift], "not both"),
        (["export", "--bits", "8,5,8"], "5 is not a bit width the model format has"),
        (["run", "--port", "loop://", "--model", TRACKED_MODEL, "--bits", "8,4,8"],
         "has bits 8,8,8, not the --bits 8,4,8 asked for"),
        (["run", "--port", "loop://", "--model", str(empty)], "%s is not a valid model file" % empty),
        (["run", "--port", "loop://", "--model", TRACKED_MODEL, "--data", lab, "--drift", drift],
         "takes 64 features and 10 classes; the data lab has 32 and 4"),
        (["run", "--port", "loop://", "--lr", "0"], "expected a number > 0"),
    ]
    for argv, reason in cases:
        _refused(argv, reason, capsys)


def test_every_option_has_help_that_shows_its_default():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    spellings = {}
    for name, sub in commands.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            assert action.help, "%s %s has no help" % (name, action.option_strings)
            assert "(default:" in action.help or "(required)" in action.help or action.dest in (
                "drift", "finetune", "test", "port"), "%s %s shows no default" % (name, action.option_strings)
            spellings.setdefault(action.dest, set()).update(action.option_strings)
    assert all(len(options) == 1 for options in spellings.values()), spellings  # one spelling per option
    assert "--output" not in str(spellings) and "--dataset" not in str(spellings)


def test_progress_without_a_terminal_is_plain_lines(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no out/models/digits-rotate.s2lm: bench pretrains here
    cli.main(["bench", "--epochs", "2", "--methods", "skip2-lora"])  # stdout captured: not a terminal
    printed = capsys.readouterr()
    assert "pretrain 64-64-64-10: 60/60 epochs" in printed.out and "fine-tune (numpy): 2/2 epochs" in printed.out
    assert "\x1b" not in printed.out + printed.err and "\r" not in printed.out + printed.err


def test_plural_epochs():
    from skip2lora.progress import plural
    assert (plural(1, "epoch"), plural(2, "epoch")) == ("1 epoch", "2 epochs")


def test_demo_writes_only_under_its_folder_and_measures_the_ratio_under_micropython(tmp_path, capsys, monkeypatch):
    # the demo's job, shortened (make demo: 30 epochs, 100 samples under MicroPython)
    monkeypatch.setitem(cli.DEMO, "epochs", 2)
    monkeypatch.setitem(cli.DEMO, "micropython_samples", 10)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    cli.main(["demo", "--out", str(tmp_path / "demo")])
    printed = capsys.readouterr().out
    assert subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout == status
    assert "fine-tune time Skip2-LoRA / LoRA-All = " in printed.split("2. the paper's claim")[1]
    micropython = json.loads((tmp_path / "demo" / "bench-micropython.json").read_text())
    assert micropython["runtime"] == "micropython" and micropython["skip2_over_lora_all_time"] > 0
    assert "(measured in this run, micropython; the paper: 0.10)" in printed
    summary = printed.split("summary (all measured in this demo):\n")[1].splitlines()  # the demo's last lines
    assert len(summary) == 3 and "fine-tune time Skip2-LoRA / LoRA-All %.3f (the paper: 0.10)" % (
        micropython["skip2_over_lora_all_time"]) in summary[1]
    assert {p.name for p in (tmp_path / "demo").iterdir()} == {
        "digits-rotate.s2lm", "digits-rotate.s2lm.json", "bench-numpy.json", "bench-micropython.json", "run.json", "report"}
    assert "\x1b" not in printed
    assert cli.build_parser().parse_args(["demo"]).out == "out/demo"  # the default is under the ignored out/


def test_class_names_from_classes_and_separate_finetune_and_test_files(own, tmp_path, capsys):
    folder, (lab, drift) = own
    rows = Path(drift).read_text().splitlines(keepends=True)
    numbered = tmp_path / "lab.csv"  # integer labels, no header
    numbered.write_text("".join(line.rsplit(",", 1)[0] + ",%d\n" % CLASSES.index(line.strip().rsplit(",", 1)[1])
                                for line in Path(lab).read_text().splitlines()[1:]))
    (tmp_path / "ft.csv").write_text("".join(rows[:100]))
    (tmp_path / "test.csv").write_text("".join(rows[100:]))
    cli.main(["export", "--data", str(numbered), "--classes", ",".join(CLASSES), "--finetune", str(tmp_path / "ft.csv"),
              "--test", str(tmp_path / "test.csv"), "--model", str(tmp_path / "m.s2lm"), "--quiet"])
    printed = capsys.readouterr().out
    assert "ft.csv: fine-tune 100 rows; %s: test 200 rows" % (tmp_path / "test.csv") in printed
    assert "classes: %s" % ", ".join(CLASSES) in printed
    assert "2-fold cross-validation on 100 fine-tune samples x 1 seed" in printed  # tests/host/conftest.py
    _refused(["export", "--data", str(numbered), "--classes", "a,b", "--model", str(tmp_path / "x.s2lm")],
             "labels must be below 2", capsys)


def test_export_refuses_data_too_wide_for_the_board_before_pretraining(tmp_path):
    wide = tmp_path / "wide.csv"  # 2,000 features: the first layer alone outgrows an RP2040's heap
    rng = np.random.default_rng(0)
    wide.write_text("".join(",".join("%.2f" % v for v in rng.normal(size=2000)) + ",%d\n" % (k % 2) for k in range(20)))
    with pytest.raises(SystemExit, match="board budget .* room for 0 fine-tune samples of 2000 features: too little"):
        cli.main(["export", "--data", str(wide), "--model", str(tmp_path / "w.s2lm"), "--quiet"])
    assert not (tmp_path / "w.s2lm").exists()


def test_ctrl_c_on_a_board_command_ends_with_one_line_and_no_traceback(monkeypatch, capsys):
    # the client turns Ctrl-C into RESET and raises Stopped once the board says it is idle
    # (tests/host/link/test_reliable_link.py); the command line prints that one line and exits 130
    from skip2lora.link.client import Stopped

    def interrupted(args):
        raise Stopped("stopped; the board is idle")
    monkeypatch.setattr(cli, "cmd_run", interrupted)
    with pytest.raises(SystemExit) as stop:
        cli.main(["run", "--port", "loop://"])
    assert stop.value.code == 130
    assert capsys.readouterr().err == "stopped; the board is idle\n"


def _kill_mid_training(argv):
    """`skip2lora run ...` in its own process, killed (SIGKILL: no RESET on the way out) once the
    board trains: the board is left busy, as a crashed host leaves it."""
    run = subprocess.Popen([sys.executable, "-m", "skip2lora.cli"] + argv, stdout=subprocess.PIPE, text=True)
    try:
        for line in run.stdout:
            if line.startswith("the board trains"):
                break
        time.sleep(2)  # TRAIN sent (after the scoring's EVAL), a few epochs in
    finally:
        run.kill()
        run.wait()


def test_a_board_a_killed_run_left_training_is_freed_by_reset_and_by_run_reset(tmp_path, capsys):
    from skip2lora.link.emulator import Emulator
    with Emulator("cpython") as emu:
        job = ["run", "--port", emu.port, "--model", TRACKED_MODEL, "--path", "int", "--limit", "30", "--quiet"]
        _kill_mid_training(job + ["--epochs", "10000", "--holdout", "0"])  # unguarded: no early stop
        with pytest.raises(SystemExit) as busy:
            cli.main(job + ["--epochs", "2"])
        message = str(busy.value.code)
        assert message.startswith("error: board error 10: training in progress")
        assert "skip2lora reset --port %s" % emu.port in message and "skip2lora run --reset" in message
        capsys.readouterr()
        cli.main(["reset", "--port", emu.port])
        assert capsys.readouterr().out == "the board on %s is idle: training stopped; its tuner and samples " \
                                          "dropped, its model kept\n" % emu.port
        _kill_mid_training(job + ["--epochs", "10000", "--holdout", "0"])  # unguarded: no early stop
        cli.main(job + ["--epochs", "2", "--reset", "--json", str(tmp_path / "run.json")])
        assert json.loads((tmp_path / "run.json").read_text())["epochs"] == 2
        cli.main(["reset", "--port", emu.port])
        assert capsys.readouterr().out.endswith("is idle: it was not training; its tuner and samples dropped, "
                                                "its model kept\n")
