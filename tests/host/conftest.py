"""Host tests export models (the `run` and `demo` commands export a missing one): their lr probe
cross-validates with 2 folds and one seed instead of 5 and 3, an eighth of its time. The full probe
is measured by `make bench-lr`; tests/host/train/test_export.py checks the probe's rules."""
import pytest

from skip2lora.train import lrprobe


@pytest.fixture(autouse=True)
def short_lr_probe(monkeypatch):
    monkeypatch.setitem(lrprobe.LR_PROBE, "folds", 2)
    monkeypatch.setitem(lrprobe.LR_PROBE, "seeds", (1,))
