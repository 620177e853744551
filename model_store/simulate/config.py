"""Knobs of the plant simulator.

One frozen dataclass so that a run is fully described (and reproducible) by its config: the same
config always yields the same plant, byte for byte.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from model_store.errors import MoldwatchError


class SimulationConfigError(MoldwatchError, ValueError):
    """A simulation knob is out of range (one-line reason, like every MoldwatchError)."""


@dataclass(frozen=True)
class SimulationConfig:
    seed: int = 0
    days: int = 30
    facilities: int = 24  # machines, "F01".."F24"; each belongs to one of the three makers
    items: int = 48  # molded parts, "ITM-001".."ITM-048"
    shots: int = 500_000  # approximate total over all days (capped by machine capacity)
    start: str = "2026-01-05"  # first production day (a Monday: Sundays run short-staffed)
    missing_rate: float = 0.01  # share of numeric field values blanked (NaN)
    missing_item_rate: float = 0.002  # share of records whose item is blank
    sensor_spike_rate: float = 0.0005  # share of shots with one transient measurement glitch
    heater_drifts_per_100k: float = 5.0  # degrading-heater episodes per 100k shots
    defect_scale: float = 1.0  # multiplies every defect hazard (1.0 = the calibrated plant)
    sunday_run_share: float = 0.35  # chance that a machine runs on a Sunday
    extra_settings: int = 0  # settings per (facility, item) beyond the usual 2-5 (a plant that re-tunes more)

    def __post_init__(self) -> None:
        if self.days < 1:
            raise SimulationConfigError(f"days must be at least 1, got {self.days}")
        if self.facilities < 3:
            raise SimulationConfigError(f"facilities must be at least 3 (one per maker), got {self.facilities}")
        if self.facilities > 999 or self.items > 999:
            raise SimulationConfigError("at most 999 facilities and 999 items (their ids have three digits)")
        if self.items < 1:
            raise SimulationConfigError(f"items must be at least 1, got {self.items}")
        if self.shots < 1000:
            raise SimulationConfigError(f"shots must be at least 1000, got {self.shots}")
        for name in ("missing_rate", "missing_item_rate", "sensor_spike_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 0.5:
                raise SimulationConfigError(f"{name} must be in [0, 0.5), got {value}")
        if self.defect_scale < 0 or self.heater_drifts_per_100k < 0:
            raise SimulationConfigError("defect_scale and heater_drifts_per_100k must not be negative")
        if not 0 <= self.extra_settings <= 10:
            raise SimulationConfigError(f"extra_settings must be in [0, 10], got {self.extra_settings}")
        if not 0.0 <= self.sunday_run_share <= 1.0:
            raise SimulationConfigError(f"sunday_run_share must be in [0, 1], got {self.sunday_run_share}")
        try:
            date.fromisoformat(self.start)
        except (TypeError, ValueError):
            raise SimulationConfigError(f"start must be a date like 2026-01-05, got {self.start!r}") from None
