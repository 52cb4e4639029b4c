"""Issue 27, what a newcomer met (round two), each through the command line as a user types it: no
stale model reused, no label that leaves a class empty, no option ignored or caught only by the
board, bench and run on the same lr, help that says the truth, reports that tell runs apart, and no
traceback on Ctrl-C. Small data and few epochs: the whole file runs in well under a minute."""
import json

import numpy as np
import pytest

from skip2lora import cli
from skip2lora.progress import plural
from skip2lora.train.modelfile import read_model_file

from .test_cli import _refused


def write_csv(path, X, y, header=None):
    lines = [header] if header else []
    lines += [",".join("%.4f" % v for v in x) + ",%s" % label for x, label in zip(X, y)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def small_data(folder, scale=1.0, labels=(0, 1, 2), seed=3):
    """A lab file and a drifted file: 90 rows of 6 features each, three classes, features x scale."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1.0, (3, 6))
    folder.mkdir(exist_ok=True)

    def rows(shift):
        y = np.arange(90) % 3
        return scale * (means[y] + rng.normal(0, 0.7, (90, 6)) + shift), [labels[k] for k in y]
    return write_csv(folder / "lab.csv", *rows(0.0)), write_csv(folder / "drift.csv", *rows(0.5))


@pytest.fixture
def uploads(monkeypatch):
    """`run` up to the upload: the model bytes and lr it would send, no board needed."""
    sent = []
    monkeypatch.setattr(cli, "_run_on_board", lambda args, port, path, model_bytes, *rest: sent.append(model_bytes))
    return sent


def test_run_exports_again_when_the_default_model_came_from_other_data(tmp_path, monkeypatch, uploads, capsys):
    monkeypatch.chdir(tmp_path)  # out/models/lab.s2lm, as a user's checkout has it
    volts = small_data(tmp_path / "volts")
    millivolts = small_data(tmp_path / "millivolts", scale=1000.0)  # the same readings in mV: the same shape
    cli.main(["run", "--port", "loop://", "--data", volts[0], "--drift", volts[1], "--quiet"])
    assert "does not exist: exporting it first" in capsys.readouterr().out
    record = json.loads((tmp_path / "out/models/lab.s2lm.json").read_text())
    assert record["lab"]["rows"] == 90 and record["from"] == "own data from " + volts[0]

    cli.main(["run", "--port", "loop://", "--data", volts[0], "--drift", volts[1], "--quiet"])  # the same data
    assert "exporting" not in capsys.readouterr().out and uploads[1] == uploads[0]

    cli.main(["run", "--port", "loop://", "--data", millivolts[0], "--drift", millivolts[1], "--quiet"])
    printed = capsys.readouterr().out
    assert "out/models/lab.s2lm was exported from other lab data (then: own data from %s" % volts[0] in printed
    assert "exporting it again" in printed
    mean = read_model_file(uploads[2]).norm[0]  # the new data's normalisation went to the board
    assert np.abs(mean).max() > 100 and np.abs(read_model_file(uploads[0]).norm[0]).max() < 10

    # a model named with --model is the user's: refused, not overwritten
    _refused(["run", "--port", "loop://", "--model", "out/models/lab.s2lm", "--data", volts[0], "--drift", volts[1]],
             "out/models/lab.s2lm was exported from other lab data", capsys)
    _refused(["run", "--port", "loop://", "--model", "out/models/lab.s2lm", "--data", millivolts[0], "--drift",
              millivolts[1], "--classes", "a,b,c"], "was exported with other class names (then 0,1,2; now a,b,c)",
             capsys)


def test_labels_that_leave_a_class_empty_are_refused(tmp_path, capsys):
    lab, _ = small_data(tmp_path / "one-based", labels=(1, 2, 3))
    _refused(["export", "--data", lab], "lab.csv: no row is labelled 0 (the labels are 1, 2, 3), so class 0 would be "
                                        "empty: number the classes 0..2, or label the rows with names", capsys)
    two = tmp_path / "two.csv"
    two_lab = write_csv(two, np.eye(6)[np.arange(40) % 6], [k % 2 for k in range(40)])
    _refused(["export", "--data", two_lab, "--classes", "a,b,c"],
             "two.csv: no row of class 'c' (label 2) of --classes a,b,c: name only the classes the file has", capsys)
    lines = (tmp_path / "one-based" / "lab.csv").read_text().splitlines()
    lines[6] = lines[6].rsplit(",", 1)[0] + ",oops"
    (tmp_path / "stray.csv").write_text("\n".join(lines) + "\n")
    _refused(["export", "--data", str(tmp_path / "stray.csv")],
             "stray.csv, line 7: label 'oops' among numeric labels: give every row a number (0..k-1) or every row a "
             "name", capsys)


def test_run_options_the_board_would_refuse_or_ignore_are_refused_before_connecting(tmp_path, capsys):
    lab, drift = small_data(tmp_path)
    data = ["--data", lab, "--drift", drift]
    for option, reason in [(["--lr", "20"], "lr must be in 1e-06..10, got 20.0 (the board's limit, checked before "
                                            "connecting)"),
                           (["--rank", "100"], "rank must be in 1..64, got 100"),
                           (["--seed", "-1"], "seed must be in 0..4294967295, got -1"),
                           (["--patience", "5", "--holdout", "0"], "--patience 5 acts on the validation score, and "
                                                                   "--holdout 0 keeps none"),
                           (["--limit", "100000"], "--limit 100000: the data lab has 45 fine-tune samples")]:
        _refused(["run", "--port", "loop://"] + data + option, reason, capsys)  # loop://: nothing answers
    assert not (tmp_path / "out").exists()  # refused before any export


def test_emulate_heap_is_checked_and_a_board_that_died_at_start_prints_no_port(capsys):
    _refused(["emulate", "--runtime", "micropython-unix", "--heap", "abc"],
             "argument --heap: expected a heap size in bytes, e.g. 241k, 110k or 1m, got 'abc'", capsys)
    _refused(["emulate", "--runtime", "cpython", "--heap", "110k"],
             "--heap is for --runtime micropython-unix: the cpython runtime's heap grows on demand", capsys)
    _refused(["emulate", "--runtime", "micropython-unix", "--heap", "10k"],
             "the emulated board's MicroPython exited at start (code 1) before answering; is --heap 10k too small",
             capsys)
    assert capsys.readouterr().out == ""  # no port printed


def test_bench_fine_tunes_the_exported_model_at_its_lr(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lab, drift = small_data(tmp_path / "data")
    data = ["--data", lab, "--drift", drift, "--quiet", "--epochs", "2", "--methods", "skip2-lora"]
    cli.main(["export", "--data", lab, "--drift", drift, "--quiet"])
    exported = read_model_file((tmp_path / "out/models/lab.s2lm").read_bytes())
    capsys.readouterr()
    cli.main(["bench", "--json", "bench.json"] + data)
    printed = capsys.readouterr().out
    assert "lr %g (picked at export, the model file's default)" % exported.lr in printed
    assert "model 6-64-64-3 (out/models/lab.s2lm)" in printed and "lr %g, batch 1" % exported.lr in printed
    record = json.loads((tmp_path / "bench.json").read_text())
    assert record["config"]["lr"] == exported.lr and record["model"]["lr"] == exported.lr
    cli.main(["bench", "--lr", "0.1"] + data)
    assert "lr 0.1 (--lr)" in capsys.readouterr().out

    other = small_data(tmp_path / "other", scale=1000.0)
    cli.main(["bench", "--data", other[0], "--drift", other[1], "--quiet", "--epochs", "1", "--methods", "skip2-lora"])
    printed = capsys.readouterr().out  # the default model is another data's: not used, and said so
    assert "out/models/lab.s2lm was exported from other lab data" in printed
    assert "pretraining one here instead (not written)" in printed and "lr 0.05 (the default)" in printed
    _refused(["bench", "--model", "out/models/lab.s2lm", "--data", other[0], "--drift", other[1]],
             "out/models/lab.s2lm was exported from other lab data", capsys)


def test_report_headers_tell_runs_apart_and_count_what_ran(tmp_path, capsys):
    from skip2lora.bench import report
    from skip2lora.link.emulator import Emulator
    lab, drift = small_data(tmp_path)
    model = str(tmp_path / "m.s2lm")
    cli.main(["export", "--data", lab, "--model", model, "--quiet"])
    runs = [str(tmp_path / "guarded.json"), str(tmp_path / "plain.json")]
    data = ["--data", lab, "--drift", drift, "--model", model, "--quiet", "--lr", "0.05"]
    with Emulator("cpython") as emu:
        cli.main(["run", "--port", emu.port, "--epochs", "30", "--holdout", "0.2", "--patience", "1",
                  "--json", runs[0]] + data)
        cli.main(["run", "--port", emu.port, "--epochs", "2", "--holdout", "0", "--json", runs[1]] + data)
    guarded = json.loads(open(runs[0]).read())
    assert guarded["epochs"] < 30 and guarded["guard"]["val_samples"] == 9  # stopped early; 20% of 45 held out
    assert "in %s at lr 0.05" % plural(guarded["epochs"], "epoch") in capsys.readouterr().out
    cli.main(["report"] + runs + ["--out", str(tmp_path / "report")])
    header = (tmp_path / "report" / "table.md").read_text().splitlines()[0]
    assert "%s: lab (serial to linux, lr 0.05, %d of 30 epochs, 36 fine-tune + 9 validation / 45 test samples)" % (
        runs[0], guarded["epochs"]) in header
    assert "%s: lab (serial to linux, lr 0.05, 2 epochs, 45 fine-tune / 45 test samples)" % runs[1] in header
    assert report._axis_floor(report.load(runs)) > 0  # the accuracy axis starts near the bars, not at 0
    _refused(["report", lab], "%s is not a results JSON (written by bench, run or fleet with --json): Extra data" % lab,
             capsys)


def test_csv_errors_name_the_column_and_the_separator(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("1.0,2.0,3.0,0\n1.5,2.5,3.5,1\n1.1,2.1,x3.1,0\n")
    _refused(["export", "--data", str(bad)], "bad.csv, line 3, column 3: 'x3.1' is not a number", capsys)
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text("a;b;label\n1.0;2.0;0\n1.5;2.5;1\n")
    _refused(["export", "--data", str(semicolons)], "semi.csv: needs at least one feature column and a label column "
             "(this file seems to separate its columns with semicolons; a .csv here takes commas)", capsys)
    decimal_commas = tmp_path / "de.csv"
    decimal_commas.write_text("1,5;2,5;0\n1,0;2,0;1\n")
    _refused(["export", "--data", str(decimal_commas)], "de.csv, line 1, column 2: '5;2' is not a number (this file "
             "seems to separate its columns with semicolons", capsys)


@pytest.mark.parametrize("command", ["export", "bench"])
def test_ctrl_c_in_host_work_is_one_line(command, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_scenario", interrupted)  # Ctrl-C while the data loads
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--quiet"])
    assert stop.value.code == 130 and capsys.readouterr().err == "stopped (Ctrl-C)\n"


def test_plain_progress_repeats_its_line_while_a_step_outlasts_the_promised_gap(monkeypatch, capsys):
    import time

    from skip2lora import progress
    monkeypatch.setattr(progress, "PLAIN_EVERY", 0.3)
    monkeypatch.setattr(progress, "EARLY", 0.05)
    with progress.bar(2, "slow step", True, "epochs") as b:
        b.update()
        time.sleep(0.75)  # one step of 2.5 gaps: the line again, "working", before each gap ends
        b.update()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "slow step: 1/2 epochs" and lines[-1] == "slow step: 2/2 epochs"
    assert len(lines) >= 4 and set(lines[1:-1]) == {"slow step: 1/2 epochs; working"}, lines
