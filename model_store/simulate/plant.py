"""The plant definition: makers, machines, parts and each (machine, part)'s pool of settings.

Everything here depends on the seed and the plant's size only (not on the number of days or
shots), so :func:`simulate` and :func:`continue_plant` rebuild exactly the same plant and a
continuation runs the same machines, parts and settings as the history a model was trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from model_store.simulate import physics
from model_store.simulate.defects import SETTING_MECHANISMS, setting_hazards
from model_store.simulate.makers import MAKER_NAMES, MAKERS, SETPOINTS, SP, MakerSpec


@dataclass(frozen=True)
class Material:
    name: str
    melt_window: tuple[float, float]  # processing window of the resin, °C
    mold_window: tuple[float, float]  # recommended mold temperature, °C
    temp_sensitivity: float  # 1/°C: e-fold viscosity drop per this many °C (Arrhenius-like)
    viscosity: float  # relative flow resistance (PP = 1)
    pack_factor: float  # holding pressure the part needs / its peak injection pressure
    cooling_factor: float  # s/mm²: cooling time ≈ factor · wall² + 2 s


MATERIALS: tuple[Material, ...] = (
    Material("PP", (200, 250), (20, 50), 0.012, 1.0, 0.50, 2.0),
    Material("ABS", (220, 260), (50, 75), 0.018, 1.6, 0.60, 2.4),
    Material("PC", (280, 315), (80, 105), 0.020, 2.2, 0.65, 2.7),
    Material("PA66", (270, 300), (70, 95), 0.015, 0.9, 0.50, 2.1),
    Material("POM", (190, 215), (80, 100), 0.014, 1.3, 0.70, 2.3),
    Material("PBT", (235, 265), (60, 85), 0.016, 1.1, 0.60, 2.2),
    Material("HDPE", (200, 260), (20, 45), 0.010, 1.2, 0.55, 2.6),
)

# Machine size classes: clamp tonnage, screw diameter, dry cycle (clamp close/open + ejection), and
# the parts that fit them (projected area cm², part stroke in screw diameters, ideal fill time s).
SIZE_CLASSES: dict[str, dict[str, tuple[float, float]]] = {
    "S": {"tonnage": (80, 150), "screw": (28, 36), "dry": (2.4, 3.4), "area": (40, 200), "stroke": (0.9, 2.6), "fill": (0.4, 1.1)},
    "M": {"tonnage": (180, 280), "screw": (40, 50), "dry": (3.2, 4.4), "area": (150, 480), "stroke": (0.9, 2.8), "fill": (0.7, 1.8)},
    "L": {"tonnage": (350, 450), "screw": (55, 70), "dry": (4.2, 6.0), "area": (350, 850), "stroke": (1.0, 3.0), "fill": (1.2, 3.0)},
}
SIZE_SHARE = {"S": 0.35, "M": 0.40, "L": 0.25}

# Directions in which a non-standard setting departs from the nominal recipe, with the setting
# quantity it needs the maker to export. "fine" variants stay inside the window.
POOR_DIRECTIONS: dict[str, str] = {
    "cold": "t_zone1", "hot": "t_zone1", "slow": "v_inj", "fast": "v_inj",
    "low_hold": "p_hold", "high_hold": "p_hold", "cold_mold": "t_mold", "hot_mold": "t_mold",
    "short_cool": "t_cool", "short_hold": "t_hold", "small_dose": "s_dose",
    "low_limit": "p_limit", "low_back": "p_back",
}


@dataclass(frozen=True)
class PlantDefinition:
    """Static description of a plant. Tables are small (tens to hundreds of rows)."""

    seed: int
    facilities: pd.DataFrame  # facility, maker, size, tonnage, screw_d, dry_cycle, melt_offset, run_share, dedicated, load
    items: pd.DataFrame  # item, material, size, part volume/geometry, ideal windows, demand
    pairs: pd.DataFrame  # one row per (facility, item): its physics constants and demand weight
    settings: pd.DataFrame  # setting_id, pair, facility, item, maker, role, direction, weight, p_* hazards, cycle
    setpoints: np.ndarray  # (n_settings, len(SETPOINTS)) canonical set points, at the maker's resolution
    hazards: np.ndarray  # (n_settings, 5) per-shot probability of each setting-driven mechanism
    part: dict[str, np.ndarray]  # per pair: the constants physics.process needs (see _PART_KEYS)

    def part_constants(self, pair_idx: np.ndarray) -> dict[str, np.ndarray]:
        """The per-row ``part`` mapping :func:`physics.process` needs, for rows of pair indices."""
        return {k: v[pair_idx] for k, v in self.part.items()}

    def facility_pairs(self, facility_idx: int) -> np.ndarray:
        return np.flatnonzero(self.pairs["facility_idx"].to_numpy() == facility_idx)


_PART_KEYS = (
    "s_part", "v_nom", "p_target", "p_need", "t_freeze", "t_cool_need", "melt_ideal", "mold_ideal",
    "temp_sensitivity", "screw_d", "dry_cycle", "melt_offset", "heat_gain", "c0", "area", "difficulty",
)


def _round_to_maker(x: np.ndarray, maker: MakerSpec) -> np.ndarray:
    """Round exported set points to what the maker's controller can hold (keeps truth == export)."""
    x = x.copy()
    for f in maker.settings:
        x[SP[f.quantity]] = np.round(x[SP[f.quantity]] * f.scale, f.decimals) / f.scale
    return x


def _facilities(n: int, rng: np.random.Generator) -> pd.DataFrame:
    counts = {s: max(1, int(round(SIZE_SHARE[s] * n))) for s in SIZE_SHARE}
    while sum(counts.values()) > n:  # tiny plants: trim the largest class
        counts[max(counts, key=counts.get)] -= 1
    counts["M"] += n - sum(counts.values())
    sizes = rng.permutation(np.repeat(list(counts), list(counts.values())))
    makers = np.asarray(MAKER_NAMES)[rng.permutation(np.arange(n) % len(MAKER_NAMES))]
    rows = []
    for i, (size, maker) in enumerate(zip(sizes, makers)):
        c = SIZE_CLASSES[size]
        rows.append(
            {
                "facility": f"F{i + 1:02d}",
                "maker": maker,
                "size": size,
                "tonnage": float(round(rng.uniform(*c["tonnage"]), -1)),
                "screw_d": float(round(rng.uniform(*c["screw"]))),
                "dry_cycle": rng.uniform(*c["dry"]),
                # This barrel's melt runs hotter/colder than its zone readings suggest (probe
                # placement, screw wear): the same set points give a different melt per machine.
                "melt_offset": rng.normal(0.0, 2.5),
                # Share of weekdays it runs (planned maintenance, no orders).
                "run_share": rng.uniform(0.82, 0.98),
            }
        )
    return pd.DataFrame(rows)


def _items(n: int, fac: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    size_counts = fac["size"].value_counts().sort_index()
    classes = size_counts.index.to_numpy()
    class_p = size_counts.to_numpy() / size_counts.sum()
    ranks = rng.permutation(n) + 1
    rows = []
    for i in range(n):
        size = str(rng.choice(classes, p=class_p))
        c = SIZE_CLASSES[size]
        mat = MATERIALS[rng.integers(len(MATERIALS))]
        screw_ref = float(np.mean(c["screw"]))
        stroke = rng.uniform(*c["stroke"]) * screw_ref
        volume = stroke * np.pi * screw_ref**2 / 4 / 1000  # cm³
        thickness = rng.uniform(1.2, 3.5)
        area = rng.uniform(*c["area"])
        flow_length = 10.0 * np.sqrt(area) * rng.uniform(0.8, 1.8)
        # Flow resistance grows with flow length over wall thickness; stiffer resins need more.
        p_target = float(np.clip(8.0 * (flow_length / thickness) ** 0.55 * mat.viscosity**0.5 * rng.uniform(0.9, 1.1), 45, 150))
        lo, hi = mat.melt_window
        melt_ideal = (lo + hi) / 2 + rng.normal(0, (hi - lo) / 10)
        mlo, mhi = mat.mold_window
        p_need = p_target * mat.pack_factor * rng.uniform(0.9, 1.1)
        # A part is only designed for a machine class whose clamp can hold it with margin: shrink
        # the projected area until the cavity force fits in 75 % of the class's smallest clamp.
        f_need = area * (0.2 * p_target + 0.3 * p_need) * 0.0102
        area *= min(1.0, 0.75 * c["tonnage"][0] / f_need)
        rows.append(
            {
                "item": f"ITM-{i + 1:03d}",
                "material": mat.name,
                "size": size,
                "part_volume": volume,
                "wall_thickness": thickness,
                "flow_length": flow_length,
                "projected_area": area,
                "melt_ideal": melt_ideal,
                "mold_ideal": (mlo + mhi) / 2 + rng.normal(0, (mhi - mlo) / 10),
                "temp_sensitivity": mat.temp_sensitivity,
                "p_target": p_target,
                "p_need": p_need,
                "t_freeze": 0.8 + 0.9 * thickness**2,  # gate freeze grows with wall²
                "t_cool_need": mat.cooling_factor * thickness**2 * rng.uniform(0.9, 1.1) + 2.0,
                "fill_time_ideal": rng.uniform(*c["fill"]),
                # Clamp force needed at nominal: cavity pressure × projected area (t).
                "f_need": area * (0.2 * p_target + 0.3 * p_need) * 0.0102,
                # Demand is Zipf-like: a few runners make most of the volume.
                "demand": ranks[i] ** -1.0 * rng.lognormal(0, 0.3),
            }
        )
    return pd.DataFrame(rows)


def _assign(fac: pd.DataFrame, items: pd.DataFrame, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Which facilities run which items: 1-3 machines of the right size per item, every machine used."""
    load = np.zeros(len(fac))
    pairs: set[tuple[int, int]] = set()
    sizes = fac["size"].to_numpy()
    for i, size in enumerate(items["size"]):
        same = np.flatnonzero(sizes == size)
        k = min(int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25])), len(same))
        p = 1.0 / (1.0 + load[same]) ** 2
        for f in rng.choice(same, size=k, replace=False, p=p / p.sum()):
            pairs.add((int(f), i))
            load[f] += 1
    counts = np.bincount(items.index.to_numpy()[[i for _, i in pairs]], minlength=len(items)) if pairs else np.zeros(len(items))
    for f in np.flatnonzero(load == 0):  # an idle machine takes the least-spread part of its size
        same = np.flatnonzero(items["size"].to_numpy() == sizes[f])
        pool = same if len(same) else np.arange(len(items))
        i = int(pool[np.argmin(counts[pool] + rng.random(len(pool)) * 0.5)])
        pairs.add((int(f), i))
        counts[i] += 1
        load[f] += 1
    return sorted(pairs)


def _pairs(fac: pd.DataFrame, items: pd.DataFrame, assigned: list[tuple[int, int]], rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    per_item: dict[int, list[int]] = {}
    for j, (_, i) in enumerate(assigned):
        per_item.setdefault(i, []).append(j)
    share = np.zeros(len(assigned))
    for js in per_item.values():  # how the item's demand is split over its machines
        share[js] = rng.dirichlet(np.full(len(js), 1.5))
    for j, (f, i) in enumerate(assigned):
        F, I = fac.iloc[f], items.iloc[i]  # noqa: E741 - F and I: the facility and item rows the formulas below read
        screw_area = np.pi * F.screw_d**2 / 4  # mm²
        s_part = I.part_volume * 1000 / screw_area
        rows.append(
            {
                "facility_idx": f,
                "item_idx": i,
                "facility": F.facility,
                "item": I["item"],
                "maker": F.maker,
                "s_part": s_part,
                # Speed at which this screw delivers the part's ideal flow rate.
                "v_nom": float(np.clip(physics.FILL_SHARE * s_part / I.fill_time_ideal, 8.0, 300.0)),
                "p_target": I.p_target,
                "p_need": I.p_need,
                "t_freeze": I.t_freeze,
                "t_cool_need": I.t_cool_need,
                "melt_ideal": I.melt_ideal,
                "mold_ideal": I.mold_ideal,
                "temp_sensitivity": I.temp_sensitivity,
                "screw_d": F.screw_d,
                "dry_cycle": F.dry_cycle,
                "melt_offset": F.melt_offset,
                "heat_gain": 0.02 * (I.part_volume / 50.0) ** 0.3,
                "c0": float(np.clip(0.12 * s_part, 3.0, 10.0)),  # cushion the setter aims for, mm
                "area": I.projected_area,
                "f_need": I.f_need,
                "tonnage": F.tonnage,
                # Some molds are simply harder (gate design, venting): a per-pair hazard factor.
                "difficulty": rng.lognormal(0.0, 0.35),
                "weight": I.demand * share[j],
            }
        )
    return pd.DataFrame(rows)


def _nominal(pr: pd.Series, rng: np.random.Generator) -> np.ndarray:
    """The setter's standard recipe for a part on a machine: inside every window, with setter noise."""
    x = np.zeros(len(SETPOINTS))
    n_screw = float(np.clip(0.22 * 60000 / (np.pi * pr.screw_d) * rng.uniform(0.85, 1.1), 40, 250))
    p_back = rng.uniform(5.0, 11.0)
    shear = float(physics.shear_heating(np.array(n_screw), np.array(p_back)))
    a, c = rng.uniform(0, 5), rng.uniform(5, 12)  # zones 2 and 3 run cooler than the nozzle
    target = pr.melt_ideal + rng.normal(0, 1.5)
    z1 = target + physics.ZONE_WEIGHTS[1] * a + physics.ZONE_WEIGHTS[2] * c - shear - pr.melt_offset
    z4 = z1 - c - rng.uniform(5, 10)
    p_hold = pr.p_need * rng.uniform(1.0, 1.12)
    x[[SP[k] for k in ("t_zone1", "t_zone2", "t_zone3", "t_zone4", "t_zone5")]] = [z1, z1 - a, z1 - c, z4, z4 - rng.uniform(10, 20)]
    x[SP["t_mold"]] = pr.mold_ideal - 3.0 + rng.normal(0, 2.0)  # the melt heats the mold ~3 °C above set
    x[SP["v_inj"]] = pr.v_nom * rng.uniform(0.95, 1.05)
    x[SP["p_limit"]] = min(pr.p_target * rng.uniform(1.25, 1.5), 220.0)
    x[SP["p_hold"]] = p_hold
    x[SP["t_hold"]] = pr.t_freeze * rng.uniform(1.0, 1.25)
    x[SP["t_cool"]] = pr.t_cool_need * rng.uniform(1.0, 1.2)
    x[SP["s_dose"]] = pr.s_part * (1 + physics.PACK_SHARE * p_hold / pr.p_need) + pr.c0
    x[SP["n_screw"]] = n_screw
    x[SP["p_back"]] = p_back
    x[SP["f_clamp"]] = min(pr.f_need * rng.uniform(1.2, 1.5), pr.tonnage)
    return x


def _zones(maker: MakerSpec) -> list[int]:
    return [SP[q] for q in ("t_zone1", "t_zone2", "t_zone3", "t_zone4", "t_zone5") if q in maker.setting_quantities]


def _perturb(x0: np.ndarray, direction: str, strength: float, pr: pd.Series, maker: MakerSpec, rng: np.random.Generator) -> np.ndarray:
    """A setting that departs from the standard recipe in one direction (strength 1 = a poor recipe)."""
    x = x0.copy()
    k = strength
    u = lambda lo, hi: rng.uniform(lo, hi)
    if direction == "cold":
        x[_zones(maker)] -= k * u(12, 24)
    elif direction == "hot":
        x[_zones(maker)] += k * u(12, 24)
    elif direction == "slow":
        x[SP["v_inj"]] *= 1 - k * u(0.25, 0.45)
    elif direction == "fast":
        x[SP["v_inj"]] *= 1 + k * u(0.45, 0.8)
    elif direction == "low_hold":
        x[SP["p_hold"]] *= 1 - k * u(0.15, 0.3)
        if "t_hold" in maker.setting_quantities and rng.random() < 0.5:
            x[SP["t_hold"]] *= 1 - k * u(0.1, 0.3)
    elif direction == "high_hold":
        x[SP["p_hold"]] *= 1 + k * u(0.3, 0.5)
    elif direction == "cold_mold":
        x[SP["t_mold"]] -= k * u(15, 25)
    elif direction == "hot_mold":
        x[SP["t_mold"]] += k * u(15, 25)
    elif direction == "short_cool":
        x[SP["t_cool"]] *= 1 - k * u(0.2, 0.4)  # chasing output: the classic poor recipe
    elif direction == "short_hold":
        x[SP["t_hold"]] *= 1 - k * u(0.25, 0.45)
    elif direction == "small_dose":
        x[SP["s_dose"]] -= k * pr.c0 * u(0.7, 1.0)
    elif direction == "low_limit":
        x[SP["p_limit"]] = pr.p_target * (1 - k * u(0.12, 0.25))
    elif direction == "low_back":
        x[SP["p_back"]] = u(1.0, 2.5) / k
    elif direction == "fine":
        # A setter's alternative that stays inside the window: 2-3 small moves.
        # The barrel zones move together (one "temperature profile" knob).
        quantities = sorted({"t_zone" if q.startswith("t_zone") else q for q in maker.setting_quantities})
        for q in rng.choice(quantities, size=int(rng.integers(2, 4)), replace=False):
            if q == "t_zone":
                x[_zones(maker)] += rng.choice([-1, 1]) * u(3, 5)
            elif q == "t_mold":
                x[SP[q]] += rng.choice([-1, 1]) * u(3, 5)
            elif q in ("v_inj", "n_screw"):
                x[SP[q]] *= 1 + rng.choice([-1, 1]) * u(0.06, 0.12)
            elif q in ("p_hold", "p_limit"):
                x[SP[q]] *= 1 + u(0.0, 0.08)
            elif q in ("t_hold", "t_cool"):
                x[SP[q]] *= 1 + u(0.05, 0.2)
            elif q == "s_dose":
                x[SP[q]] += u(0.5, 2.0)
            elif q == "p_back":
                x[SP[q]] += rng.choice([-1, 1]) * u(1.0, 2.5)
    else:  # pragma: no cover - guarded by the callers
        raise ValueError(direction)
    return x


def _pool(
    pr: pd.Series, maker: MakerSpec, low_runner: bool, rng: np.random.Generator, extra_settings: int = 0
) -> list[tuple[str, str, np.ndarray, float]]:
    """2-5 settings (plus ``extra_settings``) (role, direction, set points, usage weight) for one (facility, item).

    High runners have a longer tuning history, hence more recipes, than parts made now and then;
    a dedicated line sticks to its proven standard recipe most of the time.
    """
    k = int(rng.choice([2, 3, 4, 5], p=[0.45, 0.4, 0.15, 0.0] if low_runner else [0.1, 0.3, 0.35, 0.25])) + extra_settings
    poor = [d for d, q in POOR_DIRECTIONS.items() if q in maker.setting_quantities]
    nominal = _nominal(pr, rng)
    x0, direction = nominal, "standard"
    if rng.random() < 0.2:  # some lines run a mediocre recipe as their standard one
        direction = str(rng.choice(poor))
        x0 = _perturb(nominal, direction, 0.6, pr, maker, rng)
    share = rng.uniform(0.7, 0.9) if pr.dedicated else rng.uniform(0.5, 0.85)
    pool = [("standard", direction, _round_to_maker(x0, maker), share)]
    has_trial = k >= 3 and rng.random() < 0.5
    rest = rng.dirichlet(np.full(k - 1, 2.0)) * (1 - pool[0][3])
    for j in range(1, k):
        trial = has_trial and j == k - 1
        for _ in range(10):  # redraw the rare variant that rounds onto an existing setting
            d = "fine" if rng.random() < 0.3 else str(rng.choice(poor))
            # Poor variants depart from the recipe in use; fine ones from the setter's clean recipe.
            base, strength = (nominal, 1.0) if d == "fine" else (pool[0][2], rng.uniform(0.8, 1.2))
            x = _round_to_maker(_perturb(base, d, strength, pr, maker, rng), maker)
            if all(not np.allclose(x, other[2]) for other in pool):
                break
        # A trial is a short test of a recipe; it gets a small share and short runs.
        pool.append(("trial" if trial else "alternative", d, x, 0.03 if trial else float(rest[j - 1])))
    return pool


def define_plant(seed: int, facilities: int = 24, items: int = 48, extra_settings: int = 0) -> PlantDefinition:
    """Build the plant for a seed: deterministic, independent of how long it is then simulated."""
    return _define_plant_cached(int(seed), int(facilities), int(items), int(extra_settings))


@lru_cache(maxsize=4)
def _define_plant_cached(seed: int, n_facilities: int, n_items: int, extra_settings: int = 0) -> PlantDefinition:
    rng = np.random.default_rng([seed, 0xDEF])
    fac = _facilities(n_facilities, rng)
    items = _items(n_items, fac, rng)
    pairs = _pairs(fac, items, _assign(fac, items, rng), rng)

    # High-runner lines: a few machines are dedicated to one high-volume part and run it around the
    # clock; they produce the largest (machine, part, setting) groups.
    pairs["dedicated"] = False
    taken: set[int] = set()
    for j in pairs.sort_values("weight", ascending=False).index:
        if len(taken) >= max(1, round(0.12 * len(fac))):
            break
        if pairs.at[j, "facility_idx"] not in taken:
            taken.add(int(pairs.at[j, "facility_idx"]))
            pairs.at[j, "dedicated"] = True

    rows, points = [], []
    median_weight = pairs["weight"].median()
    for j, pr in pairs.iterrows():
        maker = MAKERS[pr.maker]
        for s, (role, direction, x, weight) in enumerate(_pool(pr, maker, pr.weight < median_weight, rng, extra_settings)):
            rows.append(
                {
                    "setting_id": f"{pr.facility}-{pr['item']}-S{s + 1}",
                    "pair": j,
                    "facility": pr.facility,
                    "item": pr["item"],
                    "maker": pr.maker,
                    "role": role,
                    "direction": direction,
                    "weight": weight,
                }
            )
            points.append(x)
    settings = pd.DataFrame(rows)
    setpoints = np.vstack(points)
    part = {k: pairs[k].to_numpy(dtype=float)[settings["pair"].to_numpy()] for k in _PART_KEYS}
    steady = physics.process(setpoints, part)
    hazards = setting_hazards(setpoints, steady, part)
    for m, name in enumerate(SETTING_MECHANISMS):
        settings[f"p_{name}"] = hazards[:, m]
    settings["cycle_time"] = steady["a_t_cycle"]

    # Demand per machine (for the schedule): the volume its parts ask of it; dedicated lines run flat out.
    load = pairs.groupby("facility_idx")["weight"].sum().reindex(range(len(fac)), fill_value=0.0).to_numpy()
    fac["dedicated"] = np.isin(np.arange(len(fac)), sorted(taken))
    fac["load"] = np.where(fac["dedicated"], 3.0 * load, load)
    pairs["max_cycle"] = settings.groupby("pair")["cycle_time"].max().to_numpy()
    part_by_pair = {k: pairs[k].to_numpy(dtype=float) for k in _PART_KEYS}
    return PlantDefinition(seed, fac, items, pairs, settings, setpoints, hazards, part_by_pair)
