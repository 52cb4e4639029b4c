"""Every scenario the host ships, by name: the digits drifts (embedded) and the cooling-fan ones
(read from FAN_DATA or a folder the user names)."""
from pathlib import Path

from .fan import FAN_SCENARIOS, load_fan_scenario
from .scenarios import DRIFTS, load_digits_scenario

# where the cooling-fan dataset is by default: beside the project, as on this machine and in CI
FAN_DATA = str(Path(__file__).resolve().parents[4] / "shared" / "data" / "cooling-fan")
SCENARIOS = sorted(DRIFTS) + sorted(FAN_SCENARIOS)


def load_scenario(name, data_path=None):
    """A digits scenario (embedded), or a cooling-fan one from `data_path` (default FAN_DATA)."""
    if name in FAN_SCENARIOS:
        return load_fan_scenario(name, data_path or FAN_DATA)
    return load_digits_scenario(name)
