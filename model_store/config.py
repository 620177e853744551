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
class TrainingConfig:
    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    workers: int = 0  # 0 = one per core

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainingConfig":
        return cls(
            grouping=GroupingConfig(**raw.get("grouping", {})),
            model=ModelConfig(**raw.get("model", {})),
            threshold=ThresholdConfig(**raw.get("threshold", {})),
            workers=int(raw.get("workers", 0)),
        )

    def with_overrides(self, overrides: dict[str, Any]) -> "TrainingConfig":
        """Apply ``section.name=value`` overrides (from the CLI's ``--set``)."""
        sections = {"grouping": self.grouping, "model": self.model, "threshold": self.threshold}
        updated = dict(sections)
        workers = self.workers
        for dotted, value in overrides.items():
            if dotted == "workers":
                workers = int(value)
                continue
            section, _, name = dotted.partition(".")
            if section not in sections or name not in {f.name for f in fields(sections[section])}:
                raise ValueError(f"unknown setting {dotted!r}; use section.name with section in {sorted(sections)}")
            current = getattr(updated[section], name)
            updated[section] = replace(updated[section], **{name: type(current)(value)})
        return TrainingConfig(workers=workers, **updated)
