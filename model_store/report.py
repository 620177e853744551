"""The HTML training report, written for the plant first: what the store can judge, the machine
settings it knows, how its alarms match the lots, and its models; the statistics behind them
(score histograms, silhouettes, loss spreads) in a fold, collapsed.

One self-contained file: figures are inline PNG (model_store/plots.py).
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

from model_store.groups import DROPPED, PART_CLUSTER, TRAIN, VALIDATION, GroupKey
from model_store.models import AUTOENCODER, IFOREST, MEMAE
from model_store.plots import figure_to_img, page, plt
from model_store.report_coverage import PATH_WORDS, coverage_section
from model_store.report_settings import setting_name, settings_section
from model_store.serving.conditional import CONDITIONAL

GRID = 30  # histograms per figure: readable at report width
LINE_ROWS = 35  # models per column of the alarm-line figure
LINE_COLUMNS = 3  # columns per alarm-line figure

KIND_WORDS = {IFOREST: "isolation forest", AUTOENCODER: "autoencoder", MEMAE: "memory autoencoder"}
ROLE_WORDS = {TRAIN: "learned from", VALIDATION: "checked only", DROPPED: "too small"}

CSS = """
.lead{font-size:1.1em}.small,small{font-size:12px;color:#666}th small{font-weight:normal}
h2{border-bottom:2px solid #ddd;padding-bottom:3px;margin-top:1.6em}
ul.verdict{list-style:none;padding-left:0}ul.verdict li{padding:3px 8px;margin:3px 0;border-left:5px solid #ccc}
ul.verdict li.ok{border-color:#3c9a5f}ul.verdict li.warn{border-color:#e0a030}ul.verdict li.bad{border-color:#c8402a}
tr.own td{background:#f3faf4}tr.borrowed td{background:#fff8ea}tr.none td{background:#fdeeee}
table.coverage td{vertical-align:top}table.coverage td:nth-child(-n+3){white-space:nowrap}table.coverage td:last-child{max-width:34em}
div.scroll{overflow-x:auto}th.field{max-width:7em;font-size:12px;overflow-wrap:anywhere}
table.groups td:nth-child(-n+4){white-space:nowrap}
details.detail{margin-top:2em;border:1px solid #ccc;padding:.5em 1em;background:#fafafa}
details.detail summary{cursor:pointer;font-weight:bold;font-size:1.1em}
"""


def _percentile_words(q: float) -> str:
    """0.995 -> '99.5th percentile'."""
    value = f"{q * 100:.3f}".rstrip("0").rstrip(".")
    return f"{value}th percentile"


def _group_name(key: dict[str, Any]) -> str:
    return f"{key['facility']} · {key['item']} · {setting_name(key['cluster'])}"


def _line_of(entry: dict[str, Any], calibration: dict[str, Any]) -> float:
    """The group's exact-path line: prior base x its lot-matched factor (x the CV weight)."""
    factors = {u["path"]: u["factor"] for u in calibration.get("units", []) if u["group_id"] == entry["id"]}
    factor = factors.get("exact", factors.get("part", calibration.get("path_factor", {}).get("exact", 1.0)))
    t = entry["threshold"]
    return t["base"] * factor * (1 + min(t["cv_gain"] * t["cv"], t["margin_limit"]))


def _few_ticks(ax: Any, log_x: bool) -> None:
    """At most a handful of labelled ticks per axis: small panels must not overprint them."""
    if log_x:
        ax.xaxis.set_major_locator(LogLocator(numticks=4))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_locator(LogLocator(numticks=4))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _loss_histograms(groups: list[dict[str, Any]], calibration: dict[str, Any]) -> list[str]:
    images = []
    for start in range(0, len(groups), GRID):
        chunk = groups[start : start + GRID]
        cols = 5
        rows = math.ceil(len(chunk) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.3, rows * 2.7), squeeze=False)
        for ax in axes.flat[len(chunk):]:
            ax.axis("off")
        for ax, entry in zip(axes.flat, chunk):
            hist = entry["training"]["loss_histogram"]
            if not hist.get("counts"):
                ax.axis("off")
                continue
            edges = np.asarray(hist["edges"])
            ax.stairs(hist["counts"], edges, fill=True, color="#5b8bd0")
            if hist.get("log"):
                ax.set_xscale("log")
            ax.axvline(_line_of(entry, calibration), color="#d62728", lw=1.2)
            if hist.get("above"):
                # the tail beyond the 99.5th percentile, marked instead of stretching the axis
                ax.annotate(f"+{hist['above']} above\n(max {hist['max']:.3g})", xy=(0.98, 0.95), xycoords="axes fraction",
                            ha="right", va="top", fontsize=6.5, color="#7f3c8d")
            ax.set_yscale("log")
            _few_ticks(ax, bool(hist.get("log")))
            ax.set_xlabel("anomaly score (training loss)" + (", log scale" if hist.get("log") else ""), fontsize=7)
            ax.set_ylabel("shots (log scale)", fontsize=7)
            ax.set_title(f"{_group_name(entry['key'])}\n{KIND_WORDS.get(entry['model_kind'], entry['model_kind'])} · "
                         f"{entry['rows']:,} shots", fontsize=7.5)
            ax.tick_params(which="both", labelsize=6.5)
        fig.suptitle("Anomaly scores of the normal training shots, per model (red: its alarm line after the lot calibration)",
                     fontsize=10)
        fig.tight_layout()
        images.append(figure_to_img(fig, f"score histograms {start + 1}-{start + len(chunk)}"))
    return images


def _alarm_line_figures(groups: list[dict[str, Any]], calibration: dict[str, Any]) -> list[str]:
    """One compact figure instead of a histogram per model: where each model's normal training
    shots lie against its alarm line (score / line; 1 = alarm)."""
    items = []
    for entry in sorted(groups, key=lambda e: (e["key"]["facility"], e["key"]["item"], e["key"]["cluster"])):
        summary = entry.get("loss_summary", {})
        line = _line_of(entry, calibration)
        if not line or not all(k in summary for k in ("q50", "q99", "max")):
            continue
        items.append((_group_name(entry["key"]), summary["q50"] / line, summary.get("q90", summary["q50"]) / line,
                      summary["q99"] / line, summary["max"] / line))
    if not items:
        return []
    limit = 2.0  # beyond twice the line the axis would hide the rest; such maxima are marked with an arrow
    images = []
    per_figure = LINE_ROWS * LINE_COLUMNS
    for start in range(0, len(items), per_figure):
        chunk = items[start : start + per_figure]
        columns = math.ceil(len(chunk) / LINE_ROWS)
        height = min(len(chunk), LINE_ROWS)
        fig, axes = plt.subplots(1, columns, figsize=(5.2 * columns, 0.22 * height + 1.4), squeeze=False)
        for c, ax in enumerate(axes.flat):
            part = chunk[c * LINE_ROWS : (c + 1) * LINE_ROWS]
            y = height - 1 - np.arange(len(part))  # first model at the top, in every column
            for yy, (_, q50, q90, q99, top) in zip(y, part):
                ax.plot([q50, min(top, limit)], [yy, yy], color="#9bb7e0", lw=1)
                ax.plot([q90, q99], [yy, yy], color="#2f6db5", lw=4, solid_capstyle="butt")
                ax.plot([q50], [yy], "o", color="#2f6db5", ms=3)
                if top > limit:
                    ax.annotate("", xy=(limit, yy), xytext=(limit - 0.12, yy), arrowprops=dict(arrowstyle="->", color="#7f3c8d", lw=1))
                else:
                    ax.plot([top], [yy], "|", color="#7f3c8d", ms=6)
            ax.axvline(1.0, color="#d62728", lw=1.2)
            ax.set_yticks(y)
            ax.set_yticklabels([p[0] for p in part], fontsize=7)
            ax.set_ylim(-0.7, height - 0.3)
            ax.set_xlim(0, limit)
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.tick_params(axis="x", labelsize=7)
            ax.set_xlabel("score of normal training shots ÷ alarm line (1 = alarm)", fontsize=8)
            ax.grid(axis="x", color="#eee")
        fig.suptitle("Normal shots against each model's alarm line: dot = median shot, thick bar = 90th-99th percentile, "
                     "tick = highest (arrow: beyond 2), red = alarm line", fontsize=8.5)
        fig.tight_layout()
        images.append(figure_to_img(fig, "normal training shots against each model's alarm line"))
    return images


def _history_figure(manifest: dict[str, Any]) -> str:
    """Per group: what the lots say (defect rate) against how often the store alarms on that history."""
    groups = manifest.get("history", {}).get("groups", {})
    # a setting of a few shots (one shot: 0 % or 100 %) would stretch the axes over everyone else
    least = int(manifest["config"]["grouping"].get("min_profile_rows", 0))
    points = [(g["lot_defect_rate"], g["alarm_rate"], g["rows"]) for g in groups.values()
              if g.get("lot_defect_rate") is not None and g.get("alarm_rate") is not None and g["rows"] >= least]
    if not points:
        return "<p class=muted>No history figures.</p>"
    lot, alarm, rows = (np.asarray(v, dtype=float) for v in zip(*points))
    fig, ax = plt.subplots(figsize=(6.2, 4.6))
    ax.scatter(lot * 100, alarm * 100, s=np.clip(rows / 40, 6, 120), alpha=0.6, color="#2f6db5", edgecolor="white", lw=0.5)
    top = float(max(lot.max(), alarm.max()) * 100 * 1.05) or 1.0
    ax.plot([0, top], [0, top], color="#555", lw=1, ls="--", label="alarms = defects in the lots")
    ax.plot([0, top], [0, 2 * top], color="#bbb", lw=0.8, ls=":", label="twice / half as many")
    ax.plot([0, top], [0, 0.5 * top], color="#bbb", lw=0.8, ls=":")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.xaxis.set_major_locator(MaxNLocator(6))
    ax.yaxis.set_major_locator(MaxNLocator(6))
    ax.set_xlabel("defect rate in the lots of the setting's history (%)")
    ax.set_ylabel("alarm rate of the store on that history (%)")
    ax.set_title(f"Alarms track the lots (one dot per part and setting with {least}+ shots; size = shots)", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return figure_to_img(fig, "lot defect rate against alarm rate per part and setting")


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:.2%}"


def _calibration_table(manifest: dict[str, Any]) -> str:
    cal = manifest.get("calibration", {})
    paths = manifest.get("history", {}).get("paths", {})
    rows = []
    for name, info in cal.get("paths", {}).items():
        hist = paths.get(name, {})
        coef = cal.get("probability", {}).get(name)
        rows.append(
            f"<tr><td class=l>{PATH_WORDS.get(name, name)}<br><small>path: {html.escape(name)}</small></td>"
            f"<td class=l>{'yes' if info['used'] else 'no'}</td><td>{info['rows']:,}</td>"
            f"<td>{'' if info.get('evidence') is None else format(info['evidence'], '.1f')}</td>"
            f"<td>{'' if name not in cal.get('path_factor', {}) else format(cal['path_factor'][name], '.3f')}</td>"
            f"<td>{'' if coef is None else f'{coef[0]:.2f}, {coef[1]:.2f}'}</td>"
            f"<td>{_rate(hist.get('lot_defect_rate'))}</td><td>{_rate(hist.get('alarm_rate'))}</td></tr>")
    if CONDITIONAL in paths:  # shots no setting group names: the setting-conditioned model judged them alone
        hist = paths[CONDITIONAL]
        coef = manifest.get("conditional", {}).get("probability")
        rows.append(
            f"<tr><td class=l>{PATH_WORDS[CONDITIONAL]}<br><small>path: {CONDITIONAL}</small></td><td class=l>yes</td>"
            f"<td>{hist['rows']:,}</td><td></td><td></td><td>{'' if not coef else f'{coef[0]:.2f}, {coef[1]:.2f}'}</td>"
            f"<td>{_rate(hist.get('lot_defect_rate'))}</td><td>{_rate(hist.get('alarm_rate'))}</td></tr>")
    evidence = cal.get("min_evidence")
    head = ("<tr><th class=l>how the shot's model is found</th><th class=l>in use</th><th>shots in history</th>"
            "<th>how well lots confirm its alarms<br><small>lot evidence, likelihood-ratio statistic"
            + ("" if evidence is None else f"; a borrowed model needs {evidence:g}") + "</small></th>"
            "<th>alarm line adjustment from the lots<br><small>typical line factor</small></th>"
            "<th>defect probability curve<br><small>P(defect): a, b</small></th>"
            "<th>defect rate in lots</th><th>alarm rate on history</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _role_note(row: dict[str, Any], grouping: dict[str, Any]) -> str:
    """The group table's reason in plant words, with the store's thresholds."""
    key, role, rate = row["key"], row["role"], row["lot_defect_rate"]
    need, normal, ceiling = int(grouping["min_group_rows"]), float(grouping["normal_defect_rate"]), float(grouping["part_max_lot_rate"])
    pooled = key["cluster"] == PART_CLUSTER
    if role == TRAIN:
        if pooled:
            return f"pooled over its {row['lots']} cleanest lot{'s' if row['lots'] != 1 else ''} (days), all settings"
        return f"lots {rate:.1%} defective, under the {normal:.1%} a model may learn from"
    if role == DROPPED:
        if pooled:
            return f"fewer than {need:,} shots on days whose lots ran under {ceiling:.1%} defective"
        return f"fewer than {need:,} shots"
    if rate is None:
        return "no lot covers it, so its defect rate is unknown"
    return f"lots {rate:.1%} defective, at or above the {normal:.1%} a model may learn from: its shots test the models instead"


def _group_table(manifest: dict[str, Any], statistics: bool = False) -> str:
    """Per part and setting: its history, what it was used for and its model. ``statistics``:
    the fold's version, with the alarm line's base and the loss spread."""
    trained = {e["id"]: e for e in manifest["groups"]}
    history = manifest.get("history", {}).get("groups", {})
    grouping = manifest["config"]["grouping"]
    quantile = float(manifest["config"]["threshold"]["fixed_quantile"])
    head = ("<tr><th class=l>machine</th><th class=l>item</th><th class=l>maker</th><th class=l>setting</th>"
            "<th>shots</th><th>lots (days)</th><th>defect rate in lots</th><th class=l>used as</th><th class=l>model</th>")
    if statistics:
        head += (f"<th>alarm line before the lots<br><small>{_percentile_words(quantile)} of normal scores "
                 f"(q{quantile:g}) or the highest presumed-good score</small></th>"
                 "<th>spread of normal scores<br><small>loss CV = std / mean</small></th>"
                 "<th class=l>group id</th></tr>")
    else:
        head += "<th>alarm rate on history</th><th class=l>why</th></tr>"
    body = []
    rows = sorted(manifest["group_table"], key=lambda r: (r["key"]["facility"], r["key"]["item"], r["key"]["cluster"] == PART_CLUSTER,
                                                            r["key"]["cluster"]))
    for row in rows:
        key = row["key"]
        gid = GroupKey(key["maker"], key["facility"], key["item"], key["cluster"]).id
        entry = trained.get(gid)
        cells = (
            f"<td class=l>{html.escape(key['facility'])}</td><td class=l>{html.escape(key['item'])}</td>"
            f"<td class=l>{html.escape(key['maker'])}</td><td class=l>{setting_name(key['cluster'])}</td>"
            f"<td>{row['rows']:,}</td><td>{row['lots']}</td><td>{_rate(row['lot_defect_rate'])}</td>"
            f"<td class=l>{ROLE_WORDS.get(row['role'], row['role'])}</td>"
            f"<td class=l>{KIND_WORDS.get(entry['model_kind'], entry['model_kind']) if entry else ''}</td>")
        if statistics:
            cells += (f"<td>{entry['threshold']['base']:.4g}</td><td>{entry['threshold']['cv']:.3f}</td>" if entry
                      else "<td></td><td></td>")
            cells += f"<td class=l><small>{html.escape(gid)}</small></td>"
        else:
            alarm = (history.get(gid) or {}).get("alarm_rate")
            cells += f"<td>{_rate(alarm)}</td><td class=l>{html.escape(_role_note(row, grouping))}</td>"
        body.append(f"<tr class={row['role']}>{cells}</tr>")
    return f"<table class=groups>{head}{''.join(body)}</table>"


def _silhouette_figure(manifest: dict[str, Any]) -> str:
    makers = list(manifest["setting_models"])
    fig, axes = plt.subplots(1, len(makers), figsize=(4.4 * len(makers), 3.4), squeeze=False)
    for ax, maker in zip(axes.flat, makers):
        model = manifest["setting_models"][maker]
        sil = {int(k): v for k, v in model["silhouette"].items()}
        if sil:
            ks = sorted(sil)
            ax.plot(ks, [sil[k] for k in ks], marker="o", ms=3)
            ax.axvline(model["k"], color="#d62728", lw=1, label=f"chosen: {model['k']} settings")
            ax.legend(fontsize=7, loc="lower right")
        ax.xaxis.set_major_locator(MaxNLocator(8, integer=True))
        ax.set_title(f"{maker}: how clearly the set points split", fontsize=9)
        ax.set_xlabel("number of settings tried (k)", fontsize=8)
        ax.set_ylabel("silhouette (higher = clearer)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return figure_to_img(fig, "silhouette by number of settings, per maker")


def _rules(manifest: dict[str, Any]) -> str:
    cfg = manifest["config"]
    return (
        f"<p class=small>Rules: a setting is learned from below {cfg['grouping']['normal_defect_rate']:.1%} lot defect rate and "
        f"from {cfg['grouping']['min_group_rows']} shots; isolation forest under {cfg['model']['autoencoder_min_rows']} shots, "
        f"autoencoder under {cfg['model']['memae_min_rows']}, memory autoencoder (MemAE) above; prior line = "
        f"max(q{cfg['threshold']['fixed_quantile']}, max presumed-good loss), times a factor per (group, path) matched on the "
        f"lots so that alarms on history equal the lots' bad counts, × (1 + min({cfg['threshold']['cv_gain']}·CV + "
        f"{cfg['threshold']['distance_gain']}·distance, {cfg['threshold']['margin_limit']})). A production value beyond its "
        f"band by more than {cfg['threshold']['excursion_band_share']:.0%} of the band's width always alarms. Every figure "
        "comes from the serving core (the same code as <code>moldwatch score</code>) run over the training history.</p>")


def _lines_decide(manifest: dict[str, Any]) -> str:
    section = manifest.get("conditional", {})
    if section.get("units") and section.get("combine") == "conditional":
        return (" In this store the setting-conditioned models decide the alarms; these lines decide only for a maker "
                "without one" + (", and the models' bands still catch gross excursions" if section.get("group_excursions") else "")
                + ".")
    return ""


def write_training_report(manifest: dict[str, Any], path: Path) -> None:
    groups = manifest["groups"]
    calibration = manifest.get("calibration", {})
    kinds: dict[str, int] = {}
    for entry in groups:
        kinds[entry["model_kind"]] = kinds.get(entry["model_kind"], 0) + 1
    units = len(manifest.get("conditional", {}).get("units", {}))
    created = str(manifest["created_at"]).replace("T", " ").replace("+00:00", " UTC")
    lead = (
        f"<p>Model version <b>{html.escape(manifest['model_version'])}</b>, trained {html.escape(created)} on "
        f"{manifest['training']['records']:,} shots in {manifest['training']['seconds']:.0f} s: "
        f"{len(groups)} anomaly model{'s' if len(groups) != 1 else ''}"
        + (f" ({', '.join(f'{v} {KIND_WORDS.get(k, k)}' for k, v in sorted(kinds.items()))})" if kinds else "")
        + f" and {units} setting-conditioned model{'s' if units != 1 else ''} (one per maker with enough history).</p>")
    fold = (
        "<details class=detail><summary>Statistical detail: score histograms, silhouettes, loss spread, rules</summary>"
        + _rules(manifest)
        + "<h3>How the settings were found</h3><p class=small>K-Means over each maker's distinct set-point combinations; "
          "the number of settings is the one whose silhouette is highest.</p>" + _silhouette_figure(manifest)
        + "<h3>Models: alarm lines and spread</h3>" + _group_table(manifest, statistics=True)
        + "<h3>Score histograms, every model</h3>" + "".join(_loss_histograms(groups, calibration))
        + "</details>")
    body = (
        lead
        + "<h2 id=judge>What this store can judge</h2>" + coverage_section(manifest)
        + "<h2 id=settings>Machine settings</h2>" + settings_section(manifest)
        + "<h2 id=lots>Alarms against the lots</h2>"
          "<p>Each day's lot says how many shots were bad. The store's alarm lines are matched to those counts; the table "
          "shows, for each way a shot's model is found, how much history it judged and how its alarms compare with the "
          "lots.</p>" + _calibration_table(manifest) + _history_figure(manifest)
        + "<h2 id=models>Anomaly models per part and setting</h2>" + _group_table(manifest)
        + "<h2 id=lines>Where each model draws its alarm line</h2>"
          "<p>How far the normal training shots of each model stay below its alarm line. A model whose normal shots reach the "
          "line alarms often on normal production." + _lines_decide(manifest) + "</p>"
        + "".join(_alarm_line_figures(groups, calibration))
        + fold
    )
    path.write_text(page("moldwatch training report", body, CSS), encoding="utf-8")
