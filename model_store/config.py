"""Every tunable of the offline pipeline, in one place, with the reason for each default.

The training report and the store manifest record the values used, so a store says how it was made.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class GroupingConfig:
    # The original team relaxed "0.0 % defective" to 1.0 % so that training data is not limited to
    # rare perfect days (and does not overfit them).
    normal_defect_rate: float = 0.01
    # Below this many rows a model is noise. The original dropped groups under 500 rows; a small
    # IsolationForest on a few hundred clean shots of the right part still beats judging the part
    # by another part's model, so the floor is lower (detection bench: per-path AUROC).
    min_group_rows: int = 300
    # Each (facility, item) also gets a pooled model over its cleanest lots, whatever the setting:
    # lots below normal_defect_rate first; if they hold fewer than min_group_rows shots, the next
    # cleanest lots are added while their rate stays below this ceiling.
    part_max_lot_rate: float = 0.03
    # K-Means k is chosen by silhouette inside these bounds, per maker.
    min_clusters: int = 2
    max_clusters: int = 40
    # Silhouette is O(n^2): estimate it on at most this many unique setting combinations.
    silhouette_sample: int = 4000
    # Unique combinations are subsampled to this many before K-Means (continuous "settings" such as
    # KAMP's temperatures would otherwise give one combination per shot).
    max_unique_settings: int = 20000
    # A setting's production profile (per-field median over all its history, defective lots
    # included: the median shrugs off a few percent of defects) needs this many rows to be trusted.
    min_profile_rows: int = 50


@dataclass(frozen=True)
class ModelConfig:
    # Model family by group size: trees are robust on little data, AEs need thousands of rows, and
    # the memory module of MemAE only pays off when there is much normal data to memorise.
    autoencoder_min_rows: int = 2500
    memae_min_rows: int = 12000
    # Cap rows per group for AE/MemAE training: beyond this the loss curve is flat and time grows.
    max_train_rows: int = 30000
    epochs: int = 60
    batch_size: int = 256
    patience: int = 5
    validation_split: float = 0.15
    learning_rate: float = 1e-3
    # MemAE (Gong et al., ICCV 2019): N memory items, hard-shrink threshold lambda in [1/N, 3/N],
    # entropy weight alpha; their alpha=0.0002 works on tabular data too.
    memory_items: int = 50
    shrink_threshold: float = 0.02
    entropy_weight: float = 0.0002
    iforest_trees: int = 100  # sklearn's default; serving cost grows linearly with it
    seed: int = 0


@dataclass(frozen=True)
class ThresholdConfig:
    # Fixed threshold: this quantile of the training loss.
    fixed_quantile: float = 0.995
    # CV (std/mean) of the training loss widens the threshold: a noisy group needs more room.
    cv_gain: float = 0.10
    # On the nearest-setting path each unit of scaled setting distance adds this much weight.
    distance_gain: float = 0.50
    # The total widening is capped so that no weight can make a group blind.
    margin_limit: float = 0.50
    # Excursions (model_store/serving/excursions.py): a measured value further beyond its group's
    # p0.1-p99.9 training band than this share of the band's width flags the record, whatever
    # the model says (~4.6 standard deviations from the mean of a normal field).
    excursion_band_share: float = 0.25
    # Production values are the evidence: a record with more than this share of its production
    # fields missing is unscorable (never "normal" on imputed means).
    max_imputed_share: float = 0.5
    # Lot calibration (model_store/calibration.py): a (group, path) needs this many history rows
    # covered by lots for its own line; below that the path's typical calibration is used.
    calibration_min_rows: int = 200
    # A fallback path is used only if its scores explain the lots' counts better than a constant
    # (likelihood-ratio statistic above this; 3.84 = chi-square(1) at 95 %).
    path_min_evidence: float = 3.84


@dataclass(frozen=True)
class ConditionalConfig:
    """The setting-conditioned scorer (model_store/serving/conditional.py), one unit per maker."""

    # Squares and pairwise products of the set points (a response that bends). Off: on both
    # generators of the proving ground the linear response with per-part slopes ranked as well or
    # better, and a square extrapolates badly to a set point beyond anything run.
    quadratic: bool = False
    # Model fields that were positive throughout history in logs (multiplicative physics).
    log_positive: bool = True
    # Ridge penalty on the scaled set points and part offsets: a setting run for a few shots
    # must not get a coefficient of its own.
    ridge: float = 1.0
    # Each part's own linear slopes on its set points (on top of the maker-wide response), with
    # this penalty. Off: on both generators of the proving ground the slopes cost F1 and PR-AUC
    # (a part's few settings overfit them); the ablation table in the README keeps the record.
    part_slopes: bool = False
    part_ridge: float = 50.0
    # Refits without the shots further than trim_z robust spreads from the fit on any field.
    trim_rounds: int = 2
    trim_z: float = 6.0
    # A lot this defective gives its rows the least weight (min_weight) in the response fit; a
    # clean lot gives full weight. Dirty lots are never dropped: a part may have no other history.
    dirty_lot_rate: float = 0.05
    min_weight: float = 0.05
    # A part's tail tables come from its lots below this rate when they hold min_part_rows shots.
    clean_lot_rate: float = 0.01
    # Lines are set on the latest days of history (this share), scored by a fit on the days before.
    calibration_share: float = 0.3
    # A part needs this many rows for its own tables and residual spread (else the maker's).
    min_part_rows: int = 200
    # And this many held-out rows for a line of its own (else the maker's fallback line).
    min_calibration_rows: int = 100
    # The line is the held-out tail probability equal to the unit's lot defect share, at least this.
    min_alpha: float = 0.002
    # How the setting-conditioned score meets the setting groups' score: "conditional" (it alone
    # decides; groups still name the setting), "max" (either alarms), or "groups" (the groups
    # decide; it judges only records no group can).
    combine: str = "conditional"
    # A gross excursion: a value out of its part's p0.1..p99.9 band, and its residual out of the
    # residual band, each by this share of the band's width. Four times the setting groups' 0.25:
    # these bands span every setting and day of the part (new production lands beyond a quarter
    # of them on several % of normal shots); the setting groups' own bands still apply.
    excursion_share: float = 1.0
    # Per-field residual evidence: "tails" (ECDF, as ECOD), "squares" (z^2 / 2), or "both" (the larger).
    residual_evidence: str = "tails"
    # Weight of the part's raw-value tails (a value rare for the part whatever the setting). 0: a
    # setting change alone must not alarm, and the residual tails ranked as well without them.
    raw_weight: float = 0.0
    # Residuals are judged against each part's running mean of its last residuals, weights halving
    # every this many shots (0: off); inputs to the mean clipped at +-baseline_clip spreads (see
    # model_store/serving/baseline.py).
    baseline_halflife: float = 5.0
    baseline_clip: float = 4.0
    # A level shift — this many shots in a row beyond baseline_clip on the same side, each within
    # the clip of the shot before — moves the running baseline all the way to the last of them
    # (0: off; see model_store/serving/baseline.py). Without it a lasting offset of D spreads took
    # D / (a * clip) shots to follow, every one an alarm. 5 was chosen on the whole proving ground:
    # 3 ranked better on the simulator (PR-AUC +0.05) but cost forge_a F1 0.275 -> 0.265 (its
    # defects come in runs); 5 left every forge plant within 0.001 and gave the simulator +0.04.
    baseline_shift_run: int = 5
    # With a baseline, a gross excursion must also stand out from the part's last shots (so a
    # lasting shift that the plant's lots call normal stops alarming once the baseline follows
    # it) — except at a setting the part ran in history, where one this many times its tolerance
    # beyond the raw and residual bands alarms however long it lasts (1: every one does).
    # (3: on both generators of the proving ground 1 cost F1 — 0.43 -> 0.20 on the simulator,
    # 0.23 -> 0.21 on forge — while 3 and "never" scored the same: a slow drift of a sensor is not
    # a defect the lots see, a value three band widths out is.)
    lasting_excursion_ratio: float = 3.0
    # At a set point beyond the maker's span by more than the span's width (any change of a set
    # point the maker never varied: the response has no slope for it at all), a field more than
    # baseline_clip from the running baseline moves it all the way to the shot, so the shots
    # after it are judged against it (the lab set: a new clamp speed doubled the mould times, the
    # baseline walked 4 spreads a shot towards ~1,000, and every good shot alarmed; AUROC 0.23).
    follow_new_settings: bool = True
    # As follow_new_settings, for a part the maker's response never saw (a new mould on a known machine): its
    # offset is unknown, so a field further than baseline_clip from its running baseline moves it
    # all the way (sim_seed5: a new part's clamp force sat ~230 spreads from the maker's response,
    # the baseline walked half a spread a shot, and 216 good shots scored 17 as excursions: F1
    # 0.235 -> 0.295, alarm ratio 2.13 -> 1.43; no other plant of the proving ground moved).
    follow_new_parts: bool = True
    # A gross excursion that alarms only through the lasting rule (at least lasting_excursion_ratio
    # tolerances out at a setting the part ran, but like the part's last shots) scores just above
    # the line instead of its whole ratio: it still alarms and keeps its ratio in the verdict's
    # ``excursion``, but a heater that has run hot for hours does not outrank a shot unlike its
    # neighbours (sim_default: such shots were 15 % defects and held the top 1,300 ranks; PR-AUC
    # 0.149 -> 0.199; no other plant moved). Isolated excursions keep their ratio as the score.
    lasting_at_line: bool = True
    # Whether the setting groups' own excursion bands still alarm where the conditional scorer
    # decides ("conditional" combine). Off: on both generators they added alarms at a few %
    # precision (F1 +0.135 / +0.048 and PR-AUC +0.167 / +0.016 without them) for 1-2 points of
    # excursion-suite recall; bench/peers.py ablation group_excursions keeps the record.
    group_excursions: bool = False

    def __post_init__(self) -> None:
        if not (self.baseline_halflife == 0 or 0 < self.baseline_halflife < float("inf")):
            raise ValueError(f"conditional.baseline_halflife must be 0 (off) or a positive number of shots, got {self.baseline_halflife!r}")
        if isinstance(self.baseline_shift_run, bool) or not isinstance(self.baseline_shift_run, int) or self.baseline_shift_run < 0:
            raise ValueError(f"conditional.baseline_shift_run must be 0 (off) or a whole number of shots, got {self.baseline_shift_run!r}")
        if not self.baseline_clip > 0:
            raise ValueError(f"conditional.baseline_clip must be > 0 residual spreads, got {self.baseline_clip!r}")
        if not self.lasting_excursion_ratio >= 1.0:
            raise ValueError(f"conditional.lasting_excursion_ratio must be >= 1 (tolerances beyond the band; inf: never without the "
                             f"neighbour check), got {self.lasting_excursion_ratio!r}")
        if self.residual_evidence not in ("tails", "squares", "both"):
            raise ValueError(f"conditional.residual_evidence must be tails, squares or both, got {self.residual_evidence!r}")
        if self.combine not in COMBINE_RULES:
            raise ValueError(f"conditional.combine must be one of {', '.join(COMBINE_RULES)}, got {self.combine!r}")


COMBINE_RULES = ("conditional", "max", "groups")


def _typed(current: Any, value: Any, dotted: str) -> Any:
    """An override in the type of its default (``bool('false')`` is True, so booleans are read as words)."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{dotted} takes true or false, got {value!r}")
    kind = type(current)
    try:
        return kind(value)
    except (TypeError, ValueError):
        words = {int: "a whole number", float: "a number", str: "text"}.get(kind, kind.__name__)
        raise ValueError(f"{dotted} takes {words} (default {current!r}), got {value!r}") from None


@dataclass(frozen=True)
class DriftReferenceConfig:
    # The worker's drift watch (model_store.serving.drift) judges a part's verdicts in blocks of
    # this many judged shots, against how such blocks varied on history. 200 is ~1 h of one
    # machine at 20 s cycles: long enough that a block's alarm count means something at a 1 %
    # rate, short enough that a change is seen within a shift or two.
    block: int = 200
    # A part needs this many full history blocks for its spread to be estimated at all.
    min_reference_blocks: int = 10
    # Blocks per batch when the long-run spread is estimated (batch means): 10 blocks is ~2,000
    # shots, about a day of one part, the scale at which lots, ambient and long setting runs vary.
    inflation_batch: int = 10
    # A part needs this many history lots (with a bad part expected or an alarm raised) for its
    # alarms-against-lots reference (model_store.serving.lot_drift).
    min_reference_lots: int = 10

    def __post_init__(self) -> None:
        if self.block < 10 or self.min_reference_blocks < 2 or self.inflation_batch < 2:
            raise ValueError(f"drift.block must be >= 10, drift.min_reference_blocks and drift.inflation_batch >= 2, "
                             f"got {self.block}, {self.min_reference_blocks} and {self.inflation_batch}")
        if self.min_reference_lots < 2:
            raise ValueError(f"drift.min_reference_lots must be >= 2, got {self.min_reference_lots}")


@dataclass(frozen=True)
class TrainingConfig:
    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    conditional: ConditionalConfig = field(default_factory=ConditionalConfig)
    drift: DriftReferenceConfig = field(default_factory=DriftReferenceConfig)
    workers: int = 0  # 0 = one per core

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainingConfig:
        return cls(
            grouping=GroupingConfig(**raw.get("grouping", {})),
            model=ModelConfig(**raw.get("model", {})),
            threshold=ThresholdConfig(**raw.get("threshold", {})),
            conditional=ConditionalConfig(**raw.get("conditional", {})),
            drift=DriftReferenceConfig(**raw.get("drift", {})),
            workers=int(raw.get("workers", 0)),
        )

    def with_overrides(self, overrides: dict[str, Any]) -> TrainingConfig:
        """Apply ``section.name=value`` overrides (from the CLI's ``--set``)."""
        sections: dict[str, Any] = {"grouping": self.grouping, "model": self.model, "threshold": self.threshold,
                                    "conditional": self.conditional, "drift": self.drift}
        updated = dict(sections)
        workers = self.workers
        for dotted, value in overrides.items():
            if dotted == "workers":
                workers = _typed(workers, value, dotted)
                continue
            section, _, name = dotted.partition(".")
            if section not in sections or name not in {f.name for f in fields(sections[section])}:
                raise ValueError(f"unknown setting {dotted!r}; use section.name with section in {sorted(sections)}")
            current = getattr(updated[section], name)
            updated[section] = replace(updated[section], **{name: _typed(current, value, dotted)})
        return TrainingConfig(workers=workers, **updated)
