"""The main job on the embedded default: the targets the demo must show, and the bench JSON."""
import json

import pytest

from skip2lora import cli, reference
from skip2lora.pipeline import compare_methods, prepare


@pytest.fixture(scope="module")
def default_run():
    prepared = prepare("rotate", progress=False)
    return prepared, {r["method"]: r for r in compare_methods(prepared, reference.Config(), progress=False)}


def test_quantized_model_keeps_source_accuracy(default_run):
    rep = default_run[0].report
    assert rep["source_accuracy_float"] > 0.95
    assert rep["source_accuracy_quantized"] >= rep["source_accuracy_float"] - 0.01


def test_skip2_lora_gains_ten_points_and_is_within_1_5_of_ft_all(default_run):
    prepared, by_method = default_run
    before = prepared.report["drifted_accuracy_before"]
    skip2 = by_method["skip2-lora"]["accuracy"]
    assert skip2 - before >= 0.10
    assert by_method["ft-all"]["accuracy"] - skip2 <= 0.015


def test_skip2_lora_equals_skip_lora_on_the_default_run(default_run):
    by_method = default_run[1]
    assert by_method["skip2-lora"]["accuracy"] == by_method["skip-lora"]["accuracy"]
    assert by_method["skip2-lora"]["losses"] == by_method["skip-lora"]["losses"]
    assert by_method["skip2-lora"]["macs"]["frozen_forward"] * reference.Config().epochs == \
        by_method["skip-lora"]["macs"]["frozen_forward"]


def test_bench_writes_json_per_method_and_prints_the_ratio(tmp_path, capsys):
    out = tmp_path / "bench.json"
    cli.main(["bench", "--runtime", "numpy", "--json", str(out), "--epochs", "2", "--quiet",
              "--methods", "lora-all,skip2-lora"])
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert [r["method"] for r in record["results"]] == ["lora-all", "skip2-lora"]
    for r in record["results"]:
        assert set(r["macs"]) == set(reference.PHASES) and r["finetune_seconds"] > 0
        assert 0.0 <= r["accuracy"] <= 1.0
    ratio = record["skip2_over_lora_all_time"]
    assert ratio == pytest.approx(record["results"][1]["finetune_seconds"] / record["results"][0]["finetune_seconds"])
    assert "Skip2-LoRA / LoRA-All = %.3f" % ratio in printed


def test_export_writes_a_valid_model_file(tmp_path, capsys):
    from skip2lora.modelfile import read_model
    out = tmp_path / "m.s2lm"
    cli.main(["export", "--bits", "8,4,2", "-o", str(out), "--quiet"])
    assert [layer.bits for layer in read_model(out.read_bytes())] == [8, 4, 2]
    assert "relative RMS error" in capsys.readouterr().out


def test_bad_bits_is_a_clear_error():
    with pytest.raises(SystemExit, match="one per layer"):
        cli.main(["export", "--bits", "8,8", "-o", "/dev/null", "--quiet"])
