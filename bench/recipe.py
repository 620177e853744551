"""Recipe guidance quality: does every part get an answer, and is the recommended setting truly better?

Make a plant (the project's simulator, or an independently written forge plant: --plant forge_a),
train a store with the default TrainingConfig, compute recipes from the records and lots only
(the recipe never sees the per-shot labels or the true setting ids), then, per facility/item with
history, compare the TRUE defect probability of the recommended setting (the true setting behind
the published exact set-point combination) with the volume-weighted historical average of the
true defect probability of what was actually run. Reported:

- coverage: the share of facility/items with history that are answered: a recommendation (a
  setting to run: ranked, or the most produced setting when nothing qualifies), or an explicit
  "keep current practice" with its reason (no setting was shown better than the part's history);
  beside it the share with a setting to run, and every one not answered, with its reason;
- truly worse: every answer that names a setting to run (a recommendation, or a keep-current-practice
  row that names one) whose setting is truly worse than the part's history, their share of those
  answers, and whether every one of them is flagged ``uncertain`` (none may claim ``clearly_better``);
- how often ``clearly_better`` is truly better; the relative reduction of the true defect rate; the
  share of facility/items given the truly best setting they ran. Baseline in the same run: "keep
  running the most produced setting cluster".

Truth: on the simulator, each setting's catalogued true defect probability; on forge, every shot's
true defect probability recomputed from forge's own functions and seed (forge exports only the
drawn labels), a setting's probability for a part being the mean over the shots it ran there.

A facility/item told to "keep current practice" without a setting named is scored at its history's
true probability (reduction 0, truly best only if nothing ran better): it is answered (covered) but
is no recommendation, so it is in neither side of the truly-worse share. The candidate it turned
down is reported apart (``kept_candidate_truly_worse``: how many would truly have made it worse).
A published cluster centre (the exact combination lay outside its cluster's spread) is evaluated
as the setting of the cluster's shots nearest to it (z-scored set points): the plant never ran the
centre exactly, so its true probability is not catalogued.

    .venv/bin/python bench/recipe.py                        # the default simulation: 500k shots, 30 days
    .venv/bin/python bench/recipe.py --shots 300000 --store /tmp/s   # smaller; keep the store for reruns
    .venv/bin/python bench/recipe.py --plant forge_a --store /tmp/f  # forge plant a -> bench/results/recipe_forge_a.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result
from model_store.canonical import canonical_lots, canonical_records
from model_store.config import TrainingConfig
from model_store.recipe import RecipeConfig, compute_recipes
from model_store.recipe.window import most_used_combination
from model_store.serving.store import open_store
from model_store.store_training import train_store

TIE = 1e-9  # settings with the same true probability (e.g. a "fine" variant) are equally best


def setting_of_choice(records: pd.DataFrame, setting: np.ndarray, rows: np.ndarray, fields: list[str],
                      exact: dict | None = None) -> str | None:
    """True setting behind a published combination (default: the most used exact one of ``rows``)."""
    if len(rows) == 0:
        return None
    sub = records.iloc[rows]
    if exact is None:
        exact, _, _ = most_used_combination(sub[fields])
    if not exact or any(exact.get(f) is None for f in fields):
        return None
    values = sub[fields].to_numpy(float)
    target = np.array([exact[f] for f in fields], dtype=float)
    match = np.isclose(values, target, rtol=0, atol=1e-6).all(axis=1)
    if not match.any():  # a published centre: the nearest shots the cluster really ran
        spread = np.nanstd(values, axis=0)
        spread = np.where(spread > 0, spread, 1.0)
        distance = np.sqrt(np.nansum(((values - target) / spread) ** 2, axis=1))
        match = distance <= np.nanmin(distance) + 1e-9
    ids = pd.Series(setting[rows[match]], dtype=object)
    return str(ids.mode().iloc[0]) if len(ids) else None


def _worse(value: float | None, reference: float) -> bool:
    return value is not None and bool(np.isfinite(value)) and value > reference * (1 + 1e-6)


def evaluate(records: pd.DataFrame, setting: np.ndarray, shot_prob: np.ndarray, result, schema) -> dict:
    """Score every facility/item with history against the truth.

    ``setting``: each record's true setting id; ``shot_prob``: each record's true defect
    probability. A setting's true probability for a facility/item is the mean over the shots it
    ran there (on the simulator every shot of a setting has the same one; on forge it moves with
    wear, warm-up and resin, so the mean over what was run is what running it again would bring).
    """
    setting = np.asarray(setting, dtype=object)
    shot_prob = np.asarray(shot_prob, dtype=float)
    clusters = result.clusters
    # Each record's setting cluster and item as the scoring core assigned them (records of skipped facilities: -1).
    scored = result.labels.set_index("record_id").reindex(records["record_id"])
    cluster = scored["cluster"].fillna(-1).to_numpy(int)
    item = scored["item"].fillna(records["item"]).to_numpy(object)  # the scoring core imputes missing items
    facility = records["facility"].astype(str).to_numpy(object)
    frame = pd.DataFrame({"facility": facility, "item": item, "cluster": cluster})
    by_cluster = frame.groupby(["facility", "item", "cluster"]).indices
    by_pair = frame[frame["item"].notna()].groupby(["facility", "item"]).indices
    answers = result.answers() if hasattr(result, "answers") else result.recipes
    recipes = {(r["facility"], r["item"]): r for r in answers}  # every document naming a setting to run
    kept = {(k["facility"], k["item"]): k for k in result.kept}
    missing = {(m["facility"], m["item"]): m for m in result.not_covered()}
    rows = []
    for pair, idx in sorted(by_pair.items()):
        facility_, item_ = pair
        maker = str(records["maker"].iloc[idx].mode().iloc[0])
        fields = list(schema.makers[maker].settings)
        pair_setting = pd.Series(setting[idx], dtype=object)
        available = pd.Series(shot_prob[idx]).groupby(pair_setting.to_numpy()).mean()
        history = float(shot_prob[idx].mean())
        ranking = clusters[(clusters["facility"] == facility_) & (clusters["item"] == item_)]
        if len(ranking):
            top = int(ranking.sort_values("rows", ascending=False)["cluster"].iloc[0])
            status_quo = setting_of_choice(records, setting, by_cluster[(facility_, item_, top)], fields)
        else:
            status_quo = setting_of_choice(records, setting, idx, fields)
        row = {
            "facility": facility_, "item": item_, "shots": int(len(idx)), "settings_run": int(len(available)),
            "clusters": int(len(ranking)), "history_prob": history, "best_prob": float(available.min()),
            "best_setting": str(available.idxmin()), "most_produced_setting": status_quo,
            "most_produced_prob": float(available[status_quo]) if status_quo in available.index else None,
        }
        recipe = recipes.get(pair)
        if recipe is not None:
            cluster_rows = by_cluster.get((facility_, item_, recipe["setting_cluster"]), np.array([], dtype=int))
            candidates = cluster_rows if recipe["setting_cluster"] >= 0 and len(cluster_rows) else idx
            chosen = setting_of_choice(records, setting, candidates, fields, recipe["setting"]["exact"])
            most_used = setting_of_choice(records, setting, candidates, fields)
            considered = None
            if pair in kept:  # keep current practice, naming the setting to run if one must be
                k = kept[pair]["considered"]
                considered = setting_of_choice(records, setting, by_cluster.get((facility_, item_, k["setting_cluster"]), idx),
                                               fields, k.get("exact") or None)
            row.update({
                "named": True, "action": recipe["action"], "selection": recipe.get("selection", "keep current practice"),
                "confidence": recipe["confidence"],
                "considered_prob": float(available[considered]) if considered in available.index else None,
                "recommended_setting": chosen, "recommended_prob": float(available[chosen]) if chosen in available.index else None,
                "cluster_most_used_prob": float(available[most_used]) if most_used in available.index else None,
                "chosen_by": recipe["setting"]["chosen_by"], "reason": recipe["confidence_reason"],
            })
        else:
            # No setting named: the part keeps running its mix (scored at its history).
            why = (f"keep current practice: {kept[pair]['reason']}" if pair in kept
                   else missing.get(pair, {"reason": "no row at all (a bug: every part must be answered)"})["reason"])
            considered = None
            if pair in kept:
                k = kept[pair]["considered"]
                considered = setting_of_choice(records, setting, by_cluster.get((facility_, item_, k["setting_cluster"]), idx),
                                               fields, k.get("exact") or None)
            row.update({
                "named": False, "action": "keep current practice" if pair in kept else "none", "selection": None, "confidence": None,
                "recommended_setting": None, "recommended_prob": None, "cluster_most_used_prob": history,
                "chosen_by": None, "reason": why,
                "considered_prob": float(available[considered]) if considered in available.index else None,
            })
        rows.append(row)
    table = pd.DataFrame(rows)
    named = table["recommended_prob"].notna()
    effective = table["recommended_prob"].where(named, table["history_prob"])  # no setting named: the mix goes on
    tie = lambda prob: prob.astype(float) <= table["best_prob"] * (1 + 1e-6) + TIE
    table["relative_reduction"] = 1 - effective / table["history_prob"]
    table["truly_best"] = tie(effective)
    table["truly_worse"] = [_worse(p, h) for p, h in zip(table["recommended_prob"], table["history_prob"])]
    table["most_produced_truly_best"] = tie(table["most_produced_prob"].fillna(np.inf))
    table["cluster_most_used_truly_best"] = tie(table["cluster_most_used_prob"].fillna(np.inf))
    w = table["shots"]
    hist = float(np.average(table["history_prob"], weights=w))
    recs = table[table["named"]]
    worse = recs[recs["truly_worse"]]
    clear = recs[recs["confidence"] == "clearly_better"]
    answered = table["named"] | (table["action"] == "keep current practice")  # a setting, or keep current practice with the reason
    unnamed = recs["recommended_prob"].isna()  # a published setting the truth does not know (should not happen)
    overall = {
        "facility_items": int(len(table)),
        # Coverage: a facility/item is covered when it is answered: a setting to run, or "keep current
        # practice" with the reason (issue 18: "a recommendation or a stated reason").
        "coverage": {
            "answered": int(answered.sum()),
            "share": float(answered.mean()),
            "with_setting": int(len(recs)),
            "with_setting_share": float(len(recs) / len(table)),
            "keep_current_practice_without_a_setting": int(((table["action"] == "keep current practice") & ~table["named"]).sum()),
            "share_of_production": float(recs["shots"].sum() / w.sum()),
            "ranked": int((recs["selection"] == "ranked").sum()),
            "next_qualifying_cluster": int((recs["selection"] == "next qualifying cluster").sum()),
            "fallback_most_produced": int((recs["selection"] == "most produced setting").sum()),
            "keep_current_practice_naming_a_setting": int(((table["action"] == "keep current practice") & table["named"]).sum()),
            # The same without the keep-current-practice rows (what recipes.csv, the recipe book and MongoDB carry).
            "share_recipes_only": float((table["named"] & (table["action"] == "recommend")).mean()),
            "without_a_setting": table.loc[~table["named"], ["facility", "item", "shots", "action", "reason"]].to_dict("records"),
            "not_covered": table.loc[~answered, ["facility", "item", "shots", "reason"]].to_dict("records"),
        },
        "truly_worse_than_history": {
            "count": int(len(worse)),
            "share_of_recipes": float(len(worse) / len(recs)) if len(recs) else None,
            "all_flagged_uncertain": bool((worse["confidence"] == "uncertain").all()),
            "flagged_clearly_better": worse.loc[worse["confidence"] == "clearly_better", ["facility", "item"]].to_dict("records"),
            "pairs": worse[["facility", "item", "selection", "confidence", "recommended_prob", "history_prob"]].to_dict("records"),
            # Worse by more than 10 % of the history's rate (the rest are within what an engineer would call equal).
            "count_beyond_10_percent": int((worse["recommended_prob"] > worse["history_prob"] * 1.1).sum()),
        },
        "confidence": {
            "clearly_better": int(len(clear)),
            "uncertain": int((recs["confidence"] == "uncertain").sum()),
            # Of the recipes called clearly better: the share truly better than the part's history.
            "clearly_better_truly_better_share": float((clear["recommended_prob"] < clear["history_prob"]).mean()) if len(clear) else None,
        },
        "recipes_without_a_known_true_setting": int(unnamed.sum()),
        "history_true_defect_prob": hist,
        "recommended_true_defect_prob": float(np.average(effective, weights=w)),
        "best_available_true_defect_prob": float(np.average(table["best_prob"], weights=w)),
        "relative_reduction": float(1 - np.average(effective, weights=w) / hist),
        "best_available_relative_reduction": float(1 - np.average(table["best_prob"], weights=w) / hist),
        "mean_relative_reduction_per_facility_item": float(table["relative_reduction"].mean()),
        "truly_best_share": float(table["truly_best"].mean()),
        "truly_best_share_multi_setting": (float(table.loc[table["settings_run"] > 1, "truly_best"].mean())
                                           if (table["settings_run"] > 1).any() else None),
        "combination_chosen_by_evidence": int((table["chosen_by"] == "lowest credible defect rate").sum()),
        "centroid_published": int(table["chosen_by"].fillna("").str.startswith("cluster centre").sum()),
        # Of the pairs told to keep their practice: how many would the blocked candidate truly have made worse.
        "kept_candidate_truly_worse": int(sum(_worse(p, h) for p, h in zip(table.get("considered_prob", pd.Series(dtype=float)),
                                                                           table["history_prob"]))),
        "recommended_only": {
            "facility_items": int(len(recs)),
            "truly_best_share": float(recs["truly_best"].mean()) if len(recs) else None,
        },
        # The same recommended clusters, publishing each cluster's most used exact combination instead.
        "variant_cluster_most_used_combination": {
            "relative_reduction": float(1 - np.average(table["cluster_most_used_prob"].fillna(table["history_prob"]), weights=w) / hist),
            "truly_best_share": float(table["cluster_most_used_truly_best"].mean()),
        },
        # Baseline: keep running the most produced setting cluster (its most used combination).
        "baseline_most_produced": {
            "relative_reduction": float(1 - np.average(table["most_produced_prob"].fillna(table["history_prob"]), weights=w) / hist),
            "truly_best_share": float(table["most_produced_truly_best"].mean()),
            "truly_worse_than_history": int(sum(_worse(p, h) for p, h in zip(table["most_produced_prob"], table["history_prob"]))),
        },
    }
    return {"overall": overall, "per_facility_item": table.round(6).to_dict("records")}


def forge_shot_probability(name: str) -> np.ndarray:
    """Every shot's true defect probability of a forge plant, in its export's row order.

    forge draws each shot's defect from probabilities it does not export; they are recomputed here
    from its own functions, seed and knobs (the same streams, so the same plant). Checked against
    the drawn labels by the caller (mean and AUROC).
    """
    from bench.plants import forge

    spec = dict(forge.FORGE_PLANTS[name])
    seed, shots, days = spec.pop("seed"), spec.pop("shots"), spec.pop("days")
    knobs = forge._knobs(spec)
    state, _, parts, recipes, _ = forge._simulate(seed, shots, days, knobs)
    hazard = forge._hazards(state, parts, recipes)
    dirt = state["dirt"] / state["dirt"].mean()
    invisible = knobs.invisible_share * knobs.defect_share
    p_dirt, p_handling = invisible / 2 * dirt, np.full(len(dirt), invisible / 2)
    soften = np.ones(len(forge.CAUSES))
    soften[forge.CAUSES.index("warmup")] = 0.5
    scale = forge._calibrate(hazard, soften, 1 - (1 - p_dirt) * (1 - p_handling), knobs.defect_share)
    p = np.minimum(scale**soften * hazard, 0.97)
    shot = 1 - np.exp(np.log1p(-p).sum(axis=1)) * (1 - p_dirt) * (1 - p_handling)
    return shot[np.argsort(state["t_cal"], kind="stable")]


def load(plant_name: str, seed: int, shots: int, days: int) -> tuple[pd.DataFrame, pd.DataFrame, object, np.ndarray, np.ndarray, dict]:
    """records, lots (canonical), schema, true setting and true defect probability per record, notes."""
    if plant_name == "sim":
        from model_store.simulate import SimulationConfig, simulate

        plant = simulate(SimulationConfig(seed=seed, shots=shots, days=days))
        records = canonical_records(plant.records, plant.schema)
        lots = canonical_lots(plant.lots, plant.schema)
        labels = plant.labels.set_index("record_id").loc[records["record_id"]]
        prob = plant.settings.set_index("setting_id")["true_defect_prob"]
        setting = labels["setting_id"].to_numpy(object)
        return records, lots, plant.schema, setting, labels["setting_id"].map(prob).to_numpy(float), {
            "generator": "model_store.simulate", "seed": seed, "shots": len(records), "days": days,
            "truth": "each setting's true defect probability (the simulator's catalogue)"}
    from sklearn.metrics import roc_auc_score

    from bench.plants.forge import forge_named

    plant = forge_named(plant_name)
    records = canonical_records(plant.records, plant.schema)
    lots = canonical_lots(plant.lots, plant.schema)
    prob = pd.Series(forge_shot_probability(plant_name), index=plant.labels["record_id"].to_numpy())
    labels = plant.labels.set_index("record_id").loc[records["record_id"]]
    shot_prob = prob.loc[records["record_id"]].to_numpy(float)
    check = {"mean_true_probability": float(shot_prob.mean()), "defect_share": float(labels["defect"].mean()),
             "auroc_of_probability_for_labels": float(roc_auc_score(labels["defect"], shot_prob))}
    if (abs(check["mean_true_probability"] - check["defect_share"]) > 0.2 * check["defect_share"]
            or check["auroc_of_probability_for_labels"] < 0.7):
        raise SystemExit(f"forge truth does not match its labels: {check}")
    return records, lots, plant.schema, labels["recipe"].to_numpy(object), shot_prob, {
        "generator": "bench/plants/forge.py", "plant": plant_name, "shots": len(records), **check,
        "truth": ("each shot's true defect probability, recomputed from forge's own functions and seed; a setting is a forge "
                  "recipe (part/style), its true probability for a facility/item the mean over the shots it ran there")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plant", default="sim", help="sim (model_store.simulate) or a forge plant: forge_a, forge_b, forge_c")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--shots", type=int, default=500_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--out", default=None, help="results name (default: recipe for sim, recipe_<plant> otherwise)")
    parser.add_argument("--store", type=Path, help="Keep the trained store here and reuse it when it exists (same plant)")
    parser.add_argument("--quick", action="store_true", help="Skip the variants that score the history again")
    args = parser.parse_args()

    t0 = time.perf_counter()
    records, lots, schema, setting, shot_prob, about = load(args.plant, args.seed, args.shots, args.days)
    print(f"{args.plant}: {len(records):,} shots in {time.perf_counter() - t0:.0f}s", flush=True)
    config = RecipeConfig()
    history = records.drop(columns=["label"], errors="ignore")  # the recipe sees records and lots only
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / "store"
        t1 = time.perf_counter()
        if not (store / "manifest.json").is_file():
            train_store(records, lots, schema, store, TrainingConfig(workers=args.workers), report=False)
        train_seconds = time.perf_counter() - t1
        print(f"trained in {train_seconds:.0f}s", flush=True)
        t2 = time.perf_counter()
        result = compute_recipes(history, lots, open_store(store), config)
        recipe_seconds = time.perf_counter() - t2
        # Before issue 18: facilities without a trained group skipped (the other rules cannot be switched off).
        skipping = None if args.quick else compute_recipes(history, lots, open_store(store), replace(config, lots_only_facilities=False),
                                                           labels=result.labels)  # the same pseudo-labels, those of the kept facilities
        # Ablation: without the better-than-history test (the pick passes on the history guard alone); the evidence
        # before issue 18 (both kinds blended), each kind alone (same store, same pseudo-labels).
        ablation = {
            name: compute_recipes(history, lots, open_store(store), replace(config, **change), labels=result.labels)
            for name, change in (("without_better_than_history_test", {"better_than_history_test": False}),
                                 ("blend_evidence", {"evidence": "blend"}), ("lots_only_evidence", {"predicted_weight": 0.0}),
                                 ("pseudo_labels_only_evidence", {"lot_weight": 0.0}))
        }
    print(f"{len(result.recipes)} recipes in {recipe_seconds:.0f}s", flush=True)
    report = evaluate(records, setting, shot_prob, result, schema)
    overall = report["overall"]
    report["variant_untrained_facilities_skipped"] = (evaluate(records, setting, shot_prob, skipping, schema)["overall"]
                                                      if skipping is not None else "skipped (--quick)")
    for name, variant in ablation.items():
        report[f"ablation_{name}"] = evaluate(records, setting, shot_prob, variant, schema)["overall"]
    worse = overall["truly_worse_than_history"]
    report.update(
        plant=about,
        recipe_config=config.to_dict(),
        seconds={"train": round(train_seconds, 1), "recipe": round(recipe_seconds, 1)},
        recipe_coverage=result.coverage(),
        targets={"relative_reduction": ">= 0.20", "truly_best_share": ">= 0.70", "coverage": ">= 0.95",
                 "truly_worse_share": "<= 0.02", "truly_worse_all_flagged_uncertain": True},
        targets_met={"relative_reduction": overall["relative_reduction"] >= 0.20, "truly_best_share": overall["truly_best_share"] >= 0.70,
                     "coverage": overall["coverage"]["share"] >= 0.95,
                     "truly_worse_share": (worse["share_of_recipes"] or 0.0) <= 0.02,
                     "truly_worse_all_flagged_uncertain": worse["all_flagged_uncertain"]},
    )
    path = write_result(args.out or ("recipe" if args.plant == "sim" else f"recipe_{args.plant}"), report)
    coverage = overall["coverage"]
    print(f"coverage {coverage['share']:.1%} ({coverage['answered']} of {overall['facility_items']} facility/items answered, "
          f"{coverage['with_setting']} with a setting to run); truly worse than "
          f"history {worse['count']} ({(worse['share_of_recipes'] or 0):.1%} of recipes, "
          f"all flagged uncertain: {worse['all_flagged_uncertain']}); "
          f"clearly better {overall['confidence']['clearly_better']}, uncertain {overall['confidence']['uncertain']}; relative reduction "
          f"{overall['relative_reduction']:.1%} (best available {overall['best_available_relative_reduction']:.1%}, most-produced baseline "
          f"{overall['baseline_most_produced']['relative_reduction']:.1%}); truly best {overall['truly_best_share']:.0%} -> {path}")


if __name__ == "__main__":
    main()
