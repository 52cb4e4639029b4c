"""The integer Skip2-LoRA against the float one, on the default scenario and on fan-env: same
seed, epochs and rank; the integer path must stay within 1 point of the float path (measured: 0.4
points on rotate, 1 test sample of 250; 0.43 on fan-env, 3 of 705). The pretrained model is the
same on every machine and the firmware's tuner is plain Python, so these figures do not move
between machines; the bound leaves room for a libm that rounds math.exp differently."""
import functools
from pathlib import Path

import pytest

from s2l import modelfile as fmt
from skip2lora.data.catalog import FAN_DATA
from skip2lora.runtimes.onboard import run_methods
from skip2lora.train import reference
from skip2lora.train.export import prepare
from skip2lora.train.modelfile import quantize, write_model

SCENARIOS = ["rotate", pytest.param("fan-env", marks=pytest.mark.skipif(
    not Path(FAN_DATA).is_dir(), reason="the cooling-fan dataset is not at ../shared/data"))]


@functools.lru_cache(maxsize=None)
def _prepared(scenario):
    return prepare(scenario, progress=False)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_integer_path_is_within_a_point_of_the_float_path(scenario):
    prepared = _prepared(scenario)  # pretraining: seed 0; fine-tuning: Config().seed = 1
    s, config = prepared.scenario, reference.Config()
    [fl] = run_methods(prepared.model_bytes, config, s.finetune, s.test, ["skip2-lora"], "cpython", path="float")
    [it] = run_methods(prepared.model_bytes, config, s.finetune, s.test, ["skip2-lora"], "cpython", path="int")
    assert (fl["path"], it["path"]) == ("float", "int")
    assert abs(it["accuracy"] - fl["accuracy"]) <= 0.01
    assert it["accuracy"] - prepared.report["drifted_accuracy_before"] >= 0.10
    assert it["macs"] == fl["macs"] and it["cache_hits"] == fl["cache_hits"]


def test_integer_path_on_scales_per_group_is_within_a_point_and_a_half_of_the_float_path():
    # the rotate network requantized at 4 bits with a scale per group of 32 inputs, 3 bits per
    # group of 16, and 8 bits per tensor (measured: 94.8% on both paths; 2/g32 4/tensor 3/g16
    # gave 92.0% integer vs 93.2% float)
    prepared = _prepared("rotate")
    s, config, net = prepared.scenario, reference.Config(), prepared.float_net
    model = write_model([quantize(w, b, n, g) for w, b, n, g in zip(net.W, net.b, (4, 3, 8), (32, 16, fmt.PER_TENSOR))])
    [fl] = run_methods(model, config, s.finetune, s.test, ["skip2-lora"], "cpython", path="float")
    [it] = run_methods(model, config, s.finetune, s.test, ["skip2-lora"], "cpython", path="int")
    assert abs(it["accuracy"] - fl["accuracy"]) <= 0.015
