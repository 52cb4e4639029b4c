"""The cooling-fan vibration dataset of the Skip2-LoRA authors' group (Sunaga, Kondo, Matsutani,
"Addressing Gap between Training Data and Deployed Environment by On-Device Learning", IEEE Micro
43(6), 2023), loaded from a path: download it from https://github.com/matutani/cooling-fan and pass
its folder (here: ../shared/data/cooling-fan). Nothing of it is copied into this repository.

Format: one zip per recording, `<size>_<speed>_<type>_<environment>[_run].zip`, holding a folder
of CSV files, one vibration spectrum each (512 rows `index, magnitude`, 1 Hz bins), named by their
time stamp. A recording's spectra come back in time order. Features: log(1 + magnitude), a fixed
function (no statistics fitted) a board can apply to its own sensor, optionally down-sampled from
512 to 256, 128 or 64 bins by averaging adjacent bins, so the first layer fits a board.

Scenarios (the 12 cm fan; "hmlo" recordings sweep the speeds high, mid, low, off):
    fan-env    environment drift. Classes normal / damage1 / damage2. Pretrain on the office room
               silentA (run 1; run 2 is the source test), fine-tune next to a ventilation fan
               (noisy run 1), test on noisy run 2: different recordings.
    fan-room   room drift. Same classes; pretrain silentA (run 1, run 2 source test), fine-tune
               silentB run 1, test silentB run 2.
    fan-speed  speed monitoring moved to a noisy site. Classes high / mid / low / off (2500, 2000,
               1500, 0 rpm), from the constant-speed recordings of the normal fan: pretrain on the
               first half of each silentA recording (the second half is the source test),
               fine-tune on the first half of each noisy recording, test on the second half.
"""
import os
import zipfile

import numpy as np

from .loaders import DataError
from .scenarios import Scenario

N_BINS = 512
BIN_CHOICES = (512, 256, 128, 64)
DEFAULT_BINS = 128
DOWNLOAD = "https://github.com/matutani/cooling-fan"
DAMAGE_CLASSES = ["normal", "damage1", "damage2"]
SPEED_CLASSES = ["h", "m", "l", "o"]


def _spectrum(zip_path, name, data):
    fields = data.replace(b",", b" ").split()
    try:
        values = np.array(fields, dtype=np.float64).reshape(-1, 2)[:, 1]
    except ValueError:
        raise DataError("%s: %s is not rows of `index, magnitude` numbers" % (zip_path, name)) from None
    if len(values) != N_BINS:
        raise DataError("%s: %s has %d rows, expected %d" % (zip_path, name, len(values), N_BINS))
    if not np.isfinite(values).all() or (values < 0).any():
        raise DataError("%s: %s has a negative or non-finite magnitude" % (zip_path, name))
    return values


def read_recording(zip_path, bins=DEFAULT_BINS):
    """float32 [n_spectra, bins] of one recording (zip), in time order: log1p of the magnitudes."""
    if bins not in BIN_CHOICES:
        raise ValueError("bins must be one of %s, got %r" % (BIN_CHOICES, bins))
    if not os.path.isfile(zip_path):
        raise DataError("%s: no such file (the dataset is at %s)" % (zip_path, DOWNLOAD))
    try:
        with zipfile.ZipFile(zip_path) as z:
            names = sorted(n for n in z.namelist() if n.endswith(".csv"))
            spectra = [_spectrum(zip_path, n, z.read(n)) for n in names]
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError("%s: not a readable zip (%s)" % (zip_path, e)) from None
    if not spectra:
        raise DataError("%s: holds no CSV spectra" % zip_path)
    X = np.log1p(np.stack(spectra))
    return X.reshape(len(X), bins, N_BINS // bins).mean(axis=2).astype(np.float32)


def _labelled(path, recordings, bins, part=None):
    """Concatenate [(zip stem, label)], optionally only the first or second half of each."""
    Xs, ys = [], []
    for stem, label in recordings:
        X = read_recording(os.path.join(path, stem + ".zip"), bins)
        if part is not None:
            X = X[:len(X) // 2] if part == 0 else X[len(X) // 2:]
        Xs.append(X)
        ys.append(np.full(len(X), label, np.int64))
    return np.concatenate(Xs), np.concatenate(ys)


def _damage(env, run):
    return [("12cm_hmlo_%s_%s_%d" % (c, env, run), k) for k, c in enumerate(DAMAGE_CLASSES)]


def _speed(env):
    return [("12cm_%s_normal_%s" % (s, env), k) for k, s in enumerate(SPEED_CLASSES)]


FAN_SCENARIOS = {
    "fan-env": ("environment drift: quiet office room A -> next to a ventilation fan",
                lambda p, b: (_labelled(p, _damage("silentA", 1), b), _labelled(p, _damage("silentA", 2), b),
                              _labelled(p, _damage("noisy", 1), b), _labelled(p, _damage("noisy", 2), b)),
                DAMAGE_CLASSES),
    "fan-room": ("room drift: office room A -> office room B",
                 lambda p, b: (_labelled(p, _damage("silentA", 1), b), _labelled(p, _damage("silentA", 2), b),
                               _labelled(p, _damage("silentB", 1), b), _labelled(p, _damage("silentB", 2), b)),
                 DAMAGE_CLASSES),
    "fan-speed": ("speed monitoring moved from a quiet room to a noisy site",
                  lambda p, b: (_labelled(p, _speed("silentA"), b, 0), _labelled(p, _speed("silentA"), b, 1),
                                _labelled(p, _speed("noisy"), b, 0), _labelled(p, _speed("noisy"), b, 1)),
                  ["high", "mid", "low", "off"]),
}


def load_fan_scenario(name, path, bins=DEFAULT_BINS):
    """The fan drift scenario `name` (one of FAN_SCENARIOS) from the dataset folder `path`."""
    if name not in FAN_SCENARIOS:
        raise ValueError("unknown scenario %r (one of %s)" % (name, ", ".join(FAN_SCENARIOS)))
    if not os.path.isdir(path):
        raise DataError("%s: no such folder; download the cooling-fan dataset from %s and pass its "
                        "folder" % (path, DOWNLOAD))
    description, parts, classes = FAN_SCENARIOS[name]
    pretrain, source_test, finetune, test = parts(path, bins)
    return Scenario(name, description, pretrain, source_test, finetune, test, list(classes))
