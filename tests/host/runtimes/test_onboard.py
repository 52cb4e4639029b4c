"""The firmware tuner on the default scenario, as the benchmark runs it (short: two epochs)."""
import pytest

from s2l.tuner import BOARD_CACHE_BUDGET
from skip2lora.runtimes.onboard import run_methods
from skip2lora.train import reference
from skip2lora.train.export import prepare

# the float path's standalone tuner in RP2040 mode under the WebAssembly MicroPython (whose heap
# accounting is the same from run to run): measured 122,016 B, and 123,120 B once epochs became
# resumable slices (issue 24's learner); the bound leaves room for a few KB more, not for a buffer
# of the samples' size (on a board the compact rows are the arena's, not this heap's)
RP2040_HEAP_TARGET = 128 * 1024


@pytest.fixture(scope="module")
def prepared():
    return prepare("rotate", progress=False)


def test_rp2040_mode_holds_the_whole_finetune_set_in_120_kb(prepared):
    finetune, test = prepared.scenario.finetune, prepared.scenario.test
    epochs = []
    [r] = run_methods(prepared.model_bytes, reference.Config(epochs=2), finetune, test, ["skip2-lora"],
                      "micropython", cache_mode="compact", cache_budget=BOARD_CACHE_BUDGET,
                      on_epoch=lambda *a: epochs.append(a[:3]))
    n = len(finetune[1])
    assert epochs == [("skip2-lora", 1, 2), ("skip2-lora", 2, 2)]
    assert r["cache_mode"] == "compact" and r["cache_hits"] == n and r["cache_spilled_bytes"] == 0
    assert r["cache_bytes"] == n * (64 + 64 + 10 + 3 * 4)  # int8 values + a float scale per vector
    assert 0 < r["peak_heap_bytes"] <= RP2040_HEAP_TARGET
    assert r["phase_seconds"]["frozen_forward"] > 0 and r["macs"]["frozen_forward"] == n * 8832
