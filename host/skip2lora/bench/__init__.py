"""Measurements: method comparisons, the board and guard benches, the fleet, the soak, reports."""
