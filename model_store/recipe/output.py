"""Write a :class:`RecipeResult` as files: recipes.json, recipes.csv, clusters.csv, report.html.

All-or-nothing: files go to a staging directory next to the target, and only a complete set is
renamed into place (an existing recipe directory is replaced; any other non-empty directory is
refused). ``before_commit`` runs on the staged directory last (e.g. the MongoDB upsert), so a
failure there leaves no output either.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from model_store.errors import DataError
from model_store.serving.recipe_book import RECIPES_JSON
from model_store.recipe.build import RecipeResult

RECIPES_CSV, CLUSTERS_CSV, REPORT_HTML = "recipes.csv", "clusters.csv", "report.html"


def recipes_table(recipes: list[dict[str, Any]]) -> pd.DataFrame:
    """One flat row per recipe: set points (``set.<field>``), centre and window per production field."""
    rows = []
    for r in recipes:
        rate, hist, prod = r["defect_rate"], r["history"], r["production"]
        row: dict[str, Any] = {
            "facility": r["facility"], "item": r["item"], "maker": r["maker"], "model_version": r["model_version"],
            "setting_cluster": r["setting_cluster"], "basis": r["basis"], "rows": prod["rows"], "lots": prod["lots"],
            "days": prod["days"], "share": prod["share"], "defect_rate": rate["estimate"],
            "credible_defect_rate": rate["credible"], "predicted_defect_rate": rate["predicted"],
            "lot_defect_rate": rate["lot"], "history_defect_rate": hist["defect_rate"],
            "history_lot_defect_rate": hist["lot_defect_rate"], "expected_reduction": hist["expected_reduction"],
            "exact_share": r["setting"]["exact_share"], "window_rows": r["window"]["rows"],
        }
        row.update({f"set.{k}": v for k, v in r["setting"]["exact"].items()})
        row.update({f"centroid.{k}": v for k, v in r["setting"]["centroid"].items()})
        for name, stats in r["window"]["fields"].items():
            row.update({f"{name}.{s}": v for s, v in stats.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def check_target(target: Path) -> None:
    """Refuse an --out that exists and is not a recipe directory (call early: before any long work)."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise DataError(f"{target}: exists and is not a directory; choose a directory for --out")
    if target.is_dir() and any(target.iterdir()) and not (target / RECIPES_JSON).is_file():
        raise DataError(f"{target}: exists and does not hold recipes; choose an empty or new directory")


def write_files(result: RecipeResult, directory: Path, report: bool = True) -> None:
    (directory / RECIPES_JSON).write_text(json.dumps(result.to_json(), indent=1, allow_nan=False), encoding="utf-8")
    recipes_table(result.recipes).to_csv(directory / RECIPES_CSV, index=False)
    result.clusters.to_csv(directory / CLUSTERS_CSV, index=False)
    if report:
        from model_store.recipe.report import write_report

        write_report(result, directory / REPORT_HTML)


def write_recipes(
    result: RecipeResult, out: str | Path, before_commit: Callable[[Path], None] | None = None, report: bool = True
) -> Path:
    """Write every output atomically into ``out``; returns its resolved path."""
    target = Path(out).resolve()
    check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        write_files(result, staging, report=report)
        if before_commit is not None:
            before_commit(staging)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
        os.rename(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
