"""A reduced fan-env benchmark (10 epochs instead of 30) on the firmware under CPython, so that a
regression in accuracy or in the Skip2-LoRA / LoRA-All time ratio fails the build. The full one:
`skip2lora bench --dataset fan-env --runtime cpython` (README)."""
from pathlib import Path

import pytest

from skip2lora.bench.methods import compare_methods
from skip2lora.bench.results import time_ratio
from skip2lora.data.catalog import FAN_DATA
from skip2lora.train import reference
from skip2lora.train.export import prepare

# 10 epochs: the first (frozen forward, filling the cache) weighs 3x more than in 30, so the
# ratio's bound is looser than the full benchmark's 0.10 (0.082 measured there)
RATIO_BOUND_10_EPOCHS = 0.20


@pytest.mark.skipif(not Path(FAN_DATA).is_dir(), reason="the cooling-fan dataset is not at ../shared/data")
def test_fan_env_skip2_lora_gains_matches_ft_all_and_is_fast():
    prepared = prepare("fan-env", progress=False)
    results = compare_methods(prepared, reference.Config(epochs=10), ("ft-all", "lora-all", "skip2-lora"),
                              progress=False, runtime="cpython", board_row=False)
    by_method = {r["method"]: r for r in results}
    before = prepared.report["drifted_accuracy_before"]
    skip2 = by_method["skip2-lora"]["accuracy"]
    assert skip2 - before >= 0.15
    assert by_method["ft-all"]["accuracy"] - skip2 <= 0.010
    assert time_ratio(results) <= RATIO_BOUND_10_EPOCHS
