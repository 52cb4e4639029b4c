"""The cooling-fan loader, on fixture zips in the dataset's own format, and on the real data when
it is there (../shared/data/cooling-fan)."""
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from skip2lora.data.fan import FAN_SCENARIOS, load_fan_scenario, read_recording
from skip2lora.data.loaders import DataError

REAL = Path(__file__).resolve().parents[4] / "shared" / "data" / "cooling-fan"


def spectrum_csv(values):
    return "".join("%d, %.6f\n" % (i, v) for i, v in enumerate(values)).encode()


def write_recording(folder, stem, spectra, stamp0=0):
    with zipfile.ZipFile(folder / (stem + ".zip"), "w") as z:
        z.writestr(stem + "/", b"")
        for k, values in enumerate(spectra):  # written out of time order on purpose
            z.writestr("%s/2022-02-10-05-%02d-%02d.csv" % (stem, 59 - k, 0), spectrum_csv(values))


def fake_dataset(folder, n=6):
    rng = np.random.default_rng(0)
    for c in ("normal", "damage1", "damage2"):
        for env in ("silentA", "silentB", "noisy"):
            for run in (1, 2):
                write_recording(folder, "12cm_hmlo_%s_%s_%d" % (c, env, run), rng.uniform(0, 1, (n, 512)))
    for s in "hmlo":
        for env in ("silentA", "noisy"):
            write_recording(folder, "12cm_%s_normal_%s" % (s, env), rng.uniform(0, 1, (n, 512)))


def test_a_recording_reads_in_time_order_log_scaled_and_downsampled(tmp_path):
    spectra = np.arange(3 * 512, dtype=np.float64).reshape(3, 512) / 100
    write_recording(tmp_path, "r", spectra)
    full = read_recording(str(tmp_path / "r.zip"), bins=512)
    np.testing.assert_allclose(full, np.log1p(spectra[::-1]), rtol=1e-5)  # newest name last
    half = read_recording(str(tmp_path / "r.zip"), bins=128)
    assert half.shape == (3, 128) and half.dtype == np.float32
    np.testing.assert_allclose(half, full.reshape(3, 128, 4).mean(axis=2), rtol=1e-6)
    with pytest.raises(ValueError, match="bins must be one of"):
        read_recording(str(tmp_path / "r.zip"), bins=100)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"not a zip", "not a readable zip"),
    ({}, "holds no CSV spectra"),
    ({"r/a.csv": spectrum_csv(range(10))}, "r/a.csv has 10 rows, expected 512"),
    ({"r/a.csv": b"0, x\n" * 512}, "r/a.csv is not rows of"),
    ({"r/a.csv": spectrum_csv([-1.0] * 512)}, "negative or non-finite"),
])
def test_bad_recordings_name_the_file(tmp_path, content, message):
    path = tmp_path / "r.zip"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        with zipfile.ZipFile(path, "w") as z:
            for name, data in content.items():
                z.writestr(name, data)
    with pytest.raises(DataError, match=message) as err:
        read_recording(str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("name", sorted(FAN_SCENARIOS))
def test_scenarios_split_disjoint_recordings(tmp_path, name):
    fake_dataset(tmp_path)
    s = load_fan_scenario(name, str(tmp_path), bins=64)
    parts = [s.pretrain, s.source_test, s.finetune, s.test]
    rows = [{x.tobytes() for x in X} for X, _ in parts]
    assert all(not (a & b) for i, a in enumerate(rows) for b in rows[i + 1:])
    n_classes = len(s.classes)
    for X, y in parts:
        assert X.shape[1] == 64 and sorted(set(y)) == list(range(n_classes))
    again = load_fan_scenario(name, str(tmp_path), bins=64)
    np.testing.assert_array_equal(again.finetune[0], s.finetune[0])


def test_a_missing_dataset_says_where_to_get_it(tmp_path):
    with pytest.raises(DataError, match="github.com/matutani/cooling-fan"):
        load_fan_scenario("fan-env", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="unknown scenario"):
        load_fan_scenario("fan-tilt", str(tmp_path))


@pytest.mark.skipif(not REAL.is_dir(), reason="the cooling-fan dataset is not at ../shared/data")
def test_the_real_environment_drift_scenario():
    s = load_fan_scenario("fan-env", str(REAL))
    assert [len(p[1]) for p in (s.pretrain, s.source_test, s.finetune, s.test)] == [705] * 4
    assert s.finetune[0].shape == (705, 128) and s.classes == ["normal", "damage1", "damage2"]
