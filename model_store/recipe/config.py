"""Every tunable of recipe guidance, with the reason for each default.

The defaults are statistical conventions, not values fitted to one plant: a 95 % interval, equal
trust in the two kinds of evidence, and "as good as the best" meaning within 10 % of it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

WILSON, BETA = "wilson", "beta"
LOTS_FIRST, BLEND = "lots_first", "blend"


@dataclass(frozen=True)
class RecipeConfig:
    # Two-sided confidence of every interval; the ranking uses the upper bound (a rate we are
    # this sure is not exceeded), so a cluster seen on a few shots pays for its uncertainty.
    confidence: float = 0.95
    # "wilson" (score interval) or "beta" (Jeffreys Beta(k + 1/2, n - k + 1/2) posterior).
    interval: str = WILSON
    # Weight of each kind of evidence in the credible defect rate. Pseudo-labels cover every shot
    # but are the models' opinion; lot counts are the plant's own good/bad totals but only per day,
    # so a day that ran two settings has to be split between them. Renormalised when a cluster has
    # only one kind (no lots cover it, or no model could score it).
    predicted_weight: float = 0.5
    lot_weight: float = 0.5
    # Which evidence ranks a facility/item that has both. "lots_first": its lot counts alone; the
    # pseudo-labels rank only facility/items no lot covers. "blend": both, by the weights above.
    # Why lots first: an anomaly is "unusual", not "defective". On the independently written forge
    # plant (bench/recipe.py --plant forge_a) the models flagged the standard recipes 4.4 % of the
    # time and a truly 3x worse variant 0.8 %; blending them in recommended a truly worse setting
    # for 8 of 35 parts (7 of 41 on lots first) and kept 10 of 45 without an answer (4). On the
    # project's simulator the two are even. Lots are the plant's own good/bad counts.
    evidence: str = LOTS_FIRST
    # Day-to-day variation makes shots of one day alike: widen intervals by the Pearson dispersion
    # of per-day counts (quasi-binomial), so 50k shots from 2 days are not 50k independent trials.
    overdispersion: bool = True
    # A cluster whose credible rate is within this relative margin (plus the absolute one) of the
    # lowest credible rate counts as "lowest"; among those the most produced one is recommended,
    # since the recipe the floor has run most is the best understood one.
    relative_tolerance: float = 0.10
    absolute_tolerance: float = 0.0005
    # A pick is recommended only when shown better than the rest of the part's history (module
    # gate): the two-sided ``confidence`` interval of the difference, Bonferroni-corrected for the
    # number of candidate settings the pick was chosen among, lies below 0. Why: picking the best
    # of k noisy rates favours the luckiest (the winner's curse); without the test 5-18 % of the
    # picks were truly worse than history on the four bench plants. False: the behaviour before.
    better_than_history_test: bool = True
    # Strength of the test's shrinkage prior, in defects: each rate starts at the part's pooled rate
    # as if seen on this many defects. 1: one defect's worth, so a setting seen on a few hundred
    # defect-free shots is pulled toward the part's rate instead of reading as 0 %.
    prior_defects: float = 1.0
    # Clusters with fewer shots than this are ranked (and shown) but never recommended: the shop
    # floor cannot learn an operating window from a handful of shots.
    min_rows: int = 100
    # Production fields' operating window is taken over the shots a model scored and judged normal
    # under the recommended setting (the window of good production), falling back to all its shots.
    window_normal_only: bool = True
    # The published exact combination must lie within this quantile of the distances to the
    # centroid (scaled setting space) of the shots the facility/item ran in the cluster; farther
    # out, the centroid is published. 0.95: the cluster's usual reach, not its most distant shot.
    spread_quantile: float = 0.95
    # A facility with no trained group at all still gets recipes: the store's setting clusters place
    # its set points, its lots rank them (no pseudo-labels: no model of its own judged it), and
    # where nothing qualifies its most produced setting is published, marked uncertain. False:
    # such a facility is skipped, each of its parts listed with the reason (the behaviour before
    # issue 18, which left every part of an untrained machine without an answer).
    lots_only_facilities: bool = True
    # The HTML report draws this many facility/items (largest production first); all are tabled.
    report_top: int = 12

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"recipe.confidence must be in [0.5, 1), got {self.confidence}")
        if self.evidence not in (LOTS_FIRST, BLEND):
            raise ValueError(f"recipe.evidence must be {LOTS_FIRST!r} or {BLEND!r}, got {self.evidence!r}")
        if self.interval not in (WILSON, BETA):
            raise ValueError(f"recipe.interval must be {WILSON!r} or {BETA!r}, got {self.interval!r}")
        if self.predicted_weight < 0 or self.lot_weight < 0 or self.predicted_weight + self.lot_weight <= 0:
            raise ValueError("recipe.predicted_weight and recipe.lot_weight must be >= 0 and not both 0")
        if self.relative_tolerance < 0 or self.absolute_tolerance < 0:
            raise ValueError("recipe tolerances must not be negative")
        if not 0.0 < self.spread_quantile <= 1.0:
            raise ValueError(f"recipe.spread_quantile must be in (0, 1], got {self.spread_quantile}")
        if not self.prior_defects >= 0:
            raise ValueError(f"recipe.prior_defects must be >= 0, got {self.prior_defects}")
        if self.min_rows < 1 or self.report_top < 0:
            raise ValueError("recipe.min_rows must be >= 1 and recipe.report_top >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, overrides: dict[str, str]) -> RecipeConfig:
        """Apply ``name=value`` (or ``recipe.name=value``) overrides from the CLI's ``--set``."""
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for dotted, value in overrides.items():
            name = dotted.removeprefix("recipe.")
            if name not in known:
                raise ValueError(f"unknown recipe setting {dotted!r}; known: {', '.join(sorted(known))}")
            current = getattr(self, name)
            if isinstance(current, bool):
                changes[name] = str(value).strip().lower() in ("1", "true", "yes", "on")
            else:
                changes[name] = type(current)(value)
        return replace(self, **changes)
