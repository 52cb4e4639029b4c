"""The main job on the embedded default: the targets the demo must show, and the bench JSON.

Accuracy bounds hold with a margin: the numpy reference's float32 sums follow the machine's BLAS
kernel, which moves single methods by tenths of a point between machines (FT-All 95.6..97.6% on
seed 3 across OpenBLAS core types); the pretrained model itself is the same on every machine.
Claims about methods average over SEEDS; the knife-edge figures are printed by `skip2lora bench`."""
import json
import numpy as np
import pytest

from skip2lora import cli
from skip2lora.train import reference
from skip2lora.train.export import prepare

SEEDS = (1, 2, 3)  # adapter init and sample order


@pytest.fixture(scope="module")
def prepared():
    return prepare("rotate", progress=False)  # pretraining: seed 0


def _accuracy(prepared, method, seed):
    config = reference.Config(method=method, seed=seed)
    return reference.run(prepared.quantized_net, config, prepared.scenario.finetune, prepared.scenario.test)[0]


def test_quantized_model_keeps_source_accuracy(prepared):
    rep = prepared.report
    assert rep["source_accuracy_float"] > 0.95  # 97.6% measured
    assert rep["source_accuracy_quantized"] >= rep["source_accuracy_float"] - 0.01


def test_skip2_lora_gains_fifteen_points_and_stays_near_ft_all_over_seeds(prepared):
    # measured (seeds 1-3): Skip2-LoRA 93.7% from 73.2% (+20.5), FT-All 96.3..96.4%: gap 2.6..2.7
    before = prepared.report["drifted_accuracy_before"]
    skip2 = np.mean([_accuracy(prepared, "skip2-lora", s)["accuracy"] for s in SEEDS])
    ft_all = np.mean([_accuracy(prepared, "ft-all", s)["accuracy"] for s in SEEDS])
    assert skip2 - before >= 0.15
    assert ft_all - skip2 <= 0.06


def test_skip2_lora_equals_skip_lora_on_the_default_run(prepared):
    skip, skip2 = (_accuracy(prepared, m, 1) for m in ("skip-lora", "skip2-lora"))
    assert skip2["accuracy"] == skip["accuracy"]
    assert skip2["losses"] == skip["losses"]
    assert skip2["macs"]["frozen_forward"] * reference.Config().epochs == skip["macs"]["frozen_forward"]


def _perturbed_products(relative):
    """Meter.mm whose products carry a relative error of about `relative`: another machine's BLAS."""
    rng = np.random.default_rng(7)

    def mm(self, a, b):
        self.macs[self.phase] += a.shape[0] * a.shape[1] * b.shape[-1]
        product = a @ b
        return product * (1 + relative * rng.standard_normal(product.shape))
    return mm


def test_pretraining_gives_the_same_model_file_whatever_the_blas(prepared, monkeypatch):
    # float64 rounding differences (1e-16 a product) stay below the 8-bit step; float32's (1e-7) do not
    monkeypatch.setattr(reference.Meter, "mm", _perturbed_products(1e-14))
    assert prepare("rotate", progress=False).model_bytes == prepared.model_bytes
    monkeypatch.setattr(reference.Meter, "mm", _perturbed_products(1e-7))
    assert prepare("rotate", progress=False).model_bytes != prepared.model_bytes


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
    from skip2lora.train.modelfile import read_model
    out = tmp_path / "m.s2lm"
    cli.main(["export", "--bits", "8,4,2", "--model", str(out), "--quiet"])
    assert [layer.bits for layer in read_model(out.read_bytes())] == [8, 4, 2]
    assert "relative RMS error" in capsys.readouterr().out


def test_bad_bits_are_refused_before_any_pretraining(capsys):
    for bits, reason in (("8,8", "--bits needs 3 values, one per layer; got 2"),
                         ("8,5,8", "--bits: 5 is not a bit width the model format has (8, 4, 3, 2)")):
        with pytest.raises(SystemExit):
            cli.main(["export", "--bits", bits, "--model", "/dev/null", "--quiet"])
        assert reason in capsys.readouterr().err


def test_lr_probe_cross_validates_on_the_fine_tune_set_only(prepared):
    # a short probe (2 folds, 1 seed: tests/host/conftest.py; 2 epochs): the test set replaced by
    # NaNs changes nothing
    from dataclasses import replace

    from skip2lora.train import lrprobe
    config = reference.Config(epochs=2)
    probe = lrprobe.probe_lr(prepared, config, progress=False)
    Xt, yt = prepared.scenario.test
    blind = replace(prepared, scenario=replace(prepared.scenario, test=(np.full_like(Xt, np.nan), yt)))
    assert lrprobe.probe_lr(blind, config, progress=False) == probe
    assert probe["lr"] in lrprobe.LR_CHOICES and probe["folds"] == 2 and probe["finetune_samples"] == 250
    # every fine-tune sample is scored once (per seed): accuracies are whole counts of 250
    assert all(abs(250 * a - round(250 * a)) < 1e-9 for a in probe["held_out_accuracy"].values())
    best = max(probe["held_out_accuracy"].values())
    assert probe["held_out_accuracy"][str(probe["lr"])] == best
    assert all(float(lr) >= probe["lr"] for lr, a in probe["held_out_accuracy"].items() if a == best)  # ties: lower


def test_own_data_is_normalised_with_the_constants_in_the_model_file(tmp_path):
    # raw features in far-apart units: pretraining sees them normalised, the model file carries the
    # constants, and prepared.inputs gives what the board's network sees
    from skip2lora.data.scenarios import own_data_scenario
    from skip2lora.train.modelfile import read_model_file
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 240)
    X = rng.normal(size=(240, 6)) + y[:, None] * 0.8
    X = X * np.array([1e3, 1e-3, 1, 50, 0.1, 7]) + np.array([1e4, 0, -3, 200, 5, 0])
    path = tmp_path / "lab.npz"
    np.savez(path, X=X, y=y)
    scenario = own_data_scenario(str(path), drift=str(path))
    p = prepare(scenario, progress=False)
    written = read_model_file(p.model_bytes)
    pre = scenario.pretrain[0]
    np.testing.assert_allclose(written.norm[0], pre.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(written.norm[1], 1 / pre.std(axis=0), rtol=1e-4)
    Xn, _ = p.inputs("pretrain")
    np.testing.assert_allclose(Xn.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(Xn.std(axis=0), 1, atol=1e-3)
    assert p.report["normalised"] and p.report["source_accuracy_quantized"] > 0.6
    assert written.lr is None and read_model_file(p.with_lr(0.02).model_bytes).lr == np.float32(0.02)
    assert read_model_file(prepare("rotate", progress=False).model_bytes).norm is None  # built-in: pre-scaled
