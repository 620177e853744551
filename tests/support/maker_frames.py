"""A synthetic maker for the setting-conditioned scorer's tests: production is a known linear
function of the set points (plus a per-part offset and small noise), so what a setting alone may
do and what a defect is are both known exactly. Canonical frames, built directly (no simulator)."""
from __future__ import annotations

import numpy as np
import pandas as pd

SETTINGS = ("speed", "temp")
FEATURES = ("fill", "pressure", "cushion")
SPEEDS = (60.0, 70.0, 80.0, 90.0, 100.0)
TEMPS = (200.0, 215.0, 230.0, 245.0)
FACILITY_OFFSET = {"F1": 0.0, "F2": 6.0, "F3": 3.0}
ITEM_OFFSET = {"A": 0.0, "B": -4.0, "C": 2.0}
NOISE = np.array([0.6, 2.0, 0.03])  # sd per production field


def expected(speed: np.ndarray, temp: np.ndarray, facility: np.ndarray, item: np.ndarray) -> np.ndarray:
    """(rows, fields): the production every setting and part gives without noise."""
    offset = np.array([FACILITY_OFFSET[f] + ITEM_OFFSET[i] for f, i in zip(facility, item)])
    fill = 2.0 * speed + 0.5 * temp + offset
    pressure = 1500.0 - 3.0 * speed + 2.0 * temp + 5.0 * offset
    cushion = 8.0 + 0.02 * speed - 0.01 * temp + 0.05 * offset
    return np.column_stack([fill, pressure, cushion])


def maker_frame(seed: int = 0, days: int = 8, rows_per_day: int = 60,
                parts: tuple[tuple[str, str], ...] = (("F1", "A"), ("F1", "B"), ("F2", "A"), ("F2", "B")),
                maker: str = "M", noise_scale: float = 1.0) -> pd.DataFrame:
    """Canonical records: each part runs two set points a day (of SPEEDS x TEMPS), rows_per_day shots,
    with noise ``noise_scale x NOISE`` (1: about 0.1 to 0.4 % of each field's value)."""
    rng = np.random.default_rng(seed)
    frames = []
    for day in range(days):
        lot_date = f"2026-01-{day + 1:02d}"
        for facility, item in parts:
            for half in range(2):
                n = rows_per_day // 2
                speed = np.full(n, rng.choice(SPEEDS))
                temp = np.full(n, rng.choice(TEMPS))
                f, i = np.full(n, facility, dtype=object), np.full(n, item, dtype=object)
                production = expected(speed, temp, f, i) + rng.normal(size=(n, len(FEATURES))) * NOISE * noise_scale
                start = pd.Timestamp(lot_date) + pd.Timedelta(hours=12 * half)
                frames.append(pd.DataFrame({
                    "record_id": [f"{facility}-{item}-{day}-{half}-{k}" for k in range(n)],
                    "timestamp": start + pd.to_timedelta(np.arange(n), unit="min"),
                    "maker": maker, "facility": f, "item": i, "lot_date": lot_date,
                    "speed": speed, "temp": temp,
                    **{name: production[:, j] for j, name in enumerate(FEATURES)},
                }))
    return pd.concat(frames, ignore_index=True)
