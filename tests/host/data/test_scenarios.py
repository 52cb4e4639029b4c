import numpy as np
import pytest

from skip2lora.data.scenarios import DRIFTS, SPLIT_SIZES, load_digits_scenario


@pytest.mark.parametrize("name", sorted(DRIFTS))
def test_splits_are_disjoint_sized_and_deterministic(name):
    s = load_digits_scenario(name)
    parts = {"pretrain": s.pretrain, "source_test": s.source_test, "finetune": s.finetune, "test": s.test}
    for part, (X, y) in parts.items():
        assert X.shape == (SPLIT_SIZES[part], 64) and X.dtype == np.float32
        assert y.shape == (SPLIT_SIZES[part],) and set(np.unique(y)) <= set(range(10))
        assert 0.0 <= X.min() and X.max() <= 1.0
    again = load_digits_scenario(name)
    np.testing.assert_array_equal(s.finetune[0], again.finetune[0])
    # disjoint: no clean pretrain image reappears (drift aside, the clean source split is its own)
    rows = {X.tobytes() for X in s.pretrain[0]}
    assert not any(X.tobytes() in rows for X in s.source_test[0])


@pytest.mark.parametrize("name", sorted(DRIFTS))
def test_drift_changes_only_the_target_domain(name):
    s = load_digits_scenario(name)
    clean = load_digits_scenario(sorted(set(DRIFTS) - {name})[0])
    np.testing.assert_array_equal(s.pretrain[0], clean.pretrain[0])  # source domain is the same
    np.testing.assert_array_equal(s.test[1], clean.test[1])          # same images, same labels
    assert np.abs(s.test[0] - clean.test[0]).mean() > 0.01            # but drifted differently


def test_unknown_scenario_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown scenario 'tilt'"):
        load_digits_scenario("tilt")
