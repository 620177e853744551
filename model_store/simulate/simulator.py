"""Generate a plant's production history (and continue it later) from a plant definition.

Pipeline per run of days (all vectorised over shots after the small schedule loop):

  schedule ─► per-shot set points (with operator nudges) ─► slow drift, warm-up, barrel transients,
  failing heaters ─► defect causes (setting hazards × shot state) ─► signatures ─► physics ─►
  maker export (names, units, resolution) ─► sensor glitches, gaps ─► timestamps ─► lots and truth.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from model_store.schema import PlantSchema
from model_store.simulate import defects, physics
from model_store.simulate.config import SimulationConfig, SimulationConfigError
from model_store.simulate.defects import CAUSES, NONE, NONE_LABEL, SENSOR_SPIKE_LABEL
from model_store.simulate.makers import FACILITY_COL, ITEM_COL, LOT_DATE_COL, MAKER_COL, MAKERS, SHOT_ID, SP, TIMESTAMP, plant_schema
from model_store.simulate.plant import PlantDefinition, define_plant
from model_store.simulate.production import SETTING_CHANGE, Schedule, build_schedule, expand

Progress = Callable[[str, float], None]

TWEAK_SHARE = 0.12  # segments where the operator nudged one set point by one controller step
ZONE_SETTLE_SHOTS = 25.0  # barrel zones settle to a new set point within a few dozen shots
MICRO_STOP_RATE = 0.002  # shots followed by a short unplanned stop (jam, robot fault, material)
HEATER_LENGTH = (300, 1200)  # shots until a failing heater band is noticed and replaced
HEATER_DEFICIT = (8.0, 22.0)  # °C the zone has lost by then


@dataclass
class SimulatedPlant:
    """A simulated period of one plant: what the plant hands over, plus the hidden truth.

    ``records``, ``lots`` and ``schema`` are all a real plant would give; ``labels`` and
    ``settings`` exist only because this is a simulation and serve evaluation.
    """

    records: pd.DataFrame  # the raw MES export (plant column names; other makers' columns NaN)
    lots: pd.DataFrame  # facility, item, lot_date, good_qty, bad_qty
    labels: pd.DataFrame  # evaluation only: record_id, defect, cause, setting_id, severity
    settings: pd.DataFrame  # evaluation only: one row per true setting, with its true defect probability
    schema: PlantSchema  # maps ``records``
    config: SimulationConfig = field(default_factory=SimulationConfig)
    first_day: int = 0  # day index (from config.start) of the first simulated day
    n_days: int = 0

    @property
    def next_day(self) -> int:
        return self.first_day + self.n_days


def simulate(config: SimulationConfig, progress: Progress | None = None) -> SimulatedPlant:
    """Simulate ``config.days`` days of the plant defined by ``config.seed``."""
    return _generate(config, first_day=0, n_days=config.days, shots=config.shots, boost=1.0, progress=progress)


def continue_plant(
    source: SimulatedPlant | SimulationConfig,
    days: int = 1,
    shots: int | None = None,
    defect_boost: float = 1.0,
    first_day: int | None = None,
    progress: Progress | None = None,
) -> SimulatedPlant:
    """Later days of the same plant: same machines, parts and setting pools, new shots and ids.

    ``shots`` defaults to the plant's usual daily volume × ``days``. ``defect_boost`` multiplies
    every defect hazard (a bad day for a live demo). ``first_day`` defaults to the day after
    ``source`` ends (after ``config.days`` when given a config).
    """
    config = source.config if isinstance(source, SimulatedPlant) else source
    if first_day is None:
        first_day = source.next_day if isinstance(source, SimulatedPlant) else config.days
    if days < 1:
        raise SimulationConfigError(f"days must be at least 1, got {days}")
    if defect_boost < 0:
        raise SimulationConfigError(f"defect_boost must not be negative, got {defect_boost}")
    if shots is None:
        shots = max(1000, int(round(config.shots / config.days * days)))
    return _generate(config, first_day=first_day, n_days=days, shots=shots, boost=defect_boost, progress=progress)


def _drift(in_block: np.ndarray, block: np.ndarray, n_blocks: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth, bounded slow drift per machine-day: two sinusoids with random periods and phases.

    The argument is the shot's position in its machine-day, so the drift spans hundreds of shots
    (an hour or more): slow enough that a model sees it as normal variation, not as an anomaly.
    """
    out = np.zeros(len(in_block))
    for period_lo, period_hi in ((300, 900), (1200, 4000)):
        period = rng.uniform(period_lo, period_hi, n_blocks)[block]
        phase = rng.uniform(0, 2 * np.pi, n_blocks)[block]
        out += amplitude * np.sin(2 * np.pi * in_block / period + phase)
    return out / np.sqrt(2)


def _generate(config: SimulationConfig, first_day: int, n_days: int, shots: int, boost: float, progress: Progress | None) -> SimulatedPlant:
    report = progress or (lambda stage, fraction: None)
    report("defining plant", 0.0)
    defn = define_plant(config.seed, config.facilities, config.items, config.extra_settings)
    rng = np.random.default_rng([config.seed, 1, first_day, n_days, shots])

    report("planning production", 0.05)
    sched = build_schedule(defn, config.start, first_day, n_days, shots, config.sunday_run_share, rng)
    if sched.total == 0:
        raise SimulationConfigError("the plan has no shots; raise shots or days")
    out = generate_shots(defn, config, sched, first_day, n_days, boost, rng, report=report)
    settings = settings_truth(defn, out.setting_shots, out.setting_defects, boost * config.defect_scale)
    report("done", 1.0)
    return SimulatedPlant(out.records, out.lots, out.labels, settings, plant_schema(), config, first_day, n_days)


@dataclass
class Shots:
    """The shots of one slice of a schedule: the export, its lots and labels, and per true
    setting how many shots (and defects) the slice made (for :func:`settings_truth`)."""

    records: pd.DataFrame
    lots: pd.DataFrame
    labels: pd.DataFrame
    setting_shots: np.ndarray  # (n_settings,) int64
    setting_defects: np.ndarray  # (n_settings,) int64


def generate_shots(
    defn: PlantDefinition,
    config: SimulationConfig,
    sched: Schedule,
    first_day: int,
    n_days: int,
    boost: float,
    rng: np.random.Generator,
    lot_factor: np.ndarray | None = None,
    report: Callable[[str, float], None] = lambda stage, fraction: None,
) -> Shots:
    """Every shot of ``sched`` (days ``first_day`` .. ``first_day + n_days - 1``), drawn from ``rng``.

    ``lot_factor`` (items, n_days): each item's resin lot viscosity factor per day; drawn from
    ``rng`` when not given (a whole run), given by the caller when one day is generated in
    several slices that must share their resin lots (:mod:`model_store.simulate.stream`).
    """
    idx = expand(sched)
    seg = idx.segment
    n = len(seg)
    n_seg = len(sched.shots)
    n_blocks = len(sched.block_start_s)
    block = sched.block[seg]
    setting = sched.setting[seg]
    pair = sched.pair[seg]
    part = defn.part_constants(pair)
    seg_maker = defn.settings["maker"].to_numpy()[sched.setting]

    report("set points", 0.15)
    seg_sp = defn.setpoints[sched.setting].copy()
    for s in np.flatnonzero(rng.random(n_seg) < TWEAK_SHARE):
        # One controller step on one exported field: a new raw combination, the same true setting.
        f = MAKERS[seg_maker[s]].settings[rng.integers(len(MAKERS[seg_maker[s]].settings))]
        seg_sp[s, SP[f.quantity]] += rng.choice([-1.0, 1.0]) * f.step
    sp = seg_sp[seg]

    report("process state", 0.25)
    k = idx.in_segment.astype(float)
    zones = [SP["t_zone1"], SP["t_zone2"], SP["t_zone3"]]
    has_prev = sched.prev_setting >= 0
    prev_sp = np.where(has_prev[:, None], defn.setpoints[np.maximum(sched.prev_setting, 0)], seg_sp)
    settle = np.exp(-k / ZONE_SETTLE_SHOTS)
    zone_dev = (prev_sp[:, zones] - seg_sp[:, zones])[seg] * settle[:, None]
    melt_transient = zone_dev @ physics.ZONE_WEIGHTS

    # Mold warm-up: after a start or a mold change the mold is cold and takes ~a hundred shots.
    kind = sched.kind
    warm0 = np.where(kind == SETTING_CHANGE, prev_sp[:, SP["t_mold"]] - seg_sp[:, SP["t_mold"]], -rng.uniform(8, 18, n_seg))
    tau = np.where(kind == SETTING_CHANGE, rng.uniform(30, 60, n_seg), rng.uniform(40, 100, n_seg))
    mold_dev = warm0[seg] * np.exp(-k / tau[seg])

    # Failing heater bands: a zone slowly loses temperature until someone notices.
    heater = np.zeros(n)
    n_episodes = rng.poisson(config.heater_drifts_per_100k * n / 100_000)
    long_segs = np.flatnonzero(sched.shots >= 400)
    seg_first = np.cumsum(sched.shots) - sched.shots
    for s in rng.choice(long_segs, size=min(n_episodes, len(long_segs)), replace=False) if len(long_segs) else []:
        length = int(rng.integers(*HEATER_LENGTH))
        start = int(rng.integers(0, max(1, sched.shots[s] // 2)))
        stop = min(start + length, int(sched.shots[s]))
        ramp = np.linspace(0.0, rng.uniform(*HEATER_DEFICIT) * (stop - start) / length, stop - start)
        zone = int(rng.integers(0, 3))
        zone_dev[seg_first[s] + start: seg_first[s] + stop, zone] -= ramp
        heater[seg_first[s] + start: seg_first[s] + stop] = ramp

    if lot_factor is None:
        lot_factor = rng.lognormal(0.0, 0.025, (len(defn.items), n_days))  # a new resin lot every day
    item_idx = defn.pairs["item_idx"].to_numpy()[pair]
    in_block = idx.in_block.astype(float)
    hours = in_block * defn.settings["cycle_time"].to_numpy()[setting] / 3600.0  # rough time into the shift
    oil_base = rng.normal(36.0, 2.0, n_blocks)[block]
    dist = physics.Disturbance(
        zone=zone_dev,
        melt=_drift(in_block, block, n_blocks, 0.8, rng),
        mold=mold_dev + _drift(in_block, block, n_blocks, 0.6, rng),
        viscosity=lot_factor[item_idx, sched.day[seg] - first_day] * (1 + _drift(in_block, block, n_blocks, 0.02, rng)),
        # Hydraulic oil warms up over the first hours of the day.
        oil=oil_base + 10.0 * (1 - np.exp(-hours / 1.5)) + _drift(in_block, block, n_blocks, 1.0, rng),
        cushion=_drift(in_block, block, n_blocks, 0.12, rng),
    )

    report("defects", 0.35)
    hazards = defn.hazards[setting]
    cause = defects.draw_causes(hazards, melt_transient, mold_dev, heater, boost * config.defect_scale, rng)
    # Severity spreads from barely visible to gross: some defects hide in the noise.
    severity = np.where(cause != NONE, rng.uniform(0.3, 1.6, n), 0.0)
    near = defects.near_misses(cause, hazards, rng)
    sig_mech = np.where(cause != NONE, cause, near)
    sig_sev = np.where(cause != NONE, severity, np.where(near != NONE, rng.uniform(0.1, 0.4, n), 0.0))
    defects.apply_signature(dist, defects.signature(sig_mech, sig_sev, part["c0"], rng))

    report("physics", 0.45)
    actual = physics.process(sp, part, dist, rng)

    report("timestamps", 0.6)
    dt = actual["a_t_cycle"] + np.where(rng.random(n) < MICRO_STOP_RATE, rng.exponential(360.0, n), 0.0)
    dt[seg_first] += sched.gap_s
    elapsed = np.cumsum(dt) - dt  # seconds from the run's first shot to each shot's start
    block_first_shot = seg_first[np.flatnonzero(np.r_[True, sched.block[1:] != sched.block[:-1]])]
    elapsed -= elapsed[block_first_shot][block]
    day = sched.day[seg]
    ms = np.round((day * 86400.0 + sched.block_start_s[block] + elapsed) * 1000.0).astype(np.int64)
    start = np.datetime64(config.start, "ms")
    timestamp = start + ms.astype("timedelta64[ms]")

    report("export", 0.7)
    fac_idx = sched.facility[seg]
    facility_names = defn.facilities["facility"].to_numpy(dtype=object)
    facility = facility_names[fac_idx]
    maker = defn.facilities["maker"].to_numpy(dtype=object)[fac_idx]
    item = defn.pairs["item"].to_numpy(dtype=object)[pair]
    days = np.datetime64(config.start, "D") + np.arange(first_day, first_day + n_days)
    lot_date = np.array([str(d) for d in days], dtype=object)[day - first_day]
    # MES shot ids: machine, lot day and the machine's shot counter for that day.
    compact = np.array([str(d).replace("-", "") for d in days], dtype=object)
    block_day = np.zeros(n_blocks, dtype=np.int64)
    block_fac = np.zeros(n_blocks, dtype=np.int64)
    block_day[sched.block], block_fac[sched.block] = sched.day - first_day, sched.facility
    prefix = facility_names[block_fac] + "-" + compact[block_day] + "-"
    counter = np.array([f"{i:05d}" for i in range(1, int(idx.in_block.max()) + 2)], dtype=object)
    shot_id = prefix[block] + counter[idx.in_block]

    order = np.lexsort((fac_idx, ms))  # export order: time, then machine
    numeric, spiked = _export(sp, actual, maker, cause, order, config, rng)
    cause_label = np.asarray((*CAUSES, NONE_LABEL), dtype=object)[cause]
    cause_label[spiked] = SENSOR_SPIKE_LABEL

    report("assembling", 0.85)
    item_out = item.copy()
    item_out[rng.random(n) < config.missing_item_rate] = None
    common = {SHOT_ID: shot_id, TIMESTAMP: timestamp, MAKER_COL: maker, FACILITY_COL: facility, ITEM_COL: item_out, LOT_DATE_COL: lot_date}
    records = numeric
    for position, (name, values) in enumerate(common.items()):
        records.insert(position, name, values[order])

    setting_ids = defn.settings["setting_id"].to_numpy(dtype=object)
    defect = (cause != NONE).astype(np.int8)
    labels = pd.DataFrame(
        {
            "record_id": shot_id[order],
            "defect": defect[order],
            "cause": cause_label[order],
            "setting_id": setting_ids[setting][order],
            "severity": np.round(severity, 3)[order],
        }
    )
    truth = pd.DataFrame({"facility": facility, "item": item, "lot_date": lot_date, "defect": defect})
    lots = truth.groupby(["facility", "item", "lot_date"], sort=True)["defect"].agg(["size", "sum"]).reset_index()
    lots["good_qty"] = (lots["size"] - lots["sum"]).astype("int64")
    lots["bad_qty"] = lots["sum"].astype("int64")
    lots = lots[["facility", "item", "lot_date", "good_qty", "bad_qty"]]

    n_settings = len(defn.settings)
    return Shots(records, lots, labels, np.bincount(setting, minlength=n_settings).astype(np.int64),
                 np.bincount(setting, weights=defect, minlength=n_settings).astype(np.int64))


def _export(
    sp: np.ndarray,
    actual: dict[str, np.ndarray],
    maker: np.ndarray,
    cause: np.ndarray,
    order: np.ndarray,
    config: SimulationConfig,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Each maker's own columns (names, units, resolution); sensor glitches; blanked values.

    Returns the numeric frame in export ``order`` (other makers' columns NaN on a row; one float
    block, filled in place, so a 500k-shot plant costs one copy of its values) and the mask of
    spiked shots (in shot order).
    """
    n = len(sp)
    names = [f.name for spec in MAKERS.values() for f in (*spec.settings, *spec.production)]
    column = {name: j for j, name in enumerate(names)}
    block_out = np.full((n, len(names)), np.nan)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    spiked = np.zeros(n, dtype=bool)
    for spec in MAKERS.values():
        rows = np.flatnonzero(maker == spec.name)
        out_rows = position[rows]
        block = {}
        for f in spec.settings:
            block[f.name] = np.round(sp[rows, SP[f.quantity]] * f.scale, f.decimals)
        for f in spec.production:
            block[f.name] = np.round(actual[f.quantity][rows] * f.scale, f.decimals)
        # A sensor glitch: one production value of a good shot jumps, drops or reads zero.
        hit = np.flatnonzero((cause[rows] == NONE) & (rng.random(len(rows)) < config.sensor_spike_rate))
        which = rng.integers(0, len(spec.production), len(hit))
        kind = rng.random(len(hit))
        factor = np.where(kind < 0.6, rng.uniform(1.4, 2.5, len(hit)), np.where(kind < 0.85, rng.uniform(0.1, 0.6, len(hit)), 0.0))
        for j, f in enumerate(spec.production):
            sel = hit[which == j]
            block[f.name][sel] = np.round(block[f.name][sel] * factor[which == j], f.decimals)
        spiked[rows[hit]] = True
        # Gaps: a value the MES failed to record (communication loss, buffer overrun).
        for name, values in block.items():
            values[rng.random(len(rows)) < config.missing_rate] = np.nan
            block_out[out_rows, column[name]] = values
    return pd.DataFrame(block_out, columns=names, copy=False), spiked


def settings_truth(defn: PlantDefinition, shots: np.ndarray, bad: np.ndarray, scale: float) -> pd.DataFrame:
    """One row per true setting: its set points (as exported), true hazards, and realised volume
    (``shots`` and ``bad``: shots and defective shots per setting)."""
    table = defn.settings[["setting_id", "maker", "facility", "item", "role", "direction"]].copy()
    maker = table["maker"].to_numpy()
    for spec in MAKERS.values():
        rows = maker == spec.name
        for f in spec.settings:
            col = np.full(len(table), np.nan)
            col[rows] = np.round(defn.setpoints[rows, SP[f.quantity]] * f.scale, f.decimals)
            table[f.name] = col
    p = defn.hazards * scale
    total = p.sum(axis=1, keepdims=True)
    p = np.where(total > 0.6, p * 0.6 / np.maximum(total, 1e-12), p)
    for m, name in enumerate(defects.SETTING_MECHANISMS):
        table[f"p_{name}"] = p[:, m]
    table["true_defect_prob"] = p.sum(axis=1)
    table["shots"] = shots
    table["defects"] = bad.astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        table["observed_defect_rate"] = np.where(shots > 0, bad / np.maximum(shots, 1), np.nan)
    table["expected_cycle_time"] = defn.settings["cycle_time"].round(2)
    return table
