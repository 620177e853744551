"""Drift watch: has a part's verdict stream left what its store was calibrated on? Pure logic.

A watched unit is a part (facility, item) of the served store: the unit the plant's lots count
and operators think in. Its reference is what the calibrated store did on its own history
(``block_history`` + ``reference_for_part``, written at training under ``manifest["drift"]``): the
alarm rate the lots calibrated, the score distribution (quantiles), and how consecutive blocks
varied there. Real lines are autocorrelated (a machine runs one setting for hours, a material
lot lasts a day), so the detectors are scaled by what history showed, never by the textbook
i.i.d. spread alone: each part's block spread, times the plant's long-run inflation
(``long_run_inflation``: how much more sums of many blocks vary than independent blocks would,
pooled over the plant's parts by batch means).

Judged shots are taken in consecutive blocks of ``block`` shots; every full block updates four
one-sided CUSUMs (Page 1954), each with its own statistic ``S`` (0 at start):

- **noisy** (alarm rate up): the block's binomial log-likelihood ratio of ``ratio_noisy x p`` against
  ``p``, ``p`` = the upper confidence bound of the history's alarm rate (its estimation error
  must not read as drift), the block's alarm count capped at ``burst_cap x`` the count expected
  under the alternative (one burst of alarms is an event the operators see, not a drift), and the
  ratio divided by the dispersion of the history's (equally capped) block counts (quasi-likelihood).
  For independent shots at or below the reference rate the mean run to a false alarm is at least
  ``e^h`` blocks (Lorden's bound for a CUSUM of likelihood ratios; the cap and the dispersion only
  lower the statistic): with the defaults, ``e^8.5 = 4,900`` blocks, about 10^6 shots.
- **blind** (alarm rate down): the same against ``ratio_blind x p``, ``p`` the lower confidence bound
  (no cap). Off for a part whose history's lower bound is 0 (too few alarms to tell "fewer" from
  chance).
- **shift_up / shift_down** (score level): each block's mean probability-integral transform of the
  scores through the reference quantiles, standardised by the reference mean and long-run spread:
  ``y``. ``S+ = max(0, S+ + y - k)``, ``S- = max(0, S- - y - k)``. With the defaults (``k = 0.5``,
  ``h = 6``) and ``y`` standard normal under the reference, Siegmund's approximation gives a mean
  run of ~2,600 blocks per side to a false alarm, and a shift of one spread is found in ~12
  blocks. It sees what the alarm rate cannot: a recalibrated sensor that moves every score
  without (yet) crossing a line.

A detector's flag comes on when its statistic reaches ``h`` and goes off when it falls below
``h / 2``; the statistic is capped at ``2h`` so that a drift that ends is cleared within
``1.5 h / k`` blocks instead of never (hysteresis: a statistic that hovers at the line does not
flap). A store reload starts every unit afresh against the new store's reference.
"""
from __future__ import annotations

import itertools
import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DETECTORS: tuple[str, ...] = ("noisy", "blind", "shift_up", "shift_down")
REFERENCE_PROBS: tuple[float, ...] = tuple(j / 20 for j in range(1, 20))  # 5 % steps
# The scores of the history's alarms at 10 % steps: where a raised line would leave the part's
# lot-calibrated alarm volume (the feedback lines' lot floor, model_store.serving.feedback_lines).
ALARM_PROBS: tuple[float, ...] = tuple(j / 10 for j in range(1, 10))


@dataclass(frozen=True)
class DriftConfig:
    ratio_noisy: float = 2.0  # alarm rate the noisy detector is tuned to find (x reference)
    ratio_blind: float = 0.25  # alarm rate the blind detector is tuned to find (x reference)
    burst_cap: float = 1.5  # block alarm count capped at this x the count expected when noisy
    rate_h: float = 8.5  # alarm-rate CUSUM line (e^h blocks: the i.i.d. false-alarm bound)
    confidence_z: float = 1.645  # the reference rate's one-sided bounds (Wilson, 95 %)
    shift_k: float = 0.5  # score-shift CUSUM allowance, in reference block spreads
    shift_h: float = 6.0  # score-shift CUSUM line

    def __post_init__(self) -> None:
        if not self.ratio_noisy > 1.0:
            raise ValueError(f"drift ratio_noisy must be above 1, got {self.ratio_noisy}")
        if not 0.0 < self.ratio_blind < 1.0:
            raise ValueError(f"drift ratio_blind must be in (0, 1), got {self.ratio_blind}")
        for name in ("burst_cap", "rate_h", "confidence_z", "shift_k", "shift_h"):
            if not getattr(self, name) > 0 or not math.isfinite(getattr(self, name)):
                raise ValueError(f"drift {name} must be a positive number, got {getattr(self, name)}")
        if self.burst_cap < 1.0:
            raise ValueError(f"drift burst_cap must be at least 1, got {self.burst_cap}")


@dataclass(frozen=True)
class PartReference:
    """What a part's judged shots looked like on history, under the calibrated store."""

    rows: int
    alarms: int
    quantiles: tuple[float, ...]  # score at REFERENCE_PROBS
    pit_mean: float  # mean of the blocks' mean transformed score
    pit_sd: float  # their long-run spread: block spread x the plant's inflation, never below i.i.d.
    alarm_counts: tuple[tuple[int, int], ...]  # (alarms in a block, blocks with that many), by count
    count_inflation: float  # the plant's long-run inflation of block alarm-count variance, >= 1
    block: int
    # scores of the history's alarms at ALARM_PROBS; None: fewer than len(ALARM_PROBS) alarms, or a
    # store trained before this field (then no feedback line moves: nothing says what the lots allow)
    alarm_quantiles: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "alarms": self.alarms, "quantiles": list(self.quantiles), "pit_mean": self.pit_mean,
                "pit_sd": self.pit_sd, "alarm_counts": [list(c) for c in self.alarm_counts],
                "count_inflation": self.count_inflation, "block": self.block,
                "alarm_quantiles": None if self.alarm_quantiles is None else list(self.alarm_quantiles)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PartReference:
        quantiles = tuple(float(q) for q in raw["quantiles"])
        if len(quantiles) != len(REFERENCE_PROBS) or any(not math.isfinite(q) for q in quantiles) \
                or any(b < a for a, b in itertools.pairwise(quantiles)):
            raise ValueError(f"quantiles: expected {len(REFERENCE_PROBS)} finite non-decreasing numbers")
        counts = tuple((int(k), int(n)) for k, n in raw["alarm_counts"])
        alarm_quantiles = raw.get("alarm_quantiles")
        if alarm_quantiles is not None:
            alarm_quantiles = tuple(float(q) for q in alarm_quantiles)
            if len(alarm_quantiles) != len(ALARM_PROBS) or any(not math.isfinite(q) for q in alarm_quantiles) \
                    or any(b < a for a, b in itertools.pairwise(alarm_quantiles)):
                raise ValueError(f"alarm_quantiles: expected {len(ALARM_PROBS)} finite non-decreasing numbers or null")
        reference = cls(int(raw["rows"]), int(raw["alarms"]), quantiles, float(raw["pit_mean"]), float(raw["pit_sd"]),
                        counts, float(raw["count_inflation"]), int(raw["block"]), alarm_quantiles)
        if not (0 <= reference.alarms <= reference.rows and reference.block >= 1 and reference.pit_sd > 0
                and reference.count_inflation >= 1 and 0 <= reference.pit_mean <= 1
                and all(0 <= k <= reference.block and n > 0 for k, n in counts) and sum(n for _, n in counts) >= 2):
            raise ValueError("rows, alarms, block, pit_mean, pit_sd, alarm_counts or count_inflation out of range")
        return reference

    @property
    def alarm_rate(self) -> float:
        return self.alarms / self.rows if self.rows else 0.0

    def dispersion(self, cap: int | None = None) -> float:
        """Variance of the history's block alarm counts (each capped at ``cap``) over the binomial
        variance of their mean, times the long-run inflation; at least 1."""
        k = np.array([min(c, cap) if cap is not None else c for c, _ in self.alarm_counts], dtype=float)
        n = np.array([blocks for _, blocks in self.alarm_counts], dtype=float)
        mean = float(np.sum(k * n) / n.sum())
        binomial = mean * (1 - mean / self.block)
        if binomial <= 0:
            return self.count_inflation
        variance = float(np.sum(n * (k - mean) ** 2) / (n.sum() - 1))
        return max(1.0, variance / binomial) * self.count_inflation


def transform(score: float, quantiles: tuple[float, ...] | list[float]) -> float:
    """The reference CDF at ``score``, by mid-rank among the K reference quantiles: the centre of the
    bin it falls in, ``(2j + 1) / (2 (K + 1))`` with ``j`` quantiles below; ties share the mid-rank."""
    below, at_or_below = bisect_left(quantiles, score), bisect_right(quantiles, score)
    return (below + at_or_below + 1) / (2 * (len(quantiles) + 1))


def transform_many(score: np.ndarray, quantiles: tuple[float, ...] | list[float]) -> np.ndarray:
    """:func:`transform` of every score at once (the same mid-rank)."""
    q = np.asarray(quantiles, dtype=float)
    return (np.searchsorted(q, score, "left") + np.searchsorted(q, score, "right") + 1) / (2 * (len(q) + 1))


def wilson_bounds(alarms: int, rows: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a binomial rate (lower, upper); (0, 1) without rows."""
    if rows <= 0:
        return 0.0, 1.0
    p = alarms / rows
    centre = (p + z * z / (2 * rows)) / (1 + z * z / rows)
    half = z * math.sqrt(p * (1 - p) / rows + z * z / (4 * rows * rows)) / (1 + z * z / rows)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class BlockHistory:
    """A part's judged history shots in consecutive blocks (what references are made of)."""

    rows: int
    alarms: int
    quantiles: tuple[float, ...]
    pit_means: np.ndarray  # one per full block
    pit_iid_sd: float  # the spread a block mean would have for independent shots
    counts: np.ndarray  # alarms per full block
    block: int
    alarm_quantiles: tuple[float, ...] | None = None  # the alarms' scores at ALARM_PROBS


def block_history(score: np.ndarray, anomaly: np.ndarray, block: int, min_blocks: int) -> BlockHistory | None:
    """A part's judged history shots in time order (NaN scores left out) in blocks of ``block``;
    None with fewer than ``min_blocks`` full blocks."""
    if block < 1 or min_blocks < 2:
        raise ValueError(f"drift reference needs block >= 1 and min_blocks >= 2, got {block} and {min_blocks}")
    score = np.asarray(score, dtype=float)
    keep = np.isfinite(score)
    score, anomaly = score[keep], np.asarray(anomaly, dtype=bool)[keep]
    blocks = len(score) // block
    if blocks < min_blocks:
        return None
    quantiles = tuple(float(q) for q in np.quantile(score, REFERENCE_PROBS))
    used = blocks * block
    pit = transform_many(score[:used], quantiles)
    alarm_scores = score[anomaly]
    alarm_quantiles = tuple(float(q) for q in np.quantile(alarm_scores, ALARM_PROBS)) \
        if len(alarm_scores) >= len(ALARM_PROBS) else None
    return BlockHistory(int(len(score)), int(anomaly.sum()), quantiles, pit.reshape(blocks, block).mean(axis=1),
                        float(pit.std()) / math.sqrt(block), anomaly[:used].reshape(blocks, block).sum(axis=1), block,
                        alarm_quantiles)


def long_run_inflation(series: Iterable[np.ndarray], batch: int) -> float:
    """How much more a sum of many consecutive blocks varies than independent blocks would: pooled
    over the plant's parts, ``batch x var(means of batch consecutive blocks) / var(blocks)``
    (batch means, weighted by each part's batches - 1); at least 1. Blocks an hour apart share
    their day (material lot, ambient, a setting run for hours): a CUSUM adds many blocks, so it
    must be scaled by this long-run variance, not a block's own."""
    num = den = 0.0
    for values in series:
        values = np.asarray(values, dtype=float)
        batches = len(values) // batch
        variance = float(values.var(ddof=1)) if len(values) > 1 else 0.0
        if batches < 2 or variance <= 0:
            continue
        means = values[: batches * batch].reshape(batches, batch).mean(axis=1)
        num += (batches - 1) * batch * float(means.var(ddof=1)) / variance
        den += batches - 1
    return max(1.0, num / den) if den else 1.0


def reference_for_part(history: BlockHistory, pit_inflation: float = 1.0, count_inflation: float = 1.0) -> PartReference:
    """A part's reference from its block history and the plant's long-run inflations."""
    spread = max(float(history.pit_means.std(ddof=1)) * math.sqrt(pit_inflation), history.pit_iid_sd, 1e-6)
    values, blocks = np.unique(history.counts, return_counts=True)
    return PartReference(history.rows, history.alarms, history.quantiles, float(history.pit_means.mean()), spread,
                         tuple((int(k), int(n)) for k, n in zip(values, blocks)), max(1.0, count_inflation), history.block,
                         history.alarm_quantiles)


def block_llr(alarms: int, shots: int, p0: float, p1: float) -> float:
    """Binomial log-likelihood ratio of rate ``p1`` against ``p0`` for ``alarms`` in ``shots``."""
    return alarms * math.log(p1 / p0) + (shots - alarms) * math.log((1 - p1) / (1 - p0))


@dataclass
class Cusum:
    """One-sided CUSUM with hysteresis: on at ``h``, off below ``h / 2``, capped at ``2h``."""

    h: float
    statistic: float = 0.0
    on: bool = False

    def update(self, increment: float) -> bool:
        """Add one block's increment; True when the flag has just come on."""
        self.statistic = min(2 * self.h, max(0.0, self.statistic + increment))
        was = self.on
        if self.statistic >= self.h:
            self.on = True
        elif self.statistic < self.h / 2:
            self.on = False
        return self.on and not was

    @property
    def level(self) -> float:
        """The statistic in units of its line (1 = the detection line)."""
        return self.statistic / self.h


@dataclass
class PartWatch:
    """The detectors of one part against its reference."""

    reference: PartReference
    config: DriftConfig
    shots: int = 0  # judged shots in the block being filled
    alarms: int = 0
    pit_sum: float = 0.0
    blocks: int = 0  # full blocks seen
    detectors: dict[str, Cusum] = field(default_factory=dict)
    _noisy: tuple[float, float, int, float] | None = None  # (p0, p1, cap, dispersion of capped counts)
    _blind: tuple[float, float, float] | None = None  # (p0, p1, dispersion)

    def __post_init__(self) -> None:
        c, r = self.config, self.reference
        lower, upper = wilson_bounds(r.alarms, r.rows, c.confidence_z)
        p1 = min(c.ratio_noisy * upper, 0.999)
        if 0.0 < upper < p1:
            cap = max(1, math.ceil(c.burst_cap * r.block * p1))
            self._noisy = (upper, p1, cap, r.dispersion(cap))  # bursts are capped once, not also counted as spread
        if lower > 0.0:
            self._blind = (lower, c.ratio_blind * lower, r.dispersion())
        self.detectors = {"noisy": Cusum(c.rate_h), "blind": Cusum(c.rate_h),
                          "shift_up": Cusum(c.shift_h), "shift_down": Cusum(c.shift_h)}

    @property
    def watches(self) -> tuple[str, ...]:
        """The detectors that can fire for this part (blind needs alarms in the history)."""
        return tuple(d for d in DETECTORS if (d != "noisy" or self._noisy) and (d != "blind" or self._blind))

    def observe(self, score: float, anomaly: bool) -> list[str]:
        """One judged shot; the detectors that came on with the block it completed (usually none)."""
        if not math.isfinite(score):
            return []
        self.shots += 1
        self.alarms += bool(anomaly)
        self.pit_sum += transform(score, self.reference.quantiles)
        if self.shots < self.reference.block:  # the block its spread was measured on
            return []
        return self._close_block()

    def _close_block(self) -> list[str]:
        c, r = self.config, self.reference
        shots, alarms, mean = self.shots, self.alarms, self.pit_sum / self.shots
        self.shots, self.alarms, self.pit_sum = 0, 0, 0.0
        self.blocks += 1
        fired = []
        if self._noisy:
            p0, p1, cap, dispersion = self._noisy
            if self.detectors["noisy"].update(block_llr(min(alarms, cap), shots, p0, p1) / dispersion):
                fired.append("noisy")
        if self._blind:
            p0, p1, dispersion = self._blind
            if self.detectors["blind"].update(block_llr(alarms, shots, p0, p1) / dispersion):
                fired.append("blind")
        y = (mean - r.pit_mean) / r.pit_sd
        if self.detectors["shift_up"].update(y - c.shift_k):
            fired.append("shift_up")
        if self.detectors["shift_down"].update(-y - c.shift_k):
            fired.append("shift_down")
        return fired

    def drifted(self) -> tuple[str, ...]:
        return tuple(d for d in DETECTORS if self.detectors[d].on)


PartKey = tuple[str, str]  # (facility, item)


class DriftWatch:
    """Every watched part of one store. Shots of a part without a reference are counted, not judged."""

    def __init__(self, references: Mapping[PartKey, PartReference], config: DriftConfig) -> None:
        self.parts: dict[PartKey, PartWatch] = {key: PartWatch(ref, config) for key, ref in references.items()}
        self.unreferenced_shots = 0

    def observe(self, facility: str, item: str, score: float | None, anomaly: bool) -> list[str]:
        """One shot; only judged ones (a finite score) count, for a watched part or as unreferenced."""
        if score is None or not math.isfinite(score):
            return []
        watch = self.parts.get((facility, item))
        if watch is None:
            self.unreferenced_shots += 1
            return []
        return watch.observe(score, anomaly)

    def observe_many(self, facility: Iterable[Any], item: Iterable[Any], score: Iterable[Any],
                     anomaly: Iterable[Any]) -> list[tuple[int, PartKey, str]]:
        """Shots in order (the batch path of :meth:`observe`): (shot index, part, detector) of every
        detector that came on."""
        events = []
        for i, (f, it, s, a) in enumerate(zip(facility, item, score, anomaly)):
            value = float(s) if s is not None else float("nan")
            for detector in self.observe(str(f), str(it), value, bool(a)):
                events.append((i, (str(f), str(it)), detector))
        return events


def references_from_manifest(raw: Mapping[str, Any] | None) -> dict[PartKey, PartReference]:
    """The store's drift references (``manifest["drift"]``); {} for a store trained before drift
    watch existed. Raises ``ValueError`` naming the part whose reference does not read."""
    if not raw:
        return {}
    references: dict[PartKey, PartReference] = {}
    for entry in raw.get("parts", []):
        key = (str(entry["facility"]), str(entry["item"]))
        try:
            references[key] = PartReference.from_dict(entry)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"drift reference of {key[0]}/{key[1]}: {exc}") from None
    return references


__all__ = ["ALARM_PROBS", "DETECTORS", "REFERENCE_PROBS", "DriftConfig", "PartReference", "Cusum", "PartWatch", "DriftWatch",
           "transform", "transform_many", "wilson_bounds", "BlockHistory", "block_history", "long_run_inflation",
           "reference_for_part", "block_llr", "references_from_manifest"]
