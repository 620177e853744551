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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from model_store.errors import DataError
from model_store.recipe.build import RecipeResult
from model_store.serving.recipe_book import RECIPES_JSON

RECIPES_CSV, CLUSTERS_CSV, REPORT_HTML = "recipes.csv", "clusters.csv", "report.html"


def _value(value: Any) -> str:
    """A set point or window figure as text: at most 6 significant digits, empty when unknown."""
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def cell_name(name: str) -> str:
    """A field's name inside a cell: as it is, or in double quotes (inner quotes doubled, as CSV
    does) when it holds the cell's separators (``;``, ``=``), a quote or outer spaces, so that
    ``Temp;Zone=1`` cannot read as two fields."""
    if any(c in name for c in ';="') or name != name.strip() or not name:
        return '"' + name.replace('"', '""') + '"'
    return name


def set_points_text(setting: dict[str, Any]) -> str:
    """``field=value; field=value; ...`` in the maker's field order (one cell, only that maker's
    fields; a name holding ``;``, ``=`` or a quote in double quotes: :func:`cell_name`)."""
    exact = setting.get("exact") or {}
    return "; ".join(f"{cell_name(name)}={_value(exact.get(name))}" for name in setting.get("fields", exact))


def window_text(window: dict[str, Any]) -> str:
    """``field p1..p99 (mean m); ...`` per production field of the maker: the operating window in one cell."""
    parts = []
    for name, stats in window.get("fields", {}).items():
        if stats.get("p1") is None:
            parts.append(f"{cell_name(name)} unknown")
        else:
            parts.append(f"{cell_name(name)} {_value(stats['p1'])}..{_value(stats['p99'])} (mean {_value(stats['mean'])})")
    return "; ".join(parts)


def recipes_table(recipes: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per recipe, a spreadsheet's worth of columns (27), whatever the makers.

    Each maker records its own fields, so one column per field would give every row the columns
    of every maker (hundreds, mostly empty). Instead the set points are one cell,
    ``set_points`` = ``field=value; ...``, and the operating window another, ``operating_window``
    = ``field p1..p99 (mean m); ...``, each holding only the row's maker's fields in its order.
    recipes.json has every figure field by field.
    """
    rows = []
    for r in recipes:
        rate, hist, prod, setting = r["defect_rate"], r["history"], r["production"], r["setting"]
        rows.append({
            "facility": r["facility"], "item": r["item"], "maker": r["maker"], "action": r["action"],
            "selection": r.get("selection"), "confidence": r.get("confidence"), "confidence_reason": r.get("confidence_reason"),
            "setting_cluster": r["setting_cluster"], "set_points": set_points_text(setting), "chosen_by": setting["chosen_by"],
            "exact_rows": setting["exact_rows"], "exact_share": setting["exact_share"], "basis": r["basis"],
            "rows": prod["rows"], "lots": prod["lots"], "days": prod["days"], "share": prod["share"],
            "defect_rate": rate["estimate"], "credible_defect_rate": rate["credible"], "predicted_defect_rate": rate["predicted"],
            "lot_defect_rate": rate["lot"], "history_defect_rate": hist["defect_rate"], "history_lot_defect_rate": hist["lot_defect_rate"],
            "expected_reduction": hist["expected_reduction"], "window_rows": r["window"]["rows"],
            "operating_window": window_text(r["window"]), "model_version": r["model_version"],
        })
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


CSV_COLUMNS = [
    "facility", "item", "maker", "action", "selection", "confidence", "confidence_reason", "setting_cluster", "set_points",
    "chosen_by", "exact_rows", "exact_share", "basis", "rows", "lots", "days", "share", "defect_rate", "credible_defect_rate",
    "predicted_defect_rate", "lot_defect_rate", "history_defect_rate", "history_lot_defect_rate", "expected_reduction",
    "window_rows", "operating_window", "model_version",
]


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
