"""Defect mechanisms: how likely each is under a setting, and what it leaves in the process data.

Two halves, both tied to the physics in :mod:`physics`:

* :func:`setting_hazards` judges a setting by its *steady* process state (melt temperature, the
  speed the screw really reaches, holding pressure and time versus the part's needs, cooling time,
  cushion, clamp margin...). Each step outside the part's window raises the log-hazard of the
  mechanism it drives, so poor settings truly produce more defects of a matching kind.
* :func:`signature` turns a shot's cause and severity into physical disturbances (a cold slug, a
  starved feed, a leaking check ring...). :func:`physics.process` then propagates them, so every
  defect leaves a correlated multivariate trace *relative to its own setting*, of a size that is
  usually inside the spread between settings.

Some defects (contamination: black specks, splay from wet material) leave no trace at all, as in
real plants; a sensor spike is a data glitch on a good part (defect 0), a classic false alarm.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from model_store.simulate.makers import SP
from model_store.simulate.physics import Disturbance

# Causes a shot can have; the index is what the per-shot arrays hold.
SHORT_SHOT, FLASH, SINK_MARK, GAS_BURN, CONTAMINATION, HEATER_DRIFT = range(6)
CAUSES: tuple[str, ...] = ("short_shot", "flash", "sink_mark", "gas_burn", "contamination", "heater_drift")
NONE = len(CAUSES)  # index of "no defect"
NONE_LABEL = "none"
SENSOR_SPIKE_LABEL = "sensor_spike"
SETTING_MECHANISMS: tuple[str, ...] = CAUSES[:5]  # the ones a setting itself makes more or less likely

# Per-shot hazard of each mechanism for a setting right inside its part's window (before the
# part's difficulty factor): together ~0.5 %, so good settings land around 0.2-0.8 %.
BASE_HAZARD = np.array([0.0014, 0.0010, 0.0013, 0.0008, 0.0007])
# exp(4.3) ≈ 74: no single mechanism exceeds ~74× its base, i.e. ~8-10 % per shot.
MAX_LOG_HAZARD = 4.3
MAX_MECHANISM_HAZARD = 0.10


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def setting_hazards(sp: np.ndarray, steady: Mapping[str, np.ndarray], part: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per-shot probability of each setting-driven mechanism, shape (n, 5), from the steady state.

    The divisors are the deviations at which a mechanism's hazard grows e-fold; they are the
    process windows a setter would quote (± a few °C of melt, ±15-20 % speed, 5 % holding pressure).
    """
    melt, mold = steady["a_melt"], steady["a_mold"]
    cold = _relu(part["melt_ideal"] - 6.0 - melt) / 4.0
    hot = _relu(melt - part["melt_ideal"] - 6.0) / 4.0
    slow = _relu(0.85 - steady["speed_ratio"]) / 0.07  # includes speed lost to the pressure limit
    fast = _relu(steady["speed_ratio"] - 1.20) / 0.10
    cold_mold = _relu(part["mold_ideal"] - 7.0 - mold) / 4.0
    hot_mold = _relu(mold - part["mold_ideal"] - 7.0) / 4.0
    hold_ratio = sp[:, SP["p_hold"]] / part["p_need"]
    low_hold = _relu(0.92 - hold_ratio) / 0.05
    high_hold = _relu(hold_ratio - 1.25) / 0.06
    short_hold = _relu(0.92 - sp[:, SP["t_hold"]] / part["t_freeze"]) / 0.07
    short_cool = _relu(0.92 - sp[:, SP["t_cool"]] / part["t_cool_need"]) / 0.06
    small_cushion = _relu(0.35 - steady["a_cushion"] / part["c0"]) / 0.08
    # Cavity pressure × projected area against the clamp: past ~85 % the parting line opens.
    cavity_force = part["area"] * (0.2 * steady["a_p_peak"] + 0.3 * steady["a_p_hold"]) * 0.0102
    clamp = _relu(cavity_force / sp[:, SP["f_clamp"]] - 0.85) / 0.05
    low_back = _relu(3.5 - sp[:, SP["p_back"]]) / 0.6  # too little back pressure traps air

    log_h = np.column_stack(
        [
            cold + slow + 0.8 * cold_mold + 0.9 * small_cushion,
            hot + 0.8 * high_hold + 0.8 * clamp + 0.3 * hot_mold,
            low_hold + 0.8 * short_hold + 0.9 * short_cool + 0.8 * hot_mold + 0.7 * small_cushion,
            fast + 0.3 * hot + 0.8 * low_back,
            np.zeros(len(sp)),  # contamination does not care about set points
        ]
    )
    hazard = BASE_HAZARD * part["difficulty"][:, None] * np.exp(np.minimum(log_h, MAX_LOG_HAZARD))
    # Even on a hard mold a recipe that scraps more than one part in ten would not stay in use.
    return np.minimum(hazard, MAX_MECHANISM_HAZARD)


def draw_causes(
    hazards: np.ndarray,
    melt_dev: np.ndarray,
    mold_dev: np.ndarray,
    heater_deficit: np.ndarray,
    boost: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw each shot's cause (index into CAUSES, or NONE) from its setting's hazards and its state.

    ``melt_dev`` / ``mold_dev``: °C the shot's melt / mold sit away from the setting's steady state
    (barrel still settling after a change, cold mold after start-up): start-up scrap is real.
    ``heater_deficit``: °C a failing heater zone has fallen below its set point.
    """
    p = hazards.copy()
    # Transients raise the hazard at most ~12-fold for the first shots after a start or change.
    p[:, SHORT_SHOT] *= np.exp(np.minimum(_relu(-melt_dev) / 5.0 + _relu(-mold_dev) / 8.0, 2.5))
    p[:, FLASH] *= np.exp(np.minimum(_relu(melt_dev) / 5.0, 2.5))
    heater = np.minimum(0.002 * np.expm1(heater_deficit / 4.0), 0.2)
    p = np.column_stack([p, heater]) * boost
    # Keep the total below 1 even under a large boost (the shares between causes are preserved).
    total = p.sum(axis=1, keepdims=True)
    p = np.where(total > 0.6, p * (0.6 / np.maximum(total, 1e-12)), p)
    u = rng.random(len(p))
    return (u[:, None] >= np.cumsum(p, axis=1)).sum(axis=1).astype(np.int8)


def near_misses(cause: np.ndarray, hazards: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Good shots with a mild excursion of a visible mechanism (the process wobbles without scrap).

    Returns the mechanism index per shot (NONE where none). More frequent on unstable settings, so
    the boundary between a good and a bad shot is fuzzy, as it is on a real line.
    """
    visible = hazards[:, :4]
    rate = 0.012 + 0.3 * visible.sum(axis=1)
    hit = (cause == NONE) & (rng.random(len(cause)) < rate)
    out = np.full(len(cause), NONE, dtype=np.int8)
    idx = np.flatnonzero(hit)
    if len(idx):
        share = visible[idx] / visible[idx].sum(axis=1, keepdims=True)
        out[idx] = (rng.random(len(idx))[:, None] >= np.cumsum(share, axis=1)).sum(axis=1).clip(0, 3)
    return out


def signature(mechanism: np.ndarray, severity: np.ndarray, c0: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Disturbances (fields of :class:`physics.Disturbance`) that each mechanism leaves on a shot.

    ``severity`` ~1 for a defect, ~0.3 for a near miss; ``c0`` the part's cushion target (mm).
    """
    n = len(mechanism)
    s = severity
    out = {k: np.zeros(n) for k in ("melt", "mold", "speed", "pressure", "hold", "dose", "cushion", "plast", "clamp")}

    # Sizes are a few shot-to-shot standard deviations at severity 1: plain against the shot's own
    # setting, yet well inside the spread between settings (and lost in noise at low severity).
    m = mechanism == SHORT_SHOT  # starved feed + cold slug: slower, longer fill, cushion gone, lower peak
    out["melt"][m] -= 2.0 * s[m]
    out["speed"][m] -= 0.05 * s[m]
    out["dose"][m] -= c0[m] * rng.uniform(0.1, 0.3, m.sum()) * s[m]
    out["plast"][m] += 0.06 * s[m]
    out["pressure"][m] -= 0.03 * s[m]

    m = mechanism == FLASH  # melt escapes at the parting line: pressure spike, cushion drop, mold breathes
    out["melt"][m] += 1.5 * s[m]
    out["pressure"][m] += 0.035 * s[m]
    out["cushion"][m] -= 0.08 * c0[m] * s[m]
    out["clamp"][m] += 0.01 * s[m]

    m = mechanism == SINK_MARK  # leaking check ring: holding pressure sags, screw creeps forward, hot spot
    out["hold"][m] -= 0.035 * s[m]
    out["cushion"][m] -= 0.1 * c0[m] * s[m]
    out["mold"][m] += 1.2 * s[m]

    m = mechanism == GAS_BURN  # diesel effect: too fast for the vents, shear heats, pressure spikes
    out["speed"][m] += 0.06 * s[m]
    out["pressure"][m] += 0.025 * s[m]
    out["melt"][m] += 1.5 * s[m]

    m = mechanism == HEATER_DRIFT  # on top of the drifting zone: the coldest shots fill slowly
    out["melt"][m] -= 1.0 * s[m]
    out["speed"][m] -= 0.03 * s[m]
    return out


def apply_signature(d: Disturbance, sig: Mapping[str, np.ndarray]) -> Disturbance:
    """Add a signature's disturbances onto the shot's slow-drift disturbances."""
    for key, value in sig.items():
        setattr(d, key, getattr(d, key) + value)
    return d
