"""The plant that changes: a mold swap, an ageing heater, a recalibrated sensor, a new part.

Applied to any plant's canonical records from a given time on (the project's simulator, another
generator, a real export), so drift detection is measured on every plant of the proving ground,
not only on plants this module's author imagined. Sizes are in units of the part's own history:
``shift = size x the field's standard deviation over the part's history shots``. Pure: frames in,
frames out; the change is described by a :class:`PlantChange` that a report can print.

What each change does to the readings (the per-shot truth is left alone: a recalibrated sensor
makes no part worse, and whether a swapped mold or an aged heater makes bad parts is for the
plant's lots to say, not for this layer to guess):

- ``sensor_recalibration``: one production field reads ``+-1 sd x size`` from ``start`` on, at once;
- ``heater_ageing``: every production temperature field (name containing "temp"; else the first
  production field) creeps up linearly to ``+2 sd x size`` over ``ramp_days``;
- ``mold_swap``: three production fields (of the part's maker) jump by ``+-1.5 sd x size`` at once:
  the new mold's fill, pressure and cycle fingerprint;
- ``new_part``: from ``start`` the part's records carry a new item id (a part never trained).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from model_store.schema import PlantSchema

CHANGES: tuple[str, ...] = ("sensor_recalibration", "heater_ageing", "mold_swap", "new_part")


@dataclass(frozen=True)
class PlantChange:
    kind: str
    facility: str
    item: str
    start: pd.Timestamp
    fields: tuple[str, ...] = ()
    shifts: tuple[float, ...] = ()  # in field units (the full shift, for an ageing reached after ramp_days)
    ramp_days: float = 0.0
    new_item: str | None = None

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "facility": self.facility, "item": self.item, "start": self.start.isoformat(),
                "fields": list(self.fields), "shifts": [round(s, 6) for s in self.shifts], "ramp_days": self.ramp_days,
                "new_item": self.new_item}


def plan_change(kind: str, history: pd.DataFrame, schema: PlantSchema, facility: str, item: str, start: pd.Timestamp,
                rng: np.random.Generator, size: float = 1.0, ramp_days: float = 3.0) -> PlantChange:
    """A change of ``kind`` to part (facility, item) from ``start``, sized on the part's history."""
    if kind not in CHANGES:
        raise ValueError(f"unknown plant change {kind!r}; expected one of {', '.join(CHANGES)}")
    if kind == "new_part":
        return PlantChange(kind, facility, item, start, new_item=f"{item}-NEW")
    part = history[(history["facility"] == facility) & (history["item"] == item)]
    if part.empty:
        raise ValueError(f"part {facility}/{item} has no history to size a {kind} on")
    maker = str(part["maker"].mode().iloc[0])
    production = [f for f in schema.makers[maker].production if f in part.columns and part[f].notna().sum() > 1]
    if not production:
        raise ValueError(f"part {facility}/{item} has no measured production field")
    sd = {f: float(part[f].std()) for f in production}
    if kind == "sensor_recalibration":
        field = production[int(rng.integers(len(production)))]
        return PlantChange(kind, facility, item, start, (field,), (float(rng.choice([-1.0, 1.0])) * sd[field] * size,))
    if kind == "heater_ageing":
        fields = tuple(f for f in production if "temp" in f.lower()) or (production[0],)
        return PlantChange(kind, facility, item, start, fields, tuple(2.0 * sd[f] * size for f in fields), ramp_days)
    chosen = tuple(str(f) for f in rng.choice(production, size=min(3, len(production)), replace=False))
    return PlantChange(kind, facility, item, start, chosen,
                       tuple(float(rng.choice([-1.0, 1.0])) * 1.5 * sd[f] * size for f in chosen))


def apply_change(records: pd.DataFrame, change: PlantChange) -> tuple[pd.DataFrame, np.ndarray]:
    """The records with the change applied, and which rows it touched (the part's, from ``start``)."""
    out = records.copy()
    when = pd.to_datetime(out["timestamp"])
    start = change.start.tz_convert(when.dt.tz) if when.dt.tz is not None and change.start.tzinfo else change.start
    touched = ((out["facility"] == change.facility) & (out["item"] == change.item) & (when >= start)).to_numpy()
    if change.kind == "new_part":
        out.loc[touched, "item"] = change.new_item
        return out, touched
    if change.ramp_days > 0:
        elapsed = ((when[touched] - start) / pd.Timedelta(days=1)).to_numpy(dtype=float)
        weight = np.clip(elapsed / change.ramp_days, 0.0, 1.0)
    else:
        weight = np.ones(int(touched.sum()))
    for field, shift in zip(change.fields, change.shifts):
        out.loc[touched, field] = out.loc[touched, field].to_numpy(dtype=float) + weight * shift
    return out, touched


__all__ = ["CHANGES", "PlantChange", "plan_change", "apply_change"]
