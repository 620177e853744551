"""forge: a second, independent injection-molding plant simulator.

Written from a description of the process only (not from moldwatch's own simulator), so that
detectors are proven on a plant whose physics, defect mix and data habits they were not tuned on.

Plant
    6-20 machines of 2-3 makers. Each machine runs a few parts (molds) in campaigns; a part change
    costs a changeover stop, a recipe switch without a mold change a short stop. After any long stop
    the mold warms up over some shots and the first shots are often scrap. The same part may run on
    several machines (of one size class, any maker).

Set points
    Every part has a few recipe variants (standard plus e.g. hot/fast, cold/lean, short hold, high
    pack, eco clamp, cool mold, split mold temperatures, gentle). Within a run operators nudge set
    points in small steps (undone when the recipe is reloaded); mold temperature and hold pressure
    also wander continuously (temperature-unit hunting; VALDOR machines run an adaptive hold
    pressure that follows the melt viscosity shot by shot).

Physics (per shot, vectorised)
    melt temperature = weighted barrel zones + shear heat (screw speed, back pressure) + machine bias;
    viscosity ~ resin-lot MFI * moisture * exp(-k (T_melt - T_ref));
    required injection pressure ~ part difficulty * viscosity * (Q/Q0)^n * exp(-c (T_mold - T_ref));
    peak pressure = min(required, limit): a pressure-limited shot fills slowly;
    fill time = injected stroke / speed; cushion = dose - fill (melt compressibility) - pack volume
    (hold pressure, hold time vs gate freeze) - check-ring backflow (wear, low viscosity);
    plasticizing time from screw rpm, back pressure, viscosity; cycle = dry cycle + fill + hold +
    max(cooling, plasticizing) + ejection; mold surface = set + heat load + ambient (day/night) +
    warm-up deficit + fouled cooling on the moving half; clamp force grows with mold temperature.

Slow states
    resin lots per material (MFI, moisture, dirt), ambient temperature, heater band failures (a zone's
    actual temperature sags while its set point stays), check-ring wear (cushion drifts down and
    scatters), vent clogging within a run, cooling-channel fouling, parting-line wear.

Defects (probability from the current margins, scaled once to the plant's target share)
    short shot (pressure at its limit, slow fill), starved short (cushion near 0), flash (cavity
    force near the clamp force), sink marks (hold shorter than gate freeze, little hold pressure or
    cushion), burn marks (fast fill, hot melt, clogged vents), warpage (mold halves unequal, short
    cooling), splay (moist hygroscopic resin), cold slug (cold melt, mostly a failing heater),
    warm-up scrap; plus invisible ones (contamination, handling damage). A defective shot carries its
    mechanism's footprint: gross for short shots, subtle (1-2 fields, about a noise width) for flash,
    sinks, burns, splay, warpage; none for the invisible ones.

Data habits
    each maker's own field names and units (bar / MPa / kgf/cm2, s / ms, stroke / volume, rpm /
    m/min, speed in mm/s or %), sensor dropouts over stretches of shots, scattered empty cells,
    spikes on good shots, clock-ordered timestamps per machine, lots per production day (a night
    shift after midnight belongs to the day it started) or per two days.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from bench.plants import ProvingPlant
from model_store.schema import PlantSchema, parse_schema

Arrays = dict[str, np.ndarray]

BAR_PER_MPA = 10.0
BAR_PER_KGF = 0.980665  # 1 kgf/cm2 in bar
DAY_S = 86_400.0


# -- knobs ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Knobs:
    """How a forge plant differs from another (everything but seed, shots and days)."""

    machines: int = 12
    makers: tuple[str, ...] = ("HALDEN", "VALDOR", "KAZUMI")
    parts_per_machine: tuple[int, int] = (2, 5)
    recipes_per_part: tuple[int, int] = (2, 4)
    campaign_shots: float = 700.0  # mean shots between mold changes
    defect_share: float = 0.015  # target share of defective shots
    invisible_share: float = 0.06  # share of defects that leave no trace in the recorded fields
    drift: float = 1.0  # strength of wander, nudges, wear, heater failures, wet resin lots
    lot_days: int = 1  # 1: a lot per production day, 2: per two days
    day_start_hour: float = 6.0  # start of the production day (shift start)
    sunday_off: bool = True
    glitch_rate: float = 0.001  # share of good shots with one spiked sensor value
    dropout_events: int = 6  # stretches where one sensor records nothing
    nan_cell_rate: float = 0.0002  # scattered empty production cells
    naming: str = "en"  # identity column names: "en", "de" or "jp"
    timestamp_text: bool = False  # ISO text instead of datetime64
    start_date: str = "2025-03-03"


def _knobs(raw: dict[str, Any]) -> Knobs:
    known = {f.name for f in fields(Knobs)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise TypeError(f"forge_plant: unknown knob(s) {unknown}; known: {sorted(known)}")
    knobs = Knobs(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    if not knobs.makers or not set(knobs.makers) <= set(MAKERS):
        raise ValueError(f"forge_plant: makers must be a subset of {sorted(MAKERS)}, got {knobs.makers}")
    if knobs.machines < len(knobs.makers):
        raise ValueError("forge_plant: need at least one machine per maker")
    if knobs.lot_days not in (1, 2) or knobs.naming not in NAMING:
        raise ValueError("forge_plant: lot_days must be 1 or 2 and naming one of " + ", ".join(NAMING))
    if not 0 < knobs.defect_share < 0.3:
        raise ValueError("forge_plant: defect_share must lie in (0, 0.3)")
    return knobs


def _rng(seed: int, stream: str) -> np.random.Generator:
    """One independent random stream per concern, so that changing one concern's draws leaves the
    others as they were (a plant stays recognisable when a knob changes)."""
    return np.random.default_rng([seed, zlib.crc32(stream.encode())])


def _sig(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


# -- materials, recipe styles ---------------------------------------------------------------------
@dataclass(frozen=True)
class Material:
    name: str
    melt_c: float  # recommended melt temperature
    mold_c: float  # recommended mold temperature
    k_visc: float  # 1/degC: slope of ln(viscosity) over melt temperature
    hygro: float  # 0..1: moisture sensitivity (splay, hydrolysis lowers viscosity)
    pack: float  # packing volume over part volume (shrinkage made up during hold)
    cool: float  # cooling time per mm^2 of wall (s)
    min_melt_c: float  # below this unmelted pellets and cold slugs appear


MATERIALS: tuple[Material, ...] = (
    Material("PP", 230, 40, 0.011, 0.0, 0.09, 2.6, 206),
    Material("ABS", 240, 60, 0.018, 0.5, 0.05, 2.2, 221),
    Material("PA66", 285, 80, 0.016, 1.0, 0.08, 1.9, 268),
    Material("PC", 300, 90, 0.020, 0.8, 0.05, 2.4, 281),
    Material("POM", 205, 90, 0.013, 0.1, 0.10, 2.3, 189),
    Material("PBT", 255, 70, 0.015, 0.7, 0.07, 2.0, 237),
)


@dataclass(frozen=True)
class Style:
    """A recipe variant's deviation from the part's standard recipe."""

    melt_dc: float = 0.0
    mold_dc: float = 0.0
    split_dc: float = 0.0  # moving half set hotter than the fixed half
    flow_x: float = 1.0
    hold_x: float = 1.0
    hold_time_x: float = 1.0
    cool_x: float = 1.0
    headroom: float = 1.35  # pressure limit over the standard recipe's expected pressure
    clamp_margin: float = 1.5  # clamp force over the expected cavity force
    weight: float = 1.0  # how often planners pick it


STYLES: dict[str, Style] = {
    "standard": Style(weight=2.5),
    "hot_fast": Style(melt_dc=12, flow_x=1.3, cool_x=0.88),
    "cold_lean": Style(melt_dc=-9, headroom=1.26),
    "short_hold": Style(hold_x=0.85, hold_time_x=0.72),
    "high_pack": Style(hold_x=1.22, clamp_margin=1.2),
    "eco_clamp": Style(clamp_margin=1.17),
    "cool_mold": Style(mold_dc=-14, cool_x=0.85, headroom=1.3),
    "split_mold": Style(split_dc=9.0),
    "gentle": Style(melt_dc=-3, flow_x=0.8, hold_time_x=1.15, cool_x=1.1),
}

# Machine size classes: screw diameter (mm), max clamp force (kN), max pressure (bar), max speed (mm/s).
SIZES = {"screw_d": (25.0, 35.0, 45.0, 55.0), "clamp_max": (600.0, 1100.0, 1800.0, 2800.0),
         "p_max": (2400.0, 2200.0, 2100.0, 2000.0), "v_max": (300.0, 260.0, 220.0, 200.0)}
SIZE_SHARE = (0.3, 0.35, 0.25, 0.10)
PART_VOLUME = ((3.0, 20.0), (15.0, 70.0), (50.0, 160.0), (120.0, 350.0))  # cm^3 per size class


# -- layout: machines, parts, recipes -------------------------------------------------------------
@dataclass
class Machines:
    name: list[str]
    maker: np.ndarray  # index into MAKER_ORDER
    size: np.ndarray
    attrs: Arrays  # screw_d, clamp_max, p_max, v_max, dry, melt_bias, press_gain, ...
    parts: list[np.ndarray]


@dataclass
class Parts:
    name: list[str]
    attrs: Arrays  # material, volume, thick, area, p_nom, ...


@dataclass
class Recipes:
    part: np.ndarray
    style: list[str]
    attrs: Arrays  # melt, mold, split, flow, hold, hold_s, cool_s, back, vc, p_std, headroom, clamp_margin, ...
    by_part: list[np.ndarray]


def _make_machines(rng: np.random.Generator, k: Knobs) -> Machines:
    n = k.machines
    size = rng.choice(4, n, p=SIZE_SHARE)
    maker_ids = np.array([MAKER_ORDER.index(m) for m in k.makers])
    maker = np.resize(maker_ids, n)  # every maker gets at least one machine
    rng.shuffle(maker)
    attrs = {key: np.asarray(values)[size] for key, values in SIZES.items()}
    attrs |= {
        "dry": rng.uniform(3.0, 5.5, n),  # mold open/close, ejector: the machine's dry cycle
        "melt_bias": rng.normal(0, 2.5, n),  # heater calibration and thermocouple placement
        "melt_sensor": rng.normal(0, 1.5, n),
        "press_gain": rng.normal(0, 0.02, n),  # pressure transducer calibration
        "clamp_gain": rng.normal(0, 0.01, n),
        "dose_x": rng.uniform(0.9, 1.15, n),  # screw geometry and wear: plasticizing rate
        "mov_bias": rng.normal(1.5, 1.0, n),  # moving half runs warmer (cores, fewer channels)
        "wear_rate": rng.lognormal(np.log(0.2), 0.9, n) * k.drift,  # check ring: per 10k shots
        "fouling": np.where(rng.random(n) < 0.25, rng.uniform(4, 12, n), 0.0) * k.drift,  # degC per 30 days
    }
    style = NAMING[k.naming]["machine"]
    return Machines([style.format(i + 1) for i in range(n)], maker, size, attrs, [np.empty(0, int)] * n)


def _assign_parts(rng: np.random.Generator, k: Knobs, machines: Machines) -> list[np.ndarray]:
    """Parts per size class, shared between the class's machines; least-used parts first so that
    every part runs somewhere and many run on more than one machine."""
    lo, hi = k.parts_per_machine
    wants = rng.integers(lo, hi + 1, len(machines.name))
    part_size: list[int] = []
    per_machine: list[np.ndarray] = [np.empty(0, int)] * len(machines.name)
    for size in np.unique(machines.size):
        members = np.flatnonzero(machines.size == size)
        pool_n = max(2, int(round(wants[members].sum() / 1.7)))
        pool = np.arange(len(part_size), len(part_size) + pool_n)
        part_size += [int(size)] * pool_n
        used = np.zeros(pool_n)
        for m in members:
            take = min(int(wants[m]), pool_n)
            order = np.lexsort((rng.random(pool_n), used))[:take]
            used[order] += 1
            per_machine[m] = pool[order]
    machines.parts = per_machine
    return part_size


def _make_parts(rng: np.random.Generator, part_size: list[int]) -> Parts:
    size = np.asarray(part_size)
    n = len(size)
    lo = np.array([PART_VOLUME[s][0] for s in size])
    hi = np.array([PART_VOLUME[s][1] for s in size])
    volume = np.exp(rng.uniform(np.log(lo), np.log(hi)))
    thick = rng.uniform(1.0, 3.5, n)
    material = rng.integers(len(MATERIALS), size=n)
    mat = _material_table()
    p_cav = rng.uniform(28, 42, n)  # MPa cavity pressure the part needs during hold
    clamp_max = np.asarray(SIZES["clamp_max"])[size]
    area = volume / (thick / 10) * rng.uniform(0.35, 0.6, n)  # cm^2 projected
    area = np.minimum(area, 0.6 * clamp_max / (0.1 * p_cav))  # the mold was sized to its press
    p_nom = np.clip(450 + 900 * rng.random(n) * (2.0 / thick) ** 0.3, 480, 1500)  # bar, at material nominal
    attrs = {
        "size": size, "material": material, "volume": volume, "thick": thick, "area": area, "p_cav": p_cav,
        "p_nom": p_nom,
        "tau": rng.uniform(0.55, 0.75, n),  # share of hold pressure reaching the cavity
        "t_cool_need": mat["cool"][material] * thick**2 + 3.0,
        "t_freeze": 0.8 * thick**2 + 1.5,  # gate freeze time (s)
        "eject": rng.uniform(3.5, 9.0, n),  # ejection and robot take-out
        "cushion_x": rng.uniform(0.08, 0.16, n),  # cushion target as a share of screw diameter
        "vent_life": rng.uniform(6000, 25000, n),  # shots until vents clog enough to burn
        "parting_wear": rng.uniform(0, 1, n),  # parting-line wear over 30 days (flash tendency)
        "vp_ratio": rng.uniform(0.86, 0.95, n),  # switch-over pressure over peak
    }
    names = [f"P-{1000 + int(v)}" for v in rng.choice(9000, n, replace=False)]
    return Parts(names, attrs)


def _material_table() -> Arrays:
    return {f.name: np.array([getattr(m, f.name) for m in MATERIALS]) for f in fields(Material) if f.name != "name"}


def _required_pressure(p_nom: np.ndarray, k_visc: np.ndarray, melt_dev: np.ndarray, flow_x: np.ndarray,
                       mold_dev: np.ndarray, eta_x: np.ndarray | float = 1.0) -> np.ndarray:
    """Pressure to fill the cavity: viscosity (temperature, lot) times a shear-thinning flow term,
    raised by a cold mold's frozen skin."""
    return p_nom * eta_x * np.exp(-k_visc * melt_dev) * flow_x**0.35 * np.exp(-0.008 * mold_dev)


def _make_recipes(rng: np.random.Generator, k: Knobs, parts: Parts) -> Recipes:
    mat = _material_table()
    pa = parts.attrs
    others = [s for s in STYLES if s != "standard"]
    rows: list[tuple[int, str]] = []
    for p in range(len(parts.name)):
        n = int(rng.integers(k.recipes_per_part[0], k.recipes_per_part[1] + 1))
        rows += [(p, "standard")] + [(p, str(s)) for s in rng.choice(others, n - 1, replace=False)]
    part = np.array([r[0] for r in rows])
    style_names = [r[1] for r in rows]
    st = {f.name: np.array([getattr(STYLES[s], f.name) for s in style_names]) for f in fields(Style)}
    n = len(rows)
    # each part's standard set points, shared by its variants (an engineer derives variants from it)
    part_mat = pa["material"]
    base_melt = mat["melt_c"][part_mat] + rng.normal(0, 4, len(parts.name))
    base_mold = mat["mold_c"][part_mat] + rng.normal(0, 3, len(parts.name))
    v_shot = pa["volume"] * 1.1  # part plus runner
    flow_std = v_shot / (0.15 + 0.07 * np.sqrt(v_shot))  # cm^3/s for a fill of 0.3-1.5 s
    hold_std = pa["p_cav"] * BAR_PER_MPA / pa["tau"]
    melt = base_melt[part] + st["melt_dc"]
    mold = base_mold[part] + st["mold_dc"]
    # the limit is set from the standard recipe's pressure (with the style's headroom)
    p_std = _required_pressure(pa["p_nom"], mat["k_visc"][part_mat], base_melt + 2 - mat["melt_c"][part_mat],
                               np.ones(len(parts.name)), base_mold + 4 - mat["mold_c"][part_mat])
    hold = hold_std[part] * st["hold_x"]
    attrs = {
        "melt": melt, "mold": mold, "split": st["split_dc"],
        "flow": flow_std[part] * st["flow_x"], "flow_std": flow_std[part],
        "hold": hold, "hold_std": hold_std[part],
        "hold_s": pa["t_freeze"][part] * 1.2 * st["hold_time_x"],
        "cool_s": pa["t_cool_need"][part] * rng.uniform(1.0, 1.1, n) * st["cool_x"],
        "back": rng.uniform(50, 120, n),
        "vc": rng.uniform(0.15, 0.32, n),  # screw circumferential speed (m/s)
        "p_limit": st["headroom"] * p_std[part],
        "f_clamp": st["clamp_margin"] * 0.1 * pa["area"][part] * hold / BAR_PER_MPA * pa["tau"][part],
        "weight": st["weight"],
    }
    by_part = [np.flatnonzero(part == p) for p in range(len(parts.name))]
    return Recipes(part, style_names, attrs, by_part)


# -- schedule: campaigns of parts, recipe segments ------------------------------------------------
def _shots_per_machine(rng: np.random.Generator, shots: int, n: int) -> np.ndarray:
    weights = rng.uniform(0.6, 1.4, n)
    out = np.floor(shots * weights / weights.sum()).astype(int)
    out[: shots - out.sum()] += 1
    return out


def _machine_segments(rng: np.random.Generator, k: Knobs, n_shots: int, parts: np.ndarray,
                      recipes: Recipes) -> list[tuple[int, int, int, bool]]:
    """(part, recipe, length, starts a mold run) for one machine's sequence of shots."""
    segs: list[tuple[int, int, int, bool]] = []
    left, prev = n_shots, -1
    while left > 0:
        run = int(max(60, rng.lognormal(np.log(k.campaign_shots), 0.6)))
        run = left if left - run < 60 else run
        choices = parts[parts != prev] if len(parts) > 1 else parts
        part = int(rng.choice(choices))
        prev = part
        options = recipes.by_part[part]
        weights = recipes.attrs["weight"][options] / recipes.attrs["weight"][options].sum()
        n_seg = 1 + min(2, int(rng.poisson(0.5))) if run >= 200 else 1
        cuts = np.sort(rng.choice(np.arange(50, run - 49), n_seg - 1, replace=False)) if n_seg > 1 else np.empty(0, int)
        bounds = np.concatenate([[0], cuts, [run]])
        last = -1
        for j in range(n_seg):
            pick = options if len(options) == 1 else options[options != last]
            w = weights[np.isin(options, pick)]
            recipe = int(rng.choice(pick, p=w / w.sum()))
            segs.append((part, recipe, int(bounds[j + 1] - bounds[j]), j == 0))
            last = recipe
        left -= run
    return segs


def _schedule(rng: np.random.Generator, k: Knobs, shots: int, machines: Machines, recipes: Recipes) -> Arrays:
    per_machine = _shots_per_machine(rng, shots, len(machines.name))
    rows: list[tuple[int, int, int, int, bool]] = []
    for m, n in enumerate(per_machine):
        rows += [(m, *seg) for seg in _machine_segments(rng, k, int(n), machines.parts[m], recipes)]
    seg = np.array([r[:4] for r in rows])
    length = seg[:, 3]
    starts = np.concatenate([[0], np.cumsum(length)[:-1]])
    total = int(length.sum())
    seg_start = np.zeros(total, bool)
    seg_start[starts] = True
    run_start = np.zeros(total, bool)
    run_start[starts[[r[4] for r in rows]]] = True
    machine = np.repeat(seg[:, 0], length)
    first = np.r_[True, machine[1:] != machine[:-1]]
    return {"machine": machine, "part": np.repeat(seg[:, 1], length), "recipe": np.repeat(seg[:, 2], length),
            "seg_start": seg_start, "run_start": run_start | first, "machine_first": first,
            "seg_id": np.cumsum(seg_start) - 1, "run_id": np.cumsum(run_start | first) - 1}


# -- set points -----------------------------------------------------------------------------------
def _cumsum_within(x: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Running sum that restarts at every True in ``start`` (a recipe reload undoes nudges)."""
    cs = np.cumsum(x)
    idx = np.flatnonzero(start)
    base = (cs - x)[idx]
    return cs - base[np.cumsum(start) - 1]


def _ar1(rng: np.random.Generator, n: int, sigma: float, tau: float) -> np.ndarray:
    """Stationary AR(1) wander with correlation length ``tau`` shots (via an EWM, vectorised)."""
    phi = 1.0 - 1.0 / tau
    e = rng.normal(0, sigma * np.sqrt(1 - phi**2), n)
    x = e / (1 - phi)
    x[0] = rng.normal(0, sigma)  # start in the stationary distribution
    return pd.Series(x).ewm(alpha=1 - phi, adjust=False).mean().to_numpy()


# (setting, relative?, smallest step, largest step): what an operator turns when parts look off
NUDGES: tuple[tuple[str, bool, float, float], ...] = (
    ("hold", True, 0.02, 0.06), ("melt", False, 2.0, 6.0), ("mold", False, 1.0, 4.0),
    ("v_inj", True, 0.03, 0.10), ("t_cool", False, 0.3, 1.5), ("t_hold", False, 0.2, 0.8),
    ("s_vp", False, 0.2, 1.0), ("p_back", False, 5.0, 15.0), ("s_dose", False, 0.2, 0.8),
)


def _nudges(rng: np.random.Generator, k: Knobs, seg_start: np.ndarray) -> Arrays:
    n = len(seg_start)
    hit = rng.random(n) < k.drift / 500.0
    which = rng.integers(len(NUDGES), size=n)
    frac = rng.random(n)
    sign = rng.choice([-1.0, 1.0], n)
    out: Arrays = {}
    for j, (name, relative, lo, hi) in enumerate(NUDGES):
        step = np.where(hit & (which == j), sign * (lo + (hi - lo) * frac), 0.0)
        cum = _cumsum_within(step, seg_start)
        out[name] = np.clip(cum, -0.2, 0.2) if relative else cum
    return out


def _settings(rng: np.random.Generator, k: Knobs, s: Arrays, machines: Machines, parts: Parts,
              recipes: Recipes) -> None:
    """Per-shot set points: the recipe converted to the machine, plus nudges and wander."""
    r, m, p = s["recipe"], s["machine"], s["part"]
    ra, pa, ma = recipes.attrs, parts.attrs, machines.attrs
    for key in ("screw_d", "clamp_max", "p_max", "v_max", "dry", "dose_x"):
        s[key] = ma[key][m]
    area_s = np.pi * s["screw_d"] ** 2 / 4  # mm^2
    s["area_s"] = area_s
    nudge = _nudges(rng, k, s["seg_start"])
    melt = ra["melt"][r] + nudge["melt"]
    # a barrel profile: hottest at the front, cooler toward the feed throat
    for zone, offset in (("t_nozzle", 0.0), ("t_z1", 2.0), ("t_z2", -3.0), ("t_z3", -10.0), ("t_z4", -25.0)):
        s[zone] = np.round(melt + offset)
    mold = ra["mold"][r] + nudge["mold"] + _ar1(rng, len(r), 1.2 * k.drift, 800)
    s["mold_fix_set"] = np.round(mold, 1)
    s["mold_mov_set"] = np.round(mold + ra["split"][r], 1)
    s["hold"] = np.round(ra["hold"][r] * (1 + nudge["hold"]) * (1 + _ar1(rng, len(r), 0.015 * k.drift, 1500)))
    s["t_hold"] = np.round(np.maximum(0.5, ra["hold_s"][r] + nudge["t_hold"]), 2)
    s["t_cool"] = np.round(np.maximum(2.0, ra["cool_s"][r] + nudge["t_cool"]), 1)
    s["v_inj"] = np.round(np.minimum(ra["flow"][r] * 1000 / area_s * (1 + nudge["v_inj"]), s["v_max"]), 1)
    s["p_back"] = np.round(np.maximum(20, ra["back"][r] + nudge["p_back"]))
    s["rpm"] = np.round(ra["vc"][r] * 60000 / (np.pi * s["screw_d"]))
    s_fill = pa["volume"][p] * 1.1 * 1000 / area_s * 1.12  # melt is ~12 % less dense than the part
    s_pack = _pack_volume(pa, p) * 1000 / area_s * 1.12
    compress = s_fill * ra["p_limit"][r] / 1.35 / 25000  # expected melt compression at switch-over
    s["s_fill"] = s_fill
    s["s_pack_nom"] = s_pack
    s["s_dose"] = np.round(s_fill + s_pack + compress + pa["cushion_x"][p] * s["screw_d"] + nudge["s_dose"], 1)
    s["s_vp"] = np.round(s["s_dose"] - 0.95 * s_fill + nudge["s_vp"], 1)
    s["p_limit"] = np.round(np.minimum(ra["p_limit"][r], s["p_max"]))
    s["f_clamp"] = np.round(np.minimum(ra["f_clamp"][r], 0.95 * s["clamp_max"]))
    s["t_dose_ref"] = 0.6 * ra["cool_s"][r]  # the recipe's screw speed was chosen for this dosing time


def _pack_volume(pa: Arrays, p: np.ndarray) -> np.ndarray:
    """Packing volume (cm^3) the hold phase must push in to make up shrinkage."""
    return _material_table()["pack"][pa["material"][p]] * pa["volume"][p]


# -- clock ----------------------------------------------------------------------------------------
def _planned_cycle(rng: np.random.Generator, s: Arrays, parts: Parts) -> np.ndarray:
    t_fill = (s["s_dose"] - s["s_vp"]) / s["v_inj"]
    t_dose = s["t_dose_ref"] * s["dose_x"] * (s["s_dose"] / np.maximum(s["s_fill"], 1))
    s["t_fill_plan"] = t_fill
    s["t_dose_plan"] = t_dose
    return (s["dry"] + t_fill + s["t_hold"] + np.maximum(s["t_cool"], t_dose + 0.3)
            + parts.attrs["eject"][s["part"]] + np.abs(rng.normal(0, 0.2, len(t_fill))))


def _stops(rng: np.random.Generator, s: Arrays) -> np.ndarray:
    """Production time lost before each shot: mold changes, recipe switches, micro-stops."""
    n = len(s["machine"])
    gap = np.where(s["run_start"], rng.uniform(1800, 7200, n), 0.0)
    gap = np.where(s["seg_start"] & ~s["run_start"], rng.uniform(120, 600, n), gap)
    micro = rng.random(n) < 0.004
    gap = gap + np.where(micro, rng.exponential(420, n), 0.0)
    return np.where(s["machine_first"], 0.0, gap)


def _day_windows(rng: np.random.Generator, k: Knobs, days: int, need_s: float) -> np.ndarray:
    """Seconds of production per day: weekday pattern, water-filled to the machine's need and capped
    at 23.5 h; days beyond the horizon are added only when the shots do not fit."""
    weekday = (pd.Timestamp(k.start_date).dayofweek + np.arange(days)) % 7
    base = np.where(weekday == 6, 0.0 if k.sunday_off else 0.5, np.where(weekday == 5, 0.6, 1.0))
    base = base * rng.uniform(0.85, 1.15, days)
    cap = 23.5 * 3600
    w = np.zeros(days)
    free = base > 0
    remaining = need_s
    while free.any():
        trial = base * remaining / base[free].sum()
        over = free & (trial > cap)
        if not over.any():
            w[free] = trial[free]
            remaining = 0.0
            break
        w[over] = cap
        remaining -= cap * over.sum()
        free &= ~over
    extra = int(np.ceil(max(remaining, 0.0) / cap))
    if extra:
        w = np.concatenate([w, np.full(extra, remaining / extra)])
    return w


def _clock(rng: np.random.Generator, k: Knobs, s: Arrays, parts: Parts, days: int) -> int:
    """Calendar seconds since the start date for every shot; returns the days actually used."""
    cycle = _planned_cycle(rng, s, parts)
    gap = _stops(rng, s)
    s["t_cycle_plan"] = cycle
    t_cal = np.empty(len(cycle))
    prod_day = np.empty(len(cycle), int)
    used = days
    for m in np.unique(s["machine"]):
        idx = np.flatnonzero(s["machine"] == m)
        t_prod = np.cumsum(gap[idx] + cycle[idx])
        w = _day_windows(rng, k, days, float(t_prod[-1]) * 1.000001)
        used = max(used, len(w))
        cum = np.cumsum(w)
        d = np.minimum(np.searchsorted(cum, t_prod, side="left"), len(w) - 1)
        offset = t_prod - (cum[d] - w[d])
        t_cal[idx] = d * DAY_S + k.day_start_hour * 3600 + offset
        prod_day[idx] = d
    s["t_cal"] = t_cal
    s["prod_day"] = prod_day
    return used


def _warmup(s: Arrays) -> None:
    """Shots since the last thermal disturbance, and how deep it was (share of mold-to-room gap)."""
    idle = np.r_[0.0, np.diff(s["t_cal"])] - s["t_cycle_plan"]
    idle = np.where(s["machine_first"], np.inf, idle)
    depth = np.select(
        [idle > 3 * 3600, s["run_start"], idle > 1800, s["seg_start"]], [0.75, 0.4, 0.35, 0.08], 0.0)
    n = len(depth)
    last = np.maximum.accumulate(np.where(depth > 0, np.arange(n), 0))
    s["warm_n"] = np.arange(n) - last
    s["warm_depth"] = depth[last]
    s["idle_s"] = np.where(np.isinf(idle), 0.0, np.maximum(idle, 0.0))


# -- environment and equipment states -------------------------------------------------------------
def _ambient(rng: np.random.Generator, s: Arrays, days: int) -> None:
    day = (s["t_cal"] // DAY_S).astype(int)
    hour = (s["t_cal"] % DAY_S) / 3600
    weather = np.cumsum(rng.normal(0, 0.8, days + 2))
    s["ambient"] = 21 + 3.5 * np.sin(2 * np.pi * (hour - 9) / 24) + weather[day]


def _resin_lots(rng: np.random.Generator, k: Knobs, s: Arrays, parts: Parts, days: int) -> None:
    """Each material arrives in lots of 1-4 days: viscosity (MFI) factor, residual moisture (a badly
    dried lot of a hygroscopic resin), dirt."""
    mat = parts.attrs["material"][s["part"]]
    hygro = _material_table()["hygro"]
    eta_x, moist, dirt = np.ones(len(mat)), np.zeros(len(mat)), np.ones(len(mat))
    for j in range(len(MATERIALS)):
        rows = mat == j
        n_lots = int((days + 2) / 0.7) + 2
        starts = np.concatenate([[-np.inf], np.cumsum(rng.uniform(0.7, 3.5, n_lots)) * DAY_S])
        lot_eta = np.exp(rng.normal(0, 0.05 * k.drift, len(starts)))
        wet = rng.random(len(starts)) < 0.15 * k.drift
        lot_moist = np.where(wet, rng.uniform(0.09, 0.18, len(starts)), rng.uniform(0.02, 0.07, len(starts)))
        lot_moist = lot_moist * (hygro[j] > 0)
        lot_dirt = rng.lognormal(0, 0.8, len(starts))
        if rows.any():
            lot = np.searchsorted(starts, s["t_cal"][rows], side="right") - 1
            eta_x[rows], moist[rows], dirt[rows] = lot_eta[lot], lot_moist[lot], lot_dirt[lot]
    s["lot_eta"], s["moisture"], s["dirt"] = eta_x, moist, dirt


def _heater_faults(rng: np.random.Generator, k: Knobs, s: Arrays, days: int) -> None:
    """A heater band fails slowly: the zone's actual temperature sags over some shots until repair."""
    n = len(s["machine"])
    for zone in ("t_nozzle", "t_z1", "t_z2", "t_z3", "t_z4"):
        s[f"{zone}_sag"] = np.zeros(n)
    for m in np.unique(s["machine"]):
        idx = np.flatnonzero(s["machine"] == m)
        for _ in range(int(rng.poisson(0.5 * k.drift * days / 30))):
            zone = str(rng.choice(["t_nozzle", "t_z1", "t_z2", "t_z3"], p=[0.2, 0.35, 0.3, 0.15]))
            start = int(rng.integers(len(idx)))
            length = int(rng.uniform(200, 2500))
            ramp = rng.uniform(50, 400)
            span = idx[start:start + length]
            s[f"{zone}_sag"][span] += rng.uniform(15, 45) * np.clip(np.arange(len(span)) / ramp, 0, 1)


def _wear_states(rng: np.random.Generator, k: Knobs, s: Arrays, machines: Machines, parts: Parts) -> None:
    n = len(s["machine"])
    ma, pa = machines.attrs, parts.attrs
    # check ring: wear grows with shots, reset by maintenance at random moments
    maint = s["machine_first"] | (rng.random(n) < 1.0 / 40000)
    last = np.maximum.accumulate(np.where(maint, np.arange(n), 0))
    s["ring_wear"] = ma["wear_rate"][s["machine"]] * (np.arange(n) - last) / 10000
    # vents clog within a mold run (the mold is cleaned at a mold change)
    since_run = np.arange(n) - np.maximum.accumulate(np.where(s["run_start"], np.arange(n), 0))
    s["vent_clog"] = since_run / pa["vent_life"][s["part"]] * k.drift
    month = s["t_cal"] / (30 * DAY_S)
    s["fouling"] = ma["fouling"][s["machine"]] * month  # moving-half cooling channel scales up
    s["parting"] = 1 + 0.15 * pa["parting_wear"][s["part"]] * month * k.drift


# -- physics --------------------------------------------------------------------------------------
def _melt(rng: np.random.Generator, s: Arrays, machines: Machines) -> None:
    actual = {z: s[z] - s[f"{z}_sag"] for z in ("t_nozzle", "t_z1", "t_z2", "t_z3", "t_z4")}
    barrel = (0.15 * actual["t_nozzle"] + 0.4 * actual["t_z1"] + 0.3 * actual["t_z2"]
              + 0.1 * actual["t_z3"] + 0.05 * actual["t_z4"])
    vc = s["rpm"] * np.pi * s["screw_d"] / 60000
    shear = 18 * vc + 0.04 * (s["p_back"] - 80)  # screw shear and back pressure heat the melt
    residence = 1.5 * np.tanh(s["idle_s"] / 1800)  # melt parked in the barrel overheats a little
    melt = barrel + shear + residence + machines.attrs["melt_bias"][s["machine"]] + 0.05 * (s["ambient"] - 21)
    s["melt_true"] = melt + rng.normal(0, 0.7, len(melt))
    s["melt"] = s["melt_true"] + machines.attrs["melt_sensor"][s["machine"]] + rng.normal(0, 0.4, len(melt))
    s["vc"] = vc


def _mold_surface(rng: np.random.Generator, s: Arrays, parts: Parts) -> None:
    volume = parts.attrs["volume"][s["part"]]
    load = 4 * volume / (volume + 50) * (s["melt_true"] - s["mold_fix_set"]) / 200 * np.sqrt(30 / s["t_cycle_plan"])
    cold = -s["warm_depth"] * (s["mold_fix_set"] - s["ambient"]) * np.exp(-s["warm_n"] / 12)
    hunting = 0.5 * np.sin(2 * np.pi * np.arange(len(load)) / 47.0)  # temperature unit control loop
    room = 0.15 * (s["ambient"] - 21)
    n = len(load)
    s["surf_fix"] = s["mold_fix_set"] + load + cold + hunting + room + rng.normal(0, 0.3, n)
    s["surf_mov"] = (s["mold_mov_set"] + 1.1 * load + cold + hunting + room + s["fouling"]
                     + s["mov_bias"] + rng.normal(0, 0.3, n))


def _viscosity(s: Arrays, parts: Parts) -> None:
    """Relative viscosity at the part's material reference: temperature, lot and moisture."""
    mat = _material_table()
    j = parts.attrs["material"][s["part"]]
    hydrolysis = 1 - 0.6 * mat["hygro"][j] * s["moisture"]  # water cuts chains of PA/PC/PBT
    s["eta"] = s["lot_eta"] * hydrolysis * np.exp(-mat["k_visc"][j] * (s["melt_true"] - mat["melt_c"][j]))
    s["mat_melt"], s["mat_mold"], s["mat_min"], s["hygro"] = (
        mat["melt_c"][j], mat["mold_c"][j], mat["min_melt_c"][j], mat["hygro"][j])


def _adaptive_hold(s: Arrays) -> None:
    """VALDOR's adaptive control raises hold pressure when the melt gets stiffer (and lowers it)."""
    adaptive = s["maker"] == MAKER_ORDER.index("VALDOR")
    factor = np.clip(1 + 0.5 * (s["eta"] / np.exp(-0.015 * 2) - 1), 0.85, 1.15)
    s["hold"] = np.where(adaptive, np.round(s["hold"] * factor), s["hold"])


def _fill(rng: np.random.Generator, s: Arrays, parts: Parts, recipes: Recipes) -> None:
    pa = parts.attrs
    n = len(s["eta"])
    flow = s["v_inj"] * s["area_s"] / 1000
    flow_x = flow / recipes.attrs["flow_std"][s["recipe"]]
    p_req = _required_pressure(pa["p_nom"][s["part"]], 1.0, 0.0, flow_x, s["surf_fix"] - s["mat_mold"], s["eta"])
    p_req = p_req * (1 + rng.normal(0, 0.015, n))
    s["p_req"] = p_req
    limited = np.maximum(1.0, p_req / s["p_limit"])
    gain = 1 + s["press_gain"]
    s["p_peak"] = np.minimum(p_req, s["p_limit"]) * gain * (1 + rng.normal(0, 0.006, n))
    s["p_vp"] = s["p_peak"] * pa["vp_ratio"][s["part"]] * (1 + rng.normal(0, 0.008, n))
    stroke = s["s_dose"] - s["s_vp"]
    # a pressure-limited screw slows down: fill time grows with the shortfall
    s["t_fill"] = (stroke / s["v_inj"] * (1 + s["p_peak"] / 25000) + 0.04) * np.minimum(limited ** (1 / 0.35), 3.0)
    s["t_fill"] = s["t_fill"] * (1 + rng.normal(0, 0.01, n))
    s["work"] = 0.6 * s["p_peak"] * stroke * s["area_s"] / 1000 * 1e-4  # kJ of injection work


def _cushion(rng: np.random.Generator, s: Arrays, parts: Parts, recipes: Recipes) -> None:
    pa = parts.attrs
    n = len(s["eta"])
    freeze = pa["t_freeze"][s["part"]] * (1 + 0.01 * (s["surf_fix"] - s["mat_mold"]))
    s["freeze"] = freeze
    hold_ratio = np.clip(s["t_hold"] / freeze, 0, 1.5)
    pack = s["s_pack_nom"] * np.sqrt(s["hold"] / recipes.attrs["hold_std"][s["recipe"]]) * np.minimum(hold_ratio, 1) ** 0.5
    compress = s["s_fill"] * s["p_peak"] / 25000
    leak = s["ring_wear"] * (s["hold"] / 500) * (s["t_hold"] / 5) * 0.03 * s["screw_d"] / np.maximum(s["eta"], 0.3)
    noise = rng.normal(0, 1, n) * (0.06 + 0.15 * s["ring_wear"])
    short_fill = s["s_fill"] * (1 - 1 / np.maximum(1.0, s["p_req"] / s["p_limit"]))  # a stalled screw stops early
    cushion = s["s_dose"] - s["s_fill"] - compress - pack - leak + noise + short_fill
    s["cushion_true"] = np.maximum(cushion, 0.0)
    s["cushion"] = s["cushion_true"] + rng.normal(0, 0.02, n)


def _dosing(rng: np.random.Generator, s: Arrays, recipes: Recipes) -> None:
    n = len(s["eta"])
    rpm_ref = recipes.attrs["vc"][s["recipe"]] * 60000 / (np.pi * s["screw_d"])
    base = s["t_dose_ref"] * s["dose_x"] * (s["s_dose"] / np.maximum(s["s_fill"], 1))
    s["t_dose"] = (base * (rpm_ref / s["rpm"]) * (1 + 0.003 * (s["p_back"] - recipes.attrs["back"][s["recipe"]]))
                   * s["eta"] ** 0.25 * (1 + 0.5 * s["moisture"]) * (1 + rng.normal(0, 0.02, n)))
    s["torque"] = (0.011 * s["screw_d"] ** 3 * np.sqrt(s["eta"]) * (1 + 0.0015 * (s["p_back"] - 80))
                   * (1 + rng.normal(0, 0.02, n)))
    s["feed_t"] = 30 + 0.5 * (s["ambient"] - 20) + 0.02 * (s["t_z4"] - 200) + rng.normal(0, 0.4, n)


def _cycle_and_clamp(rng: np.random.Generator, s: Arrays) -> None:
    n = len(s["eta"])
    # a slower plasticizing than planned lengthens the cycle once it outlasts the cooling time
    extra_dose = np.maximum(0, s["t_dose"] + 0.3 - np.maximum(s["t_cool"], s["t_dose_plan"] + 0.3))
    s["t_cycle"] = s["t_cycle_plan"] + (s["t_fill"] - s["t_fill_plan"]) + extra_dose + rng.normal(0, 0.03, n)
    thermal = 1 + 0.0008 * (s["surf_fix"] - s["mold_fix_set"])  # a warmer mold grows and pre-loads the tie bars
    s["f_act"] = s["f_clamp"] * (1 + s["clamp_gain"]) * thermal * (1 + rng.normal(0, 0.0025, n))


def _physics(rng: np.random.Generator, s: Arrays, machines: Machines, parts: Parts, recipes: Recipes) -> None:
    s["maker"] = machines.maker[s["machine"]]
    for key in ("press_gain", "clamp_gain", "mov_bias"):
        s[key] = machines.attrs[key][s["machine"]]
    _melt(rng, s, machines)
    _mold_surface(rng, s, parts)
    _viscosity(s, parts)
    _adaptive_hold(s)
    _fill(rng, s, parts, recipes)
    _cushion(rng, s, parts, recipes)
    _dosing(rng, s, recipes)
    _cycle_and_clamp(rng, s)


# -- defects --------------------------------------------------------------------------------------
CAUSES: tuple[str, ...] = ("short_shot", "short_starved", "flash", "sink", "burn", "warpage", "splay",
                           "cold_slug", "warmup")
INVISIBLE: tuple[str, ...] = ("contamination", "handling")


def _hazards(s: Arrays, parts: Parts, recipes: Recipes) -> np.ndarray:
    """Raw per-shot probability of each visible mechanism, from the current margins."""
    pa = parts.attrs
    p = s["part"]
    r_press = s["p_req"] / s["p_limit"]
    cavity_force = 0.1 * pa["area"][p] * s["hold"] / BAR_PER_MPA * pa["tau"][p] * s["eta"] ** -0.15
    r_clamp = cavity_force * s["parting"] / s["f_clamp"]
    hold_ratio = s["t_hold"] / s["freeze"]
    thick = pa["thick"][p] / 2.5
    speed = s["v_inj"] * s["area_s"] / 1000 / recipes.attrs["flow_std"][s["recipe"]]
    burn_index = speed * (1 + s["vent_clog"]) * np.exp((s["melt_true"] - s["mat_melt"]) / 40)
    cool_need = pa["t_cool_need"][p] * (1 + 0.01 * (s["surf_fix"] - s["mat_mold"]))
    imbalance = np.abs(s["surf_mov"] - s["surf_fix"])
    cols = {
        "short_shot": 0.5 * _sig((r_press - 0.99) / 0.012),
        "short_starved": 0.6 * _sig((0.35 - s["cushion_true"]) / 0.12),
        "flash": 0.3 * _sig((r_clamp - 0.90) / 0.03),
        "sink": thick * (0.10 * _sig((0.85 - hold_ratio) / 0.05)
                         + 0.06 * _sig((0.82 - s["hold"] / recipes.attrs["hold_std"][s["recipe"]]) / 0.04)
                         + 0.05 * _sig((0.8 - s["cushion_true"]) / 0.2)),
        "burn": 0.06 * _sig((burn_index - 1.6) / 0.08),
        "warpage": 0.08 * _sig((imbalance - 8) / 1.5) + 0.05 * _sig((0.88 - s["t_cool"] / cool_need) / 0.03),
        "splay": 0.12 * s["hygro"] * _sig((s["moisture"] - 0.12) / 0.015),
        "cold_slug": 0.3 * _sig((s["mat_min"] + 3 - s["melt_true"]) / 1.5),
        "warmup": 0.85 * s["warm_depth"] / 0.75 * np.exp(-s["warm_n"] / 2.0),
    }
    return np.column_stack([cols[c] for c in CAUSES])


def _calibrate(hazard: np.ndarray, power: np.ndarray, p_invisible: np.ndarray, target: float) -> float:
    """One factor on every visible hazard so that the expected defect share meets the target: the
    plant's mix and its setting dependence stay, only the overall level is set by the knob."""
    log_ok = np.log1p(-p_invisible)
    lo, hi = -8.0, 8.0
    for _ in range(40):
        mid = (lo + hi) / 2
        p = np.minimum(np.exp(mid * power) * hazard, 0.97)
        share = 1 - np.exp(np.log1p(-p).sum(axis=1) + log_ok).mean()
        lo, hi = (mid, hi) if share < target else (lo, mid)
    return float(np.exp((lo + hi) / 2))


def _draw_defects(rng: np.random.Generator, k: Knobs, s: Arrays, parts: Parts,
                  recipes: Recipes) -> tuple[np.ndarray, np.ndarray, float]:
    """Defect flags, cause index (-1: good) and the hazard scale that met the target share."""
    hazard = _hazards(s, parts, recipes)
    dirt = s["dirt"] / s["dirt"].mean()
    invisible = k.invisible_share * k.defect_share
    p_inv = np.column_stack([invisible / 2 * dirt, np.full(len(dirt), invisible / 2)])
    # warm-up scrap follows the plant's general care less than process margins do: half the scaling
    soften = np.ones(len(CAUSES))
    soften[CAUSES.index("warmup")] = 0.5
    scale = _calibrate(hazard, soften, 1 - (1 - p_inv[:, 0]) * (1 - p_inv[:, 1]), k.defect_share)
    p = np.minimum(scale**soften * hazard, 0.97)
    hit = rng.random(p.shape) < p
    # when several mechanisms strike at once, the likeliest names the defect
    visible = hit.any(axis=1)
    cause = np.where(visible, np.argmax(np.where(hit, p, -1), axis=1), -1)
    inv_hit = rng.random(p_inv.shape) < p_inv
    inv = ~visible & inv_hit.any(axis=1)
    cause = np.where(inv, len(CAUSES) + np.argmax(inv_hit, axis=1), cause)
    return cause >= 0, cause, scale


def _footprints(rng: np.random.Generator, s: Arrays, cause: np.ndarray) -> None:
    """What a defect leaves in the recorded values beyond the risky state that caused it."""
    def on(name: str) -> np.ndarray:
        return cause == CAUSES.index(name)

    def jitter(mask: np.ndarray, lo: float, hi: float) -> np.ndarray:
        return np.where(mask, rng.uniform(lo, hi, len(mask)), 1.0)

    short, starved, flash, sink = on("short_shot"), on("short_starved"), on("flash"), on("sink")
    burn, warp, splay, cold = on("burn"), on("warpage"), on("splay"), on("cold_slug")
    n = len(cause)
    s["p_peak"] = np.where(short, s["p_limit"] * (1 + s["press_gain"]) * (1 + rng.normal(0, 0.002, n)), s["p_peak"])
    s["t_fill"] = s["t_fill"] * jitter(short, 1.15, 1.4) * jitter(burn, 0.97, 0.98)
    s["cushion"] = s["cushion"] + np.where(short, rng.uniform(0.5, 2.0, n), 0.0)
    s["cushion"] = np.where(starved, rng.uniform(0, 0.15, n), s["cushion"])
    s["p_peak"] = s["p_peak"] * jitter(starved, 0.96, 0.98) * jitter(flash, 0.98, 0.99) * jitter(burn, 1.02, 1.035)
    s["p_peak"] = s["p_peak"] * jitter(splay, 0.965, 0.985)
    s["p_vp"] = s["p_vp"] * jitter(starved, 0.96, 0.98)
    s["cushion"] = np.maximum(s["cushion"] - np.where(flash, 0.2, 0.0) - np.where(sink, 0.25, 0.0), 0.0)
    s["f_act"] = s["f_act"] * jitter(flash, 1.004, 1.008)
    s["surf_fix"] = s["surf_fix"] + np.where(sink, 0.4, 0.0)
    s["surf_mov"] = s["surf_mov"] + np.where(warp, rng.uniform(1.5, 3.0, n), 0.0)
    s["t_dose"] = s["t_dose"] * jitter(splay, 0.94, 0.96) * jitter(cold, 1.04, 1.08)
    s["melt"] = s["melt"] - np.where(cold, rng.uniform(4, 8, n), 0.0)
    s["torque"] = s["torque"] * jitter(cold, 1.05, 1.10)


# -- makers: their own fields and units -----------------------------------------------------------
@dataclass(frozen=True)
class Field:
    column: str
    value: Callable[[Arrays], np.ndarray]
    decimals: int


@dataclass(frozen=True)
class Maker:
    name: str
    settings: tuple[Field, ...]
    production: tuple[Field, ...]


def _f(column: str, key: str, decimals: int, scale: float = 1.0) -> Field:
    return Field(column, lambda s, key=key, scale=scale: s[key] * scale, decimals)


def _volume(key: str) -> Callable[[Arrays], np.ndarray]:
    return lambda s: s[key] * s["area_s"] / 1000  # mm of stroke -> cm^3


# German-style maker: bar, s, mm of stroke, screw circumferential speed in m/min.
HALDEN = Maker("HALDEN", settings=(
    _f("Zyl_Duese_Soll", "t_nozzle", 0), _f("Zyl1_Soll", "t_z1", 0), _f("Zyl2_Soll", "t_z2", 0),
    _f("Zyl3_Soll", "t_z3", 0), _f("Zyl4_Soll", "t_z4", 0), _f("Wkz_Soll", "mold_fix_set", 1),
    _f("Einspr_Geschw", "v_inj", 1), _f("Nachdruck", "hold", 0), _f("Nachdruckzeit", "t_hold", 2),
    _f("Kuehlzeit", "t_cool", 1), _f("Dosierweg", "s_dose", 1), _f("Umschaltweg", "s_vp", 1),
    _f("Staudruck", "p_back", 0), Field("Umfangsgeschw", lambda s: np.pi * s["screw_d"] * s["rpm"] / 1000, 1),
    _f("Schliesskraft_Soll", "f_clamp", 0), _f("Spritzdruck_Grenze", "p_limit", 0),
), production=(
    _f("Massetemp", "melt", 1), _f("Spritzdruck_Max", "p_peak", 0), _f("Einspritzzeit", "t_fill", 3),
    _f("Dosierzeit", "t_dose", 2), _f("Massepolster", "cushion", 2), _f("Zykluszeit", "t_cycle", 2),
    _f("Umschaltdruck", "p_vp", 0), _f("Wkz_Ist_DS", "surf_fix", 1), _f("Wkz_Ist_BS", "surf_mov", 1),
    _f("Schliesskraft_Ist", "f_act", 0), _f("Dosiermoment", "torque", 0),
))

# Austrian/English-style maker: MPa, s, shot volumes in cm^3, rpm, both mold halves set and measured.
VALDOR = Maker("VALDOR", settings=(
    _f("nozzle_temp_sp", "t_nozzle", 0), _f("zone1_temp_sp", "t_z1", 0), _f("zone2_temp_sp", "t_z2", 0),
    _f("zone3_temp_sp", "t_z3", 0), _f("zone4_temp_sp", "t_z4", 0), _f("mold_fixed_sp", "mold_fix_set", 1),
    _f("mold_moving_sp", "mold_mov_set", 1), _f("inj_speed_sp", "v_inj", 1),
    _f("hold_press_sp_mpa", "hold", 1, 1 / BAR_PER_MPA), _f("hold_time_sp", "t_hold", 2),
    _f("cool_time_sp", "t_cool", 1), Field("shot_vol_sp_cm3", _volume("s_dose"), 2),
    Field("transfer_vol_sp_cm3", _volume("s_vp"), 2), _f("back_press_sp_mpa", "p_back", 1, 1 / BAR_PER_MPA),
    _f("screw_rpm_sp", "rpm", 0), _f("clamp_force_sp_kn", "f_clamp", 0),
), production=(
    _f("melt_temp", "melt", 1), _f("peak_press_mpa", "p_peak", 2, 1 / BAR_PER_MPA), _f("fill_time", "t_fill", 3),
    _f("recovery_time", "t_dose", 2), Field("cushion_cm3", _volume("cushion"), 3), _f("cycle_time", "t_cycle", 2),
    _f("transfer_press_mpa", "p_vp", 2, 1 / BAR_PER_MPA), _f("mold_fixed_act", "surf_fix", 1),
    _f("mold_moving_act", "surf_mov", 1), _f("inj_work_kj", "work", 3),
))

# Japanese-style maker: kgf/cm2, ms, speed in % of the machine's maximum; no melt thermocouple, one
# mold temperature (the moving half runs on a separate, unlogged unit).
KAZUMI = Maker("KAZUMI", settings=(
    _f("NZL_T_SET", "t_nozzle", 0), _f("H1_T_SET", "t_z1", 0), _f("H2_T_SET", "t_z2", 0),
    _f("H3_T_SET", "t_z3", 0), _f("MOLD_T_SET", "mold_fix_set", 1),
    Field("V1_PCT", lambda s: s["v_inj"] / s["v_max"] * 100, 1), _f("PH_KGF", "hold", 0, 1 / BAR_PER_KGF),
    _f("TH_MS", "t_hold", 0, 1000), _f("TC_MS", "t_cool", 0, 1000), _f("CHG_POS", "s_dose", 1),
    _f("VP_POS", "s_vp", 1), _f("BP_KGF", "p_back", 0, 1 / BAR_PER_KGF), _f("RPM_SET", "rpm", 0),
), production=(
    _f("PK_KGF", "p_peak", 0, 1 / BAR_PER_KGF), _f("TINJ_MS", "t_fill", 0, 1000), _f("TCHG_MS", "t_dose", 0, 1000),
    _f("CUSH_POS", "cushion", 2), _f("TCYC_MS", "t_cycle", 0, 1000), _f("VP_KGF", "p_vp", 0, 1 / BAR_PER_KGF),
    _f("MOLD_T_ACT", "surf_fix", 1), _f("FEED_T", "feed_t", 1),
))

MAKERS: dict[str, Maker] = {m.name: m for m in (HALDEN, VALDOR, KAZUMI)}
MAKER_ORDER: tuple[str, ...] = tuple(MAKERS)

# Identity columns and lot table names in three export habits.
NAMING: dict[str, dict[str, str]] = {
    "en": {"record_id": "shot_id", "timestamp": "shot_time", "facility": "machine", "item": "part_no",
           "maker": "vendor", "lot_date": "plan_date", "good_qty": "ok_qty", "bad_qty": "ng_qty",
           "machine": "IM-{:02d}", "id": "S{:08d}"},
    "de": {"record_id": "Schuss_Nr", "timestamp": "Zeitstempel", "facility": "Maschine", "item": "Artikel",
           "maker": "Hersteller", "lot_date": "Fertigungstag", "good_qty": "Gutteile", "bad_qty": "Ausschuss",
           "machine": "SGM{:02d}", "id": "{:09d}"},
    "jp": {"record_id": "SHOT_NO", "timestamp": "DATE_TIME", "facility": "MC_NO", "item": "HINBAN",
           "maker": "MAKER", "lot_date": "SEISAN_BI", "good_qty": "RYOHIN_SU", "bad_qty": "FURYO_SU",
           "machine": "No.{:d}", "id": "J{:08d}"},
}


# -- export ---------------------------------------------------------------------------------------
def _maker_columns(s: Arrays, makers: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Each maker's fields on its own rows; NaN on the other makers' rows."""
    n = len(s["machine"])
    out: dict[str, np.ndarray] = {}
    for name in makers:
        maker = MAKERS[name]
        rows = s["maker"] == MAKER_ORDER.index(name)
        sub = {key: v[rows] for key, v in s.items() if len(v) == n}
        for f in maker.settings + maker.production:
            col = np.full(n, np.nan)
            col[rows] = np.round(f.value(sub), f.decimals)
            out[f.column] = col
    return out


def _glitches(rng: np.random.Generator, k: Knobs, s: Arrays, cols: dict[str, np.ndarray], defect: np.ndarray) -> int:
    """Sensor spikes and zero readings on good shots (not defects: they must not be learnt as such)."""
    n = len(defect)
    hit = (rng.random(n) < k.glitch_rate) & ~defect
    kind = rng.integers(3, size=n)
    factor = np.select([kind == 0, kind == 1], [0.0, rng.uniform(1.4, 3.0, n)], rng.uniform(0.2, 0.6, n))
    pick = rng.random(n)
    for name in k.makers:
        prod = [f.column for f in MAKERS[name].production]
        rows = np.flatnonzero(hit & (s["maker"] == MAKER_ORDER.index(name)))
        which = (pick[rows] * len(prod)).astype(int)
        for j, column in enumerate(prod):
            at = rows[which == j]
            cols[column][at] = np.round(cols[column][at] * factor[at], 3)
    return int(hit.sum())


def _dropouts(rng: np.random.Generator, k: Knobs, s: Arrays, cols: dict[str, np.ndarray]) -> None:
    """Stretches where one sensor of one machine records nothing, and scattered empty cells."""
    machines = np.unique(s["machine"])
    for _ in range(k.dropout_events):
        m = int(rng.choice(machines))
        idx = np.flatnonzero(s["machine"] == m)
        prod = [f.column for f in MAKERS[MAKER_ORDER[s["maker"][idx[0]]]].production]
        start = int(rng.integers(len(idx)))
        cols[str(rng.choice(prod))][idx[start:start + int(rng.uniform(50, 1500))]] = np.nan
    for name in k.makers:
        for f in MAKERS[name].production:
            cols[f.column][rng.random(len(s["machine"])) < k.nan_cell_rate] = np.nan


def _lot_dates(k: Knobs, s: Arrays) -> np.ndarray:
    day = s["prod_day"] - s["prod_day"] % k.lot_days  # a two-day lot carries its first day's date
    return np.datetime_as_string(np.datetime64(k.start_date, "D") + day.astype("timedelta64[D]"), unit="D")


def _timestamps(k: Knobs, t_cal: np.ndarray) -> np.ndarray:
    ms = np.round(t_cal * 1000).astype("int64").astype("timedelta64[ms]")
    stamps = np.datetime64(k.start_date, "ms") + ms
    if k.timestamp_text:
        return np.datetime_as_string(stamps, unit="s").astype(object)
    return stamps.astype("datetime64[ns]")


def _records(k: Knobs, s: Arrays, machines: Machines, parts: Parts, order: np.ndarray,
             cols: dict[str, np.ndarray]) -> pd.DataFrame:
    names = NAMING[k.naming]
    n = len(order)
    ids = [names["id"].format(i + 1) for i in range(n)]
    frame = {
        names["record_id"]: ids,
        names["timestamp"]: _timestamps(k, s["t_cal"][order]),
        names["facility"]: np.asarray(machines.name, dtype=object)[s["machine"][order]],
        names["item"]: np.asarray(parts.name, dtype=object)[s["part"][order]],
        names["maker"]: np.asarray(MAKER_ORDER, dtype=object)[s["maker"][order]],
        names["lot_date"]: _lot_dates(k, s)[order].astype(object),
    }
    frame |= {c: v[order] for c, v in cols.items()}
    return pd.DataFrame(frame)


def _lots(k: Knobs, records: pd.DataFrame, defect: np.ndarray) -> pd.DataFrame:
    names = NAMING[k.naming]
    keys = [names["facility"], names["item"], names["lot_date"]]
    grouped = records[keys].assign(_bad=defect.astype(int)).groupby(keys, sort=True)["_bad"].agg(["size", "sum"])
    lots = grouped.reset_index()
    lots[names["good_qty"]] = (lots["size"] - lots["sum"]).astype("int64")
    lots[names["bad_qty"]] = lots["sum"].astype("int64")
    return lots.drop(columns=["size", "sum"])


def _schema(k: Knobs, name: str) -> PlantSchema:
    names = NAMING[k.naming]
    raw = {
        "name": name,
        **{role: names[role] for role in ("record_id", "timestamp", "facility", "item", "lot_date")},
        "maker": {"column": names["maker"]},
        "makers": {m: {"settings": [f.column for f in MAKERS[m].settings],
                       "production": [f.column for f in MAKERS[m].production]} for m in k.makers},
        "lots": {role: names[role] for role in ("facility", "item", "lot_date", "good_qty", "bad_qty")},
    }
    return parse_schema(raw, source=f"forge:{name}")


# -- the plant ------------------------------------------------------------------------------------
def _simulate(seed: int, shots: int, days: int, k: Knobs) -> tuple[Arrays, Machines, Parts, Recipes, int]:
    """Every per-shot state, in machine order (not yet the export)."""
    machines = _make_machines(_rng(seed, "machines"), k)
    part_size = _assign_parts(_rng(seed, "assign"), k, machines)
    parts = _make_parts(_rng(seed, "parts"), part_size)
    recipes = _make_recipes(_rng(seed, "recipes"), k, parts)
    s = _schedule(_rng(seed, "schedule"), k, shots, machines, recipes)
    _settings(_rng(seed, "settings"), k, s, machines, parts, recipes)
    used_days = _clock(_rng(seed, "clock"), k, s, parts, days)
    _warmup(s)
    _ambient(_rng(seed, "ambient"), s, used_days)
    _resin_lots(_rng(seed, "resin"), k, s, parts, used_days)
    _heater_faults(_rng(seed, "heaters"), k, s, used_days)
    _wear_states(_rng(seed, "wear"), k, s, machines, parts)
    _physics(_rng(seed, "physics"), s, machines, parts, recipes)
    return s, machines, parts, recipes, used_days


def forge_plant(seed: int = 0, shots: int = 200_000, days: int = 30, name: str | None = None, **knobs: Any) -> ProvingPlant:
    """A forge plant: ``shots`` shots over ``days`` production days, deterministic for ``seed``.

    ``knobs`` override :class:`Knobs` (machines, makers, defect_share, drift, lot_days, ...).
    """
    if shots < 500 or days < 1:
        raise ValueError("forge_plant: need at least 500 shots and one day")
    k = _knobs(knobs)
    name = name or f"forge_s{seed}"
    s, machines, parts, recipes, used_days = _simulate(seed, shots, days, k)
    defect, cause, scale = _draw_defects(_rng(seed, "defects"), k, s, parts, recipes)
    _footprints(_rng(seed, "footprints"), s, cause)
    cols = _maker_columns(s, k.makers)
    glitches = _glitches(_rng(seed, "glitches"), k, s, cols, defect)
    _dropouts(_rng(seed, "dropouts"), k, s, cols)
    order = np.argsort(s["t_cal"], kind="stable")  # the export is in clock order across machines
    records = _records(k, s, machines, parts, order, cols)
    id_col = NAMING[k.naming]["record_id"]
    cause_names = np.asarray(CAUSES + INVISIBLE + ("ok",), dtype=object)
    recipe_names = np.array([f"{parts.name[p]}/{st}" for p, st in zip(recipes.part, recipes.style)], dtype=object)
    labels = pd.DataFrame({"record_id": records[id_col].to_numpy(), "defect": defect[order].astype(int),
                           "cause": cause_names[cause[order]], "recipe": recipe_names[s["recipe"][order]]})
    lots = _lots(k, records, defect[order])
    notes = _notes(seed, shots, days, used_days, k, scale, defect, cause, glitches, machines, parts, recipes)
    return ProvingPlant(name=name, generator="forge", records=records, lots=lots, schema=_schema(k, name),
                        labels=labels, notes=notes)


def _notes(seed: int, shots: int, days: int, used_days: int, k: Knobs, scale: float, defect: np.ndarray,
           cause: np.ndarray, glitches: int, machines: Machines, parts: Parts, recipes: Recipes) -> dict[str, Any]:
    causes = CAUSES + INVISIBLE
    counts = np.bincount(cause[cause >= 0], minlength=len(causes))
    return {
        "seed": seed, "shots": shots, "days": days, "days_used": used_days, "knobs": asdict(k),
        "defect_share": float(defect.mean()), "causes": {c: int(n) for c, n in zip(causes, counts)},
        "invisible_defects": int(counts[len(CAUSES):].sum()), "glitches_on_good_shots": glitches,
        "machines": len(machines.name), "parts": len(parts.name), "recipes": len(recipes.part),
        "hazard_scale": scale,
        "fields": {m: {"settings": len(MAKERS[m].settings), "production": len(MAKERS[m].production)} for m in k.makers},
        "description": ("forge: independent injection-molding simulator; recipes switched per part and machine, "
                        "drifting set points, physics-driven production values, setting-dependent defects; "
                        "labels carry cause and recipe (truth for analysis only)."),
    }


# Named plants of the proving ground; each is meant to run at >= 200k shots.
FORGE_PLANTS: dict[str, dict[str, Any]] = {
    # three makers, one-day lots, day shift only: the mid case
    "forge_a": {"seed": 11, "shots": 200_000, "days": 30, "machines": 12, "defect_share": 0.015, "naming": "en"},
    # few busy machines into the night (shots after midnight carry the previous day's lot), strong drift, dirty
    "forge_b": {"seed": 23, "shots": 240_000, "days": 24, "machines": 9, "makers": ("HALDEN", "KAZUMI"),
                "defect_share": 0.03, "drift": 1.6, "day_start_hour": 14.0, "sunday_off": False,
                "campaign_shots": 1200.0, "naming": "de", "dropout_events": 10},
    # many machines, short runs, two-day lots, quiet process, clean plant, timestamps as text
    "forge_c": {"seed": 37, "shots": 200_000, "days": 30, "machines": 18, "makers": ("VALDOR", "KAZUMI"),
                "defect_share": 0.006, "drift": 0.6, "lot_days": 2, "campaign_shots": 450.0,
                "recipes_per_part": (2, 3), "naming": "jp", "timestamp_text": True, "invisible_share": 0.1},
}


def forge_named(name: str) -> ProvingPlant:
    """One of :data:`FORGE_PLANTS` by name."""
    spec = dict(FORGE_PLANTS[name])
    return forge_plant(spec.pop("seed"), spec.pop("shots"), spec.pop("days"), name=name, **spec)
