"""Day-by-day production plan: which machine runs which part under which setting, and for how long.

The plan is a short list of *segments* (a run of consecutive shots of one setting on one machine),
built with a small Python loop over machine-days (hundreds), then expanded to per-shot index arrays
with NumPy. What makes it realistic, and why the downstream pipeline needs it:

* volume is uneven: Zipf-like part demand and busy machines give (machine, part, setting) groups
  from a few hundred to tens of thousands of shots (small / medium / large model groups);
* a machine runs one or two parts a day, keeps yesterday's mold most days (campaigns), and pays a
  mold change (about an hour) when it switches part;
* the setting changes *within* days: the setter tries an alternative, goes back to the standard;
  trial recipes get short runs only;
* Sundays are short-staffed; the night shift's shots belong to the day's lot (lot_date) even
  after midnight.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np

from model_store.simulate.plant import PlantDefinition

DAY_START_S = 6 * 3600  # first shift starts at 06:00
DAY_LENGTH_S = 22.5 * 3600  # last shot by 04:30 next morning, before the next lot day starts
MOLD_CHANGE_MIN = (40, 110)  # minutes idle when the machine switches part
SETTING_CHANGE_MIN = (4, 25)  # minutes idle while the setter changes and checks a recipe
MIN_SEGMENT = 60  # a setting is kept for at least this many shots once tried
DAY_START, MOLD_CHANGE, SETTING_CHANGE = 0, 1, 2  # how a segment begins


@dataclass
class Schedule:
    """Segments in time order per machine-day; every array has one entry per segment."""

    day: np.ndarray  # absolute day index from the plant's start date
    block: np.ndarray  # machine-day id (segments of one machine on one lot day share it)
    facility: np.ndarray
    pair: np.ndarray
    setting: np.ndarray
    prev_setting: np.ndarray  # setting of the previous segment on the same mold, -1 if none
    kind: np.ndarray  # DAY_START, MOLD_CHANGE or SETTING_CHANGE
    gap_s: np.ndarray  # idle seconds before the first shot of the segment
    shots: np.ndarray
    block_start_s: np.ndarray  # per block: seconds after lot-day midnight of its first shot

    @property
    def total(self) -> int:
        return int(self.shots.sum())


@dataclass
class ShotIndex:
    """Per-shot positions in the schedule (arrays of length ``schedule.total``)."""

    segment: np.ndarray
    in_segment: np.ndarray  # 0 for the first shot of its segment
    in_block: np.ndarray  # 0 for the first shot of its machine-day


def _water_fill(raw: np.ndarray, total: float, cap: np.ndarray) -> np.ndarray:
    """Share ``total`` proportionally to ``raw`` without exceeding ``cap`` (overflow goes to the rest)."""
    capped = np.zeros(raw.shape, dtype=bool)
    alloc = np.zeros(raw.shape)
    for _ in range(20):
        free = ~capped & (raw > 0)
        budget = total - cap[capped].sum()
        if not free.any() or budget <= 0:
            break
        alloc = np.where(capped, cap, np.where(free, budget * raw / raw[free].sum(), 0.0))
        over = free & (alloc > cap)
        if not over.any():
            break
        capped |= over
    return np.minimum(alloc, cap)


def _split(n: int, parts: int, rng: np.random.Generator) -> list[int]:
    """Split ``n`` shots into ``parts`` uneven runs of at least MIN_SEGMENT."""
    parts = max(1, min(parts, n // MIN_SEGMENT))
    rest = n - parts * MIN_SEGMENT
    sizes = MIN_SEGMENT + np.floor(rest * rng.dirichlet(np.full(parts, 1.5))).astype(int)
    sizes[-1] += n - sizes.sum()
    return [int(s) for s in sizes]


def build_schedule(
    defn: PlantDefinition,
    start: str,
    first_day: int,
    n_days: int,
    shots: int,
    sunday_run_share: float,
    rng: np.random.Generator,
) -> Schedule:
    fac = defn.facilities
    settings = defn.settings
    n_fac = len(fac)
    days = first_day + np.arange(n_days)
    weekday = (date.fromisoformat(start).weekday() + days) % 7

    # Shots per machine-day: its parts' demand, day-to-day noise, Sundays mostly off, and never
    # more than the machine can make in a day at its slowest recipe.
    run_p = np.where(weekday[None, :] == 6, sunday_run_share, fac["run_share"].to_numpy()[:, None])
    runs = rng.random((n_fac, n_days)) < run_p
    raw = fac["load"].to_numpy()[:, None] * rng.lognormal(0.0, 0.25, (n_fac, n_days)) * runs
    slowest = defn.pairs.groupby("facility_idx")["max_cycle"].max().reindex(range(n_fac)).to_numpy()
    idle = MOLD_CHANGE_MIN[1] * 60 + 3 * SETTING_CHANGE_MIN[1] * 60
    cap = np.floor((DAY_LENGTH_S - 2400 - idle) / (slowest * 1.04))[:, None] * np.ones((1, n_days))
    per_day = np.floor(_water_fill(raw, float(shots), cap)).astype(int)
    per_day[per_day < MIN_SEGMENT] = 0

    fac_pairs = [defn.facility_pairs(f) for f in range(n_fac)]
    pair_w = defn.pairs["weight"].to_numpy()
    set_pair = settings["pair"].to_numpy()
    set_w = settings["weight"].to_numpy()
    trial = (settings["role"] == "trial").to_numpy()
    pair_settings = [np.flatnonzero(set_pair == p) for p in range(len(defn.pairs))]
    standard = np.array([ps[0] for ps in pair_settings])  # the pool's first setting is the standard
    last_pair = np.full(n_fac, -1)
    last_setting = np.full(len(defn.pairs), -1)

    dedicated = np.full(n_fac, -1)
    ded = defn.pairs.index[defn.pairs["dedicated"]].to_numpy()
    dedicated[defn.pairs["facility_idx"].to_numpy()[ded]] = ded
    used = np.zeros(len(settings), dtype=bool)

    def draw_setting(p: int, exclude: int = -1) -> int:
        cand = pair_settings[p][pair_settings[p] != exclude]
        # A recipe not yet tried this period is more likely to be tried next (setters experiment).
        w = set_w[cand] * np.where(used[cand], 1.0, 4.0)
        pick = int(rng.choice(cand, p=w / w.sum()))
        used[pick] = True
        return pick

    seg: dict[str, list[int]] = {k: [] for k in ("day", "block", "facility", "pair", "setting", "prev_setting", "kind", "gap_s", "shots")}
    block_start: list[float] = []

    def add(day: int, block: int, f: int, p: int, s: int, prev: int, kind: int, gap: float, n: int) -> None:
        for key, value in zip(seg, (day, block, f, p, s, prev, kind, int(gap), n)):
            seg[key].append(value)

    block = 0
    for di, day in enumerate(days):
        for f in range(n_fac):
            n = int(per_day[f, di])
            if n == 0:
                continue
            pairs_f = fac_pairs[f]
            # Low runners get their turn too: the choice is flatter than the demand.
            w = pair_w[pairs_f] ** 0.7 / (pair_w[pairs_f] ** 0.7).sum()
            if dedicated[f] >= 0 and rng.random() < 0.85:  # a high-runner line keeps its part
                first = int(dedicated[f])
            elif last_pair[f] >= 0 and rng.random() < 0.6:  # campaigns: yesterday's mold stays on
                first = int(last_pair[f])
            else:
                first = int(rng.choice(pairs_f, p=w))
            plan = [(first, n)]
            two_parts = 0.12 if dedicated[f] >= 0 else 0.35
            if len(pairs_f) > 1 and n >= 400 and rng.random() < two_parts:
                others = pairs_f[pairs_f != first]
                second = int(rng.choice(others, p=pair_w[others] / pair_w[others].sum()))
                n1 = int(n * rng.uniform(0.35, 0.75))
                plan = [(first, n1), (second, n - n1)]
            block_start.append(DAY_START_S + rng.normal(0, 600))
            for r, (p, n_run) in enumerate(plan):
                kind, gap = (DAY_START, 0.0) if r == 0 else (MOLD_CHANGE, rng.uniform(*MOLD_CHANGE_MIN) * 60)
                changes = min(int(rng.poisson(0.7 + n_run / 1200)), 4) if n_run >= 2 * MIN_SEGMENT else 0
                queue = _split(n_run, changes + 1, rng)
                # Start from the recipe last used on this mold (what the controller still holds) or a fresh pick.
                cur = int(last_setting[p]) if last_setting[p] >= 0 and rng.random() < 0.6 else draw_setting(p)
                prev = -1
                while queue:
                    length = queue.pop(0)
                    if trial[cur] and length > MIN_SEGMENT * 2:  # a trial is short: the rest goes back to production
                        keep = int(rng.integers(120, 450))
                        if length > keep + MIN_SEGMENT:
                            queue.insert(0, length - keep)
                            length = keep
                    add(int(day), block, f, p, cur, prev, kind, gap, length)
                    prev, kind, gap = cur, SETTING_CHANGE, rng.uniform(*SETTING_CHANGE_MIN) * 60
                    if queue:
                        # After trying an alternative the setter often goes back to the standard.
                        back = standard[p] != cur and rng.random() < 0.5
                        cur = int(standard[p]) if back else draw_setting(p, exclude=cur)
                last_setting[p] = prev
            last_pair[f] = plan[-1][0]
            block += 1

    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in seg.items()}
    return Schedule(**arrays, block_start_s=np.asarray(block_start, dtype=float))


def expand(schedule: Schedule) -> ShotIndex:
    """Per-shot segment id and positions, fully vectorised."""
    n = schedule.total
    segment = np.repeat(np.arange(len(schedule.shots)), schedule.shots)
    seg_first = np.cumsum(schedule.shots) - schedule.shots
    in_segment = np.arange(n) - seg_first[segment]
    block_of_seg = schedule.block
    block_first_seg = np.flatnonzero(np.r_[True, block_of_seg[1:] != block_of_seg[:-1]])
    block_first_shot = seg_first[block_first_seg]
    in_block = np.arange(n) - block_first_shot[block_of_seg[segment]]
    return ShotIndex(segment=segment, in_segment=in_segment, in_block=in_block)


def block_slice(schedule: Schedule, first_block: int, end_block: int) -> Schedule:
    """The segments of machine-days ``first_block`` .. ``end_block - 1``, blocks renumbered from 0.

    Segments are in block order, so a range of blocks is a range of segments; every per-segment
    quantity (previous setting, gap, kind) is kept, so a slice generates exactly the shots the
    whole plan would (with its own random draws).
    """
    lo, hi = np.searchsorted(schedule.block, [first_block, end_block])
    return Schedule(
        day=schedule.day[lo:hi],
        block=schedule.block[lo:hi] - first_block,
        facility=schedule.facility[lo:hi],
        pair=schedule.pair[lo:hi],
        setting=schedule.setting[lo:hi],
        prev_setting=schedule.prev_setting[lo:hi],
        kind=schedule.kind[lo:hi],
        gap_s=schedule.gap_s[lo:hi],
        shots=schedule.shots[lo:hi],
        block_start_s=schedule.block_start_s[first_block:end_block],
    )


def block_shots(schedule: Schedule) -> tuple[np.ndarray, np.ndarray]:
    """Per block: its lot day and its number of shots."""
    n_blocks = len(schedule.block_start_s)
    day = np.zeros(n_blocks, dtype=np.int64)
    day[schedule.block] = schedule.day
    return day, np.bincount(schedule.block, weights=schedule.shots, minlength=n_blocks).astype(np.int64)
