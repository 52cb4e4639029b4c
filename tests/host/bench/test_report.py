"""The report: the paper-style table and the three plots, from results written by bench."""
import json

import pytest

from skip2lora import cli


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "rotate.json"
    cli.main(["bench", "--runtime", "numpy", "--epochs", "2", "--lr", "0.05", "--quiet", "--json", str(path),
              "--methods", "ft-all,lora-all,skip2-lora"])
    return path


def test_report_writes_the_table_and_three_pngs(results, tmp_path, capsys):
    cli.main(["report", str(results), "--out", str(tmp_path)])
    table = (tmp_path / "table.md").read_text()
    record = json.loads(results.read_text())
    skip2 = [r for r in record["results"] if r["method"] == "skip2-lora"][0]
    assert "| Skip2-LoRA | %.1f%% | %.2f |" % (100 * skip2["accuracy"], skip2["finetune_seconds"]) in table
    assert "| (before) | %.1f%% |" % (100 * record["model"]["drifted_accuracy_before"]) in table
    assert "FT-Last" not in table  # only the methods that ran
    assert len(skip2["accuracy_per_epoch"]) == 2
    for name in ("accuracy.png", "time_per_phase.png", "accuracy_per_epoch.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_a_file_that_is_not_results_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match="not a bench, run or fleet results file"):
        cli.main(["report", str(bad), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="No such file"):
        cli.main(["report", str(tmp_path / "missing.json"), "--out", str(tmp_path)])


def test_report_keeps_board_mode_rows_states_the_run_and_draws_no_empty_panel(results, tmp_path):
    record = json.loads(results.read_text())
    skip2 = [r for r in record["results"] if r["method"] == "skip2-lora"][0]
    record["results"].append(dict(skip2, cache_mode="compact", accuracy=0.5))  # a board-mode repeat
    for r in record["results"]:
        del r["accuracy_per_epoch"]  # a run that did not measure it
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(record))
    cli.main(["report", str(edited), "--out", str(tmp_path / "r")])
    table = (tmp_path / "r" / "table.md").read_text()
    assert "%s: rotate (numpy, lr 0.05, 2 epochs, 250 fine-tune / 250 test samples) accuracy" % edited in table
    assert "| Skip2-LoRA (int8) | 50.0% |" in table
    assert sorted(p.name for p in (tmp_path / "r").glob("*.png")) == ["accuracy.png", "time_per_phase.png"]
