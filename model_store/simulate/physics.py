"""Process physics: what the machine measures on a shot, given its set points.

One vectorised function, :func:`process`, maps set points (one row per shot), the part/machine
constants and per-shot disturbances to the measured values. It is deliberately a chain of
physically motivated steps so that the measured values are *correlated the way a real process is*:

  zone temps ─► melt temp ─► viscosity ─► required pressure ─┬► peak / switch-over pressure
  screw rpm, back pressure ─► shear heating ─┘                └► pressure limit caps speed ─► fill time
  dose, holding pressure/time, melt density ─► cushion
  dose, rpm, back pressure, viscosity ─► plasticizing time
  dry cycle + fill + hold + max(cooling, plasticizing) ─► cycle time ─► mold heat-up

Called without an ``rng`` it returns the noise-free steady state of a setting, which the plant
definition uses to judge how far a setting sits from its part's ideal process window.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from model_store.simulate.makers import SP

# Share of each front zone in the melt that reaches the nozzle: the front of the barrel dominates.
ZONE_WEIGHTS = np.array([0.45, 0.35, 0.20])
# Shear-thinning exponent of polymer melts: pressure grows with flow rate ** n, n well below 1.
FLOW_EXPONENT = 0.55
# Switch-over happens at ~96 % volumetric fill; the rest is packed by the holding phase.
FILL_SHARE = 0.96
# Packing adds this share of the part stroke at the part's needed holding pressure (compressibility
# plus shrinkage compensation): more holding pressure pushes the screw further, lowering the cushion.
PACK_SHARE = 0.05


def shear_heating(n_screw: np.ndarray, p_back: np.ndarray) -> np.ndarray:
    """Degrees the screw adds on top of the heater bands: faster screw and more back pressure shear more."""
    return 0.02 * n_screw + 0.3 * p_back


@dataclass
class Disturbance:
    """Per-shot deviations from the steady process (scalars broadcast; defaults = no disturbance)."""

    zone: np.ndarray | float = 0.0  # (n, 3): zone actual minus set, °C (transients, failing heater)
    melt: np.ndarray | float = 0.0  # °C on the melt (cold slug, shear burst, slow drift)
    mold: np.ndarray | float = 0.0  # °C on the mold (warm-up, chiller cycling, hot spot)
    viscosity: np.ndarray | float = 1.0  # material lot and moisture factor
    oil: np.ndarray | float = 45.0  # hydraulic oil temperature, °C (warm oil responds faster)
    speed: np.ndarray | float = 0.0  # relative change of the speed the screw reaches
    pressure: np.ndarray | float = 0.0  # relative pressure spike (flash, trapped gas)
    hold: np.ndarray | float = 0.0  # relative loss of holding pressure (leaking check ring)
    dose: np.ndarray | float = 0.0  # mm of melt missing from the dose (feed starvation)
    cushion: np.ndarray | float = 0.0  # mm of cushion lost after filling (melt escaping/leaking)
    plast: np.ndarray | float = 0.0  # relative plasticizing-time change (bridging in the hopper)
    clamp: np.ndarray | float = 0.0  # relative clamp-force deflection (mold breathing)


def process(
    sp: np.ndarray,
    part: Mapping[str, np.ndarray],
    d: Disturbance | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Measured values of ``len(sp)`` shots. ``part`` holds per-row constants of the part on its machine.

    Keys of ``part``: s_part (mm stroke of one part), v_nom (mm/s at which the part fills at its
    nominal pressure), p_target (MPa needed at nominal speed and melt), p_need (MPa holding the part
    needs), t_freeze (s until the gate freezes), melt_ideal, mold_ideal (°C), temp_sensitivity
    (1/°C), screw_d (mm), dry_cycle (s), melt_offset (°C this barrel runs hot/cold), heat_gain.
    """
    d = d or Disturbance()
    n = len(sp)

    def noise(scale: float, shape: tuple[int, ...] | None = None) -> np.ndarray | float:
        if rng is None:
            return 0.0
        return rng.standard_normal(shape or n) * scale

    col = lambda name: sp[:, SP[name]]

    zones = sp[:, [SP["t_zone1"], SP["t_zone2"], SP["t_zone3"]]] + d.zone + noise(0.35, (n, 3))
    n_screw = col("n_screw") * (1 - 0.002 * (col("p_back") - 8)) * (1 + noise(0.008))
    p_back = col("p_back") + noise(0.12)
    melt = zones @ ZONE_WEIGHTS + shear_heating(n_screw, p_back) + part["melt_offset"] + d.melt + noise(0.5)

    # The mold runs above its coolant set point by the heat the melt brings in each cycle.
    cycle_guess = part["dry_cycle"] + col("t_hold") + col("t_cool") + 1.0
    mold = col("t_mold") + part["heat_gain"] * (melt - col("t_mold")) * np.sqrt(30.0 / cycle_guess) + d.mold + noise(0.25)

    # Relative viscosity: falls exponentially with melt temperature; a cold mold thickens the skin.
    visc = np.exp(-part["temp_sensitivity"] * (melt - part["melt_ideal"])) * d.viscosity
    visc = visc * (1 - 0.004 * (mold - part["mold_ideal"]))

    # The screw is commanded to v_inj; the pressure needed to get there follows the flow law, and
    # when it would exceed the limit the machine holds the limit and the screw slows down instead.
    # The speed reached wanders shot to shot (valve response, oil temperature); fill time, speed
    # and pressure all follow it, so they co-vary the way a real shot log does.
    v_cmd = col("v_inj") * (1 + d.speed) * (1 + 0.002 * (d.oil - 45.0)) * (1 + noise(0.01))
    p_req = part["p_target"] * visc * (v_cmd / part["v_nom"]) ** FLOW_EXPONENT
    limit = col("p_limit")
    v_act = v_cmd * np.minimum(1.0, limit / p_req) ** (1 / FLOW_EXPONENT)
    p_peak = np.minimum(p_req, limit * 1.01) * (1 + d.pressure) * (1 + noise(0.012))
    p_vp = p_peak * (0.93 + noise(0.008))
    v_max = v_act * (1 + noise(0.003))
    t_fill = (FILL_SHARE * part["s_part"] / v_act + 0.03) * (1 + noise(0.005))

    p_hold = col("p_hold") * (1 + d.hold) * (1 + noise(0.01))
    hold_share = np.sqrt(np.minimum(1.0, col("t_hold") / part["t_freeze"]))
    pack = part["s_part"] * PACK_SHARE * (p_hold / part["p_need"]) * hold_share
    # Hotter melt is less dense: the same part needs a little more stroke.
    density = 1 + 0.0007 * (melt - part["melt_ideal"])
    cushion = col("s_dose") - part["s_part"] * density - pack + d.dose + d.cushion + noise(0.15)
    cushion = np.maximum(cushion, 0.0)

    # Screw retraction rate while dosing: rpm × effective pitch; back pressure slows the retraction.
    # A starved feed still retracts to the set shot size (with voids), so it shows as a longer
    # plasticizing time (d.plast) and a short dose (d.dose), not a shorter stroke.
    feed = n_screw / 60.0 * 0.28 * part["screw_d"] * (1 - 0.015 * p_back)
    t_plast = col("s_dose") / feed * visc**0.15 * (1 + d.plast) * (1 + noise(0.015))
    # Plasticizing runs during cooling; only when it takes longer does it stretch the cycle.
    t_cycle = part["dry_cycle"] + t_fill + col("t_hold") + np.maximum(col("t_cool"), t_plast + 0.4) + 0.3 + noise(0.04)

    f_clamp = col("f_clamp") * (1 + 0.02 * (p_peak / part["p_target"] - 1) + d.clamp) * (1 + noise(0.003))
    oil = d.oil + noise(0.15)
    return {
        "a_zone1": zones[:, 0],
        "a_zone2": zones[:, 1],
        "a_zone3": zones[:, 2],
        "a_melt": melt,
        "a_mold": mold,
        "a_p_peak": p_peak,
        "a_p_vp": p_vp,
        "a_p_hold": p_hold,
        "a_v_max": v_max,
        "a_t_fill": t_fill,
        "a_t_plast": t_plast,
        "a_t_cycle": t_cycle,
        "a_cushion": cushion,
        "a_f_clamp": f_clamp,
        "a_n_screw": n_screw,
        "a_p_back": p_back,
        "a_oil": np.broadcast_to(oil, (n,)).astype(float),
        # Internal (not exported): used to judge a setting against its part's window.
        "speed_ratio": v_act / part["v_nom"],
        "pressure_use": p_req / limit,
    }
