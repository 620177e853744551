"""The recipe report: one self-contained HTML page (inline PNG plots, no external assets).

Size is bounded: one overview chart, then small multiples for ``report_top`` facility/items (those
that ran several setting clusters first, then by production); every recipe is in the tables (and
in recipes.csv / recipes.json), with its confidence, and every facility/item without a setting to
run is listed with the reason.

Units: the plant schema names fields but carries no units, so axes say what a value is (a defect
rate in % of shots, a shot count, a production field's recorded value) and that the unit is the
plant's own. Tick labels are thinned (and rotated on the narrow window panels) until no two
overlap: :func:`thin_ticks` checks the drawn label boxes.
"""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator, NullFormatter, PercentFormatter

from model_store.plots import page, plt
from model_store.recipe.build import RecipeResult, describe_rule

PREDICTED_COLOUR, LOT_COLOUR, PICK_COLOUR, OTHER_COLOUR = "#3b6fb6", "#e08a1e", "#2e9d4f", "#9aa4ae"
OVERVIEW_MAX = 60  # rows of the overview chart; more would be unreadable at report width
WINDOW_COLUMNS = 4
UNITS_NOTE = "as recorded, in the plant's own unit (the schema carries no units)"
CONFIDENCE_TEXT = {"clearly_better": "clearly better", "uncertain": "uncertain"}


def _boxes(fig: Any, labels: list[Any]) -> list[Any]:
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in labels if t.get_visible() and t.get_text()]


def overlapping(fig: Any, labels: list[Any], pad: float = 1.0) -> bool:
    """Whether any two of the drawn tick labels overlap (their boxes, ``pad`` pixels apart at least)."""
    boxes = _boxes(fig, labels)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a.x0 < b.x1 + pad and b.x0 < a.x1 + pad and a.y0 < b.y1 + pad and b.y0 < a.y1 + pad:
                return True
    return False


def _thin_round(fig: Any, targets: list[tuple[Any, str, int]], bins: dict[int, int]) -> bool:
    """After a draw: take one bin off every crowded axis (or, at 2 bins, turn its labels 90 degrees).
    Returns whether any axis was crowded (then the figure must be drawn again)."""
    crowded = [(ax, axis) for ax, axis, _ in targets if overlapping(fig, (ax.xaxis if axis == "x" else ax.yaxis).get_ticklabels())]
    start = {id(ax): first for ax, _, first in targets}
    for ax, axis in crowded:
        if bins.setdefault(id(ax), start[id(ax)]) > 2:
            bins[id(ax)] -= 1
            (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(nbins=bins[id(ax)]))
        else:
            ax.tick_params(axis=axis, labelrotation=90)
    return bool(crowded)


def _rounds(targets: list[tuple[Any, str, int]]) -> int:
    return max((start for _, _, start in targets), default=0) + 1


def thin_ticks(fig: Any, targets: list[tuple[Any, str, int]]) -> None:
    """Fewer ticks on each ``(ax, "x" or "y", starting bins)`` until no two of its labels overlap.

    Draw, then, while some axis is crowded, take one bin off each crowded one (down to 2; still
    crowded at 2, its labels turn 90 degrees) and draw again. Only linear numeric axes belong here;
    the caller sets any rotation first.
    """
    bins: dict[int, int] = {}
    for _ in range(_rounds(targets)):
        fig.canvas.draw()
        if not _thin_round(fig, targets, bins):
            return
    fig.canvas.draw()


def _image(fig: Any, alt: str, targets: list[tuple[Any, str, int]]) -> str:
    """The figure as an inline PNG, its tick labels thinned as :func:`thin_ticks` does, checked on the
    PNG's own draw: no draw beyond the one that makes the image unless an axis is crowded."""
    bins: dict[int, int] = {}
    for _ in range(_rounds(targets)):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        if not _thin_round(fig, targets, bins):
            break
    else:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _pct(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.2%}"


def _num(value: Any) -> str:
    """Numbers for tables: 6 significant digits (set points and measurements carry no more)."""
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def _overview_figure(recipes: list[dict[str, Any]]) -> str:
    chosen = sorted(recipes, key=lambda r: -r["history"]["rows"])[:OVERVIEW_MAX]
    chosen = [r for r in chosen if r["history"]["defect_rate"] is not None and r["defect_rate"]["estimate"] is not None]
    if not chosen:
        return ""
    chosen.sort(key=lambda r: r["history"]["defect_rate"])
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.2 * len(chosen) + 1)))
    y = np.arange(len(chosen))
    hist = np.array([r["history"]["defect_rate"] for r in chosen])
    rec = np.array([r["defect_rate"]["estimate"] for r in chosen])
    ax.hlines(y, np.minimum(hist, rec), np.maximum(hist, rec), color=OTHER_COLOUR, lw=1.5)
    ax.scatter(hist, y, color="#c44e52", s=18, label="history (volume-weighted)", zorder=3)
    ax.scatter(rec, y, color=PICK_COLOUR, s=18, label="recommended setting", zorder=3)
    ax.set_yticks(y, [f"{r['facility']} / {r['item']}" + (" (uncertain)" if r.get("confidence") == "uncertain" else "")
                      for r in chosen], fontsize=6.5)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("estimated defect rate (% of shots)", fontsize=8)
    ax.set_ylabel("facility / item", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Estimated defect rate: history vs recommended setting (largest facility/items)", fontsize=9)
    fig.tight_layout()
    return _image(fig, "overview: history vs recommended defect rate", [(ax, "x", 6)])


def _rate_panel(ax: Any, ranking: pd.DataFrame) -> None:
    x = ranking["rows"].to_numpy(float)
    for rate, low, high, colour, marker, shift, label in (
        ("predicted_rate", "predicted_low", "predicted_high", PREDICTED_COLOUR, "o", 0.94, "pseudo-label rate"),
        ("lot_rate", "lot_low", "lot_high", LOT_COLOUR, "s", 1.06, "lot rate (EM split)"),
    ):
        value = ranking[rate].to_numpy(float)
        ok = np.isfinite(value)
        if rate == "lot_rate":
            ok &= ranking["lot_parts"].to_numpy(float) > 0
        if not ok.any():
            continue
        yerr = np.vstack([value - ranking[low].to_numpy(float), ranking[high].to_numpy(float) - value])[:, ok]
        ax.errorbar(x[ok] * shift, value[ok], yerr=np.clip(yerr, 0, None), fmt=marker, color=colour, ms=4, capsize=2, lw=1, label=label)
    pick = ranking["recommended"].to_numpy(bool)
    estimate = ranking["defect_rate"].to_numpy(float)
    ax.scatter(x[pick], estimate[pick], s=260, facecolors="none", edgecolors=PICK_COLOUR, lw=2, label="recommended", zorder=4)
    for xi, yi, c in zip(x, estimate, ranking["cluster"]):
        if np.isfinite(yi):
            ax.annotate(f"c{c}", (xi, yi), textcoords="offset points", xytext=(6, 4), fontsize=7)
    points = np.concatenate([ranking["predicted_rate"].to_numpy(float), ranking["lot_rate"].to_numpy(float)])
    top = np.nanmax(points) if np.isfinite(points).any() else 0.01
    ax.set_ylim(0, min(1.0, max(0.005, top * 1.6)))
    ax.set_xscale("log")
    ax.set_xlim(max(1, x.min() / 2), x.max() * 2)
    ax.xaxis.set_minor_formatter(NullFormatter())  # decades only: minor labels crowd each other
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("shots under the setting cluster (count, log scale)", fontsize=8)
    ax.set_ylabel("defect rate (% of shots), with interval", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6.5, loc="upper right")


def _window_extent(stats: list[dict[str, Any]]) -> tuple[float, float]:
    """x-limits that hold every cluster's p1-p99 (never min/max: one spike would squash the bars)."""
    low = min(st["p1"] for st in stats)
    high = max(st["p99"] for st in stats)
    pad = 0.08 * (high - low) or 0.05 * abs(high) or 1.0
    return low - pad, high + pad


def _window_panel(ax: Any, field: str, ranking: pd.DataFrame, windows: dict[int, dict[str, Any]]) -> None:
    """Per cluster: bar p5-p95, line p1-p99, tick mean; shots beyond p1-p99 as a triangle at the axis edge."""
    labels: list[str] = []
    drawn: list[tuple[int, dict[str, Any], bool]] = []
    for y, (cluster, picked) in enumerate(zip(ranking["cluster"], ranking["recommended"])):
        stats = windows.get(int(cluster), {}).get("fields", {}).get(field)
        labels.append(f"c{cluster}")
        if stats and stats.get("mean") is not None and stats.get("p1") is not None:
            drawn.append((y, stats, bool(picked)))
    if drawn:
        left, right = _window_extent([st for _, st, _ in drawn])
        for y, stats, picked in drawn:
            colour = PICK_COLOUR if picked else OTHER_COLOUR
            ax.hlines(y, stats["p1"], stats["p99"], color=colour, lw=0.8)
            ax.hlines(y, stats["p5"], stats["p95"], color=colour, lw=5)
            ax.plot([stats["mean"]], [y], marker="|", color="black", ms=8)
            if stats["min"] is not None and stats["min"] < stats["p1"]:
                ax.plot([left], [y], marker="<", color="#c44e52", ms=4, clip_on=False)
            if stats["max"] is not None and stats["max"] > stats["p99"]:
                ax.plot([right], [y], marker=">", color="#c44e52", ms=4, clip_on=False)
        ax.set_xlim(left, right)
    ax.set_yticks(range(len(labels)), labels, fontsize=6.5)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_title(field, fontsize=7.5)
    ax.set_xlabel("production value", fontsize=6)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.tick_params(axis="x", labelsize=6, labelrotation=30)


def _pair_figure(facility: str, item: str, ranking: pd.DataFrame, windows: dict[int, dict[str, Any]], fields: list[str]) -> str:
    fig, targets = _pair_layout(facility, item, ranking, windows, fields)
    return _image(fig, f"{facility} {item} setting clusters and operating window", targets)


def pair_figure(facility: str, item: str, ranking: pd.DataFrame, windows: dict[int, dict[str, Any]], fields: list[str]) -> Any:
    """The figure of one facility/item (its tick labels thinned): its clusters' rates by volume, and a
    window panel per production field."""
    fig, targets = _pair_layout(facility, item, ranking, windows, fields)
    thin_ticks(fig, targets)
    return fig


def _pair_layout(facility: str, item: str, ranking: pd.DataFrame, windows: dict[int, dict[str, Any]],
                 fields: list[str]) -> tuple[Any, list[tuple[Any, str, int]]]:
    rows = max(2, math.ceil(len(fields) / WINDOW_COLUMNS))
    fig = plt.figure(figsize=(15, 1.45 * rows + 0.6))
    grid = fig.add_gridspec(rows, 2 + WINDOW_COLUMNS, width_ratios=[1.3, 1.3] + [1] * WINDOW_COLUMNS)
    rate_ax = fig.add_subplot(grid[:, :2])
    _rate_panel(rate_ax, ranking)
    window_axes = []
    for j, field in enumerate(fields):
        window_axes.append(fig.add_subplot(grid[j // WINDOW_COLUMNS, 2 + j % WINDOW_COLUMNS]))
        _window_panel(window_axes[-1], field, ranking, windows)
    fig.suptitle(f"{facility} / {item}: setting clusters by volume and defect rate; operating window per production field, "
                 f"{UNITS_NOTE} (bar p5–p95, line p1–p99, tick mean, red triangle = outliers beyond; green = recommended)",
                 fontsize=9)
    fig.tight_layout()
    return fig, [(rate_ax, "y", 6), *((ax, "x", 4) for ax in window_axes)]


def _table(head: list[str], rows: list[list[Any]], left: int = 2) -> str:
    th = "".join(f"<th class=l>{html.escape(h)}</th>" if i < left else f"<th>{html.escape(h)}</th>" for i, h in enumerate(head))
    body = "".join(
        "<tr>"
        + "".join(f"<td class=l>{html.escape(str(v))}</td>" if i < left else f"<td>{html.escape(str(v))}</td>" for i, v in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _recipes_table(recipes: list[dict[str, Any]]) -> str:
    head = ["facility", "item", "maker", "confidence", "selection", "cluster", "basis", "shots", "share", "est. defect rate",
            "credible rate", "history rate", "expected reduction", "exact setting share", "why this confidence"]
    rows = [
        [r["facility"], r["item"], r["maker"], CONFIDENCE_TEXT.get(r.get("confidence", ""), ""), r.get("selection", ""),
         r["setting_cluster"] if r["setting_cluster"] >= 0 else "none", r["basis"], f"{r['production']['rows']:,}",
         _pct(r["production"]["share"]), _pct(r["defect_rate"]["estimate"]), _pct(r["defect_rate"]["credible"]),
         _pct(r["history"]["defect_rate"]), _pct(r["history"]["expected_reduction"]), _pct(r["setting"]["exact_share"]),
         r.get("confidence_reason", "")]
        for r in recipes
    ]
    return _table(head, rows, left=5)


def _outliers(stats: dict[str, Any]) -> str:
    count = stats.get("outliers") or 0
    return f"{count:,} ({_num(stats['min'])} / {_num(stats['max'])})" if count else "0"


def _kept_table(kept: list[dict[str, Any]]) -> str:
    head = ["facility", "item", "history rate", "history credible", "considered cluster", "its credible rate",
            "its tested rate vs the rest", "reason"]
    rows = [[k["facility"], k["item"], _pct(k["history"]["defect_rate"]), _pct(k["history"]["credible"]),
             k["considered"]["setting_cluster"], _pct(k["considered"]["credible"]), _tested(k["considered"].get("test")),
             k["reason"]] for k in kept]
    return _table(head, rows, left=2)


def _tested(test: dict[str, Any] | None) -> str:
    if not test:
        return "not tested (worse than the history)"
    return (f"{_pct(test['picked_rate'])} vs {_pct(test['rest_rate'])}, difference up to "
            f"{'unknown' if test['difference_upper'] is None else format(test['difference_upper'], '+.2%')}")


def _not_covered_table(rows: list[dict[str, Any]]) -> str:
    return _table(["facility", "item", "records", "outcome", "reason"],
                  [[r["facility"], r["item"], f"{r['rows']:,}", r["outcome"], r["reason"]] for r in rows], left=2)


def _setting_table(recipe: dict[str, Any]) -> str:
    setting = recipe["setting"]
    differs = setting["most_used"] != setting["exact"]
    head = ["field", "recommended", "cluster centre"] + (["most used"] if differs else [])
    rows = [[name, _num(setting["exact"].get(name)), _num(setting["centroid"].get(name))]
            + ([_num(setting["most_used"].get(name))] if differs else [])
            for name in setting["fields"]]
    window = [[name, *(_num(s[k]) for k in ("p1", "p5", "mean", "p95", "p99")), _outliers(s)]
              for name, s in recipe["window"]["fields"].items()]
    note = "pseudo-labelled normal shots" if recipe["window"]["normal_only"] else "all shots"
    sure = recipe.get("confidence")
    return (
        (f"<p><b>Confidence: {html.escape(CONFIDENCE_TEXT.get(sure, str(sure)))}</b> — "
         f"{html.escape(recipe.get('confidence_reason', ''))}</p>" if sure else "")
        + "<div style='display:flex;gap:2em;flex-wrap:wrap'>"
        f"<div><b>Set points</b>: {'exact combination chosen by ' if setting['exact_rows'] else ''}{html.escape(setting['chosen_by'])} "
        f"({setting['exact_rows']:,} shots, {_pct(setting['exact_share'])} of the cluster)"
        + _table(head, rows, left=1)
        + f"</div><div><b>Operating window</b> ({recipe['window']['rows']:,} {note}; values {UNITS_NOTE})"
        + _table(["field", "p1", "p5", "mean", "p95", "p99", "outliers (min / max)"], window, left=1)
        + "</div></div>"
    )


def write_report(result: RecipeResult, path: Path) -> None:
    recipes = sorted(result.recipes, key=lambda r: (r["facility"], r["item"]))
    # Drawn first: facility/items that ran more than one setting cluster (there is a choice to show),
    # largest production first; the rest are in the table.
    top = sorted(result.recipes, key=lambda r: (r["history"]["clusters"] < 2, -r["history"]["rows"]))[: result.config.report_top]
    sections = []
    for recipe in top:
        pair = (recipe["facility"], recipe["item"])
        ranking = result.clusters[(result.clusters["facility"] == pair[0]) & (result.clusters["item"] == pair[1])]
        fields = list(recipe["window"]["fields"])
        sure = CONFIDENCE_TEXT.get(recipe.get("confidence", ""), "")
        sections.append(
            f"<h3>{html.escape(pair[0])} / {html.escape(pair[1])} — recommended cluster {recipe['setting_cluster']} "
            f"({_pct(recipe['production']['share'])} of its production){', ' + sure if sure else ''}</h3>"
            + _pair_figure(pair[0], pair[1], ranking, result.windows.get(pair, {}), fields)
            + _setting_table(recipe)
        )
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in result.notes)  # skips have their own table
    coverage, missing = result.coverage(), result.not_covered()
    share = f" ({coverage['share']:.0%})" if coverage["share"] is not None else ""
    body = (
        f"<p>Store version <b>{html.escape(result.model_version)}</b>, {result.records:,} records, created {result.created_at}.</p>"
        f"<p><b>{coverage['answered']} of {coverage['facility_items']} facility/items with history are answered</b>{share}; "
        f"<b>{coverage['with_setting']} of {coverage['facility_items']} facility/items with history have a setting to run</b>: "
        f"{coverage['ranked']} the ranking's pick, {coverage['next_qualifying']} the next qualifying cluster (the pick was worse "
        f"than the part's history or not shown better), {coverage['fallback']} their most produced setting (no setting cluster "
        f"qualified); {coverage['keep_current_practice']} keep current practice (no setting shown better than their history). "
        f"<b>{coverage['clearly_better']} clearly better</b> than what the part ran, {coverage['uncertain']} uncertain "
        f"(not shown to be better: read the reason before changing a running process). "
        f"{coverage['not_covered']} without an answer (skipped: listed below with the reason).</p>"
        f"<p class=muted>{html.escape(describe_rule(result.config))}</p>"
        + (f"<h2>Notes</h2><ul>{warnings}</ul>" if warnings else "")
        + (f"<h2>Without an answer ({len(missing)})</h2>{_not_covered_table(missing)}" if missing else "")
        + (f"<h2>Keep current practice ({len(result.kept)})</h2><p>No setting is shown to be better than what these "
           f"facility/items run (their mix of settings): keep it. The cluster considered is named with its figures, "
           f"not as a setting to run.</p>{_kept_table(result.kept)}" if result.kept else "")
        + "<h2>Overview</h2>" + _overview_figure(result.recipes)
        + f"<h2>{len(top)} largest facility/items (those with a choice of setting first)</h2>" + "".join(sections)
        + "<h2>All recipes</h2>" + _recipes_table(recipes)
    )
    path.write_text(page("moldwatch recipe guidance", body), encoding="utf-8")
