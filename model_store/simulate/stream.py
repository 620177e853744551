"""A plant generated in bounded pieces: the whole production plan first (small), then the shots
of one lot day (or of a group of its machine-days) at a time.

:func:`simulate` draws every per-shot quantity of a run from one random stream, array by array
over all shots, so its shots cannot be produced piece by piece: shot ``k``'s values depend on how
many shots the run holds. A :class:`PlantStream` keeps everything that does not depend on that:

* the plant (machines, parts, setting pools) and the **production plan** — which machine runs
  which part under which setting, for how many shots, with which idle gaps — are exactly
  :func:`simulate`'s for the same config (the plan is drawn first, from the same seed), so the
  shot ids, their machine, part, true setting and lot day, and every lot's shot count, are the
  same as the in-memory path's;
* the per-shot values (drift, defects, physics, glitches, gaps, micro-stops) are drawn with the
  same distributions from a random stream of each piece's own, keyed by (seed, plant size, day,
  piece): the same config and ``chunk_shots`` give the same data, byte for byte; they are not
  the in-memory path's draws (tests/model_store/test_simulate_stream.py compares the two by
  distribution);
* an item's resin lot of a day is one draw per (seed, day), shared by every piece of that day.

Memory: one piece's shots (at most ``chunk_shots``, or one machine-day if that is larger) plus
the plan (a few integers per run of one setting) — not the number of days.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from model_store.schema import PlantSchema
from model_store.simulate.config import SimulationConfig, SimulationConfigError
from model_store.simulate.makers import plant_schema
from model_store.simulate.plant import PlantDefinition, define_plant
from model_store.simulate.production import Schedule, block_shots, block_slice, build_schedule
from model_store.simulate.simulator import generate_shots, settings_truth

DEFAULT_CHUNK_SHOTS = 250_000  # ~0.45 GB of generation peak (about 1.8 kB per shot in flight)


@dataclass(frozen=True)
class ChunkPlan:
    """One piece of the run: machine-days ``first_block`` .. ``end_block - 1`` of lot day ``day``."""

    index: int  # position in the run, from 0
    day: int  # absolute day index from config.start
    part: int  # piece number within its day, from 0
    first_block: int
    end_block: int
    shots: int


@dataclass
class PlantChunk:
    """The shots of one piece, as a plant hands them over, with their truth."""

    plan: ChunkPlan
    records: pd.DataFrame
    lots: pd.DataFrame
    labels: pd.DataFrame
    setting_shots: np.ndarray  # per true setting: shots of this piece
    setting_defects: np.ndarray  # per true setting: defective shots of this piece


def plan_chunks(block_day: np.ndarray, block_n: np.ndarray, chunk_shots: int) -> list[ChunkPlan]:
    """Cut the run into pieces: never across a lot day; within a day, consecutive machine-days
    while they hold at most ``chunk_shots`` shots (a larger machine-day is a piece of its own)."""
    if chunk_shots < 1:
        raise SimulationConfigError(f"chunk_shots must be at least 1, got {chunk_shots}")
    plans: list[ChunkPlan] = []
    n, b = len(block_day), 0
    while b < n:
        day, part = int(block_day[b]), 0
        while b < n and block_day[b] == day:
            end, total = b + 1, int(block_n[b])
            while end < n and block_day[end] == day and total + int(block_n[end]) <= chunk_shots:
                total += int(block_n[end])
                end += 1
            plans.append(ChunkPlan(len(plans), day, part, b, end, total))
            part, b = part + 1, end
    return plans


class PlantStream:
    """``config``'s plant, generated piece by piece (see the module's docstring).

        stream = PlantStream(SimulationConfig(days=365, facilities=100, shots=160_000_000))
        for chunk in stream.chunks():
            ...  # write chunk.records and drop it
        settings = stream.settings_truth(shots, defects)  # sums of the chunks' setting counts
    """

    def __init__(self, config: SimulationConfig, chunk_shots: int = DEFAULT_CHUNK_SHOTS) -> None:
        self.config = config
        self.chunk_shots = int(chunk_shots)
        self.definition: PlantDefinition = define_plant(config.seed, config.facilities, config.items, config.extra_settings)
        # The same generator and first draws as simulate(): the plan is the in-memory path's plan.
        rng = np.random.default_rng([config.seed, 1, 0, config.days, config.shots])
        self.schedule: Schedule = build_schedule(self.definition, config.start, 0, config.days, config.shots,
                                                 config.sunday_run_share, rng)
        if self.schedule.total == 0:
            raise SimulationConfigError("the plan has no shots; raise shots or days")
        self.plans: list[ChunkPlan] = plan_chunks(*block_shots(self.schedule), self.chunk_shots)

    @property
    def total_shots(self) -> int:
        return self.schedule.total

    @property
    def schema(self) -> PlantSchema:
        return plant_schema()

    def _key(self, *tail: int) -> list[int]:
        c = self.config
        return [c.seed, *tail, c.days, c.shots, c.facilities, c.items, c.extra_settings]

    def lot_factor(self, day: int) -> np.ndarray:
        """Each item's resin lot factor on ``day``, shape (items, 1): one draw per (seed, day)."""
        rng = np.random.default_rng(self._key(3, day))
        return rng.lognormal(0.0, 0.025, (len(self.definition.items), 1))

    def chunk(self, plan: ChunkPlan) -> PlantChunk:
        sched = block_slice(self.schedule, plan.first_block, plan.end_block)
        rng = np.random.default_rng(self._key(2, plan.day, plan.part))
        shots = generate_shots(self.definition, self.config, sched, plan.day, 1, 1.0, rng, lot_factor=self.lot_factor(plan.day))
        return PlantChunk(plan, shots.records, shots.lots, shots.labels, shots.setting_shots, shots.setting_defects)

    def chunks(self) -> Iterator[PlantChunk]:
        """Every piece in plan order (lot days in order; a day's pieces by machine)."""
        for plan in self.plans:
            yield self.chunk(plan)

    def settings_truth(self, setting_shots: np.ndarray, setting_defects: np.ndarray) -> pd.DataFrame:
        """The true settings table (as :class:`SimulatedPlant.settings`) from the summed chunk counts."""
        return settings_truth(self.definition, setting_shots, setting_defects, self.config.defect_scale)
