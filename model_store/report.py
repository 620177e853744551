"""The HTML training report: what was trained, how, and where each group draws its line."""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from model_store.plots import figure_to_img, page, plt

GRID = 30  # histograms per figure: readable at report width


def _line_of(entry: dict[str, Any], calibration: dict[str, Any]) -> float:
    """The group's exact-path line: prior base x its lot-matched factor (x the CV weight)."""
    factors = {u["path"]: u["factor"] for u in calibration.get("units", []) if u["group_id"] == entry["id"]}
    factor = factors.get("exact", factors.get("part", calibration.get("path_factor", {}).get("exact", 1.0)))
    t = entry["threshold"]
    return t["base"] * factor * (1 + min(t["cv_gain"] * t["cv"], t["margin_limit"]))


def _loss_histograms(groups: list[dict[str, Any]], calibration: dict[str, Any]) -> list[str]:
    images = []
    for start in range(0, len(groups), GRID):
        chunk = groups[start : start + GRID]
        cols = 5
        rows = math.ceil(len(chunk) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.2, rows * 2.5), squeeze=False)
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
            line = _line_of(entry, calibration)
            ax.axvline(line, color="#d62728", lw=1.2)
            if hist.get("above"):
                # the tail beyond the 99.5th percentile, marked instead of stretching the axis
                ax.annotate(f"+{hist['above']} above\n(max {hist['max']:.3g})", xy=(0.98, 0.95), xycoords="axes fraction",
                            ha="right", va="top", fontsize=6.5, color="#7f3c8d")
            ax.set_yscale("log")
            ax.set_xlabel("training loss" + (" (log)" if hist.get("log") else ""), fontsize=7)
            ax.set_ylabel("shots", fontsize=7)
            ax.set_title(f"{entry['id']}\n{entry['model_kind']} · {entry['rows']} rows", fontsize=7.5)
            ax.tick_params(which="both", labelsize=6.5)
        fig.suptitle("Training loss per group (red: its lot-calibrated line on the exact path)", fontsize=10)
        fig.tight_layout()
        images.append(figure_to_img(fig, f"loss histograms {start + 1}-{start + len(chunk)}"))
    return images


def _history_figure(manifest: dict[str, Any]) -> str:
    """Per group: what the lots say (defect rate) against how often the store alarms on that history."""
    groups = manifest.get("history", {}).get("groups", {})
    points = [(g["lot_defect_rate"], g["alarm_rate"], g["rows"]) for g in groups.values()
              if g.get("lot_defect_rate") is not None and g.get("alarm_rate") is not None]
    if not points:
        return "<p class=muted>No history figures.</p>"
    lot, alarm, rows = (np.asarray(v, dtype=float) for v in zip(*points))
    fig, ax = plt.subplots(figsize=(6.2, 4.6))
    ax.scatter(lot * 100, alarm * 100, s=np.clip(rows / 40, 6, 120), alpha=0.6, color="#2f6db5", edgecolor="white", lw=0.5)
    top = float(max(lot.max(), alarm.max()) * 100 * 1.05) or 1.0
    ax.plot([0, top], [0, top], color="#555", lw=1, ls="--", label="alarm rate = lot defect rate")
    ax.plot([0, top], [0, 2 * top], color="#bbb", lw=0.8, ls=":", label="2x / 0.5x")
    ax.plot([0, top], [0, 0.5 * top], color="#bbb", lw=0.8, ls=":")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("lot defect rate of the group's history (%)")
    ax.set_ylabel("alarm rate on that history (%)")
    ax.set_title("Alarms track the lots (one dot per setting group; size = rows)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return figure_to_img(fig, "lot defect rate against alarm rate per group")


def _calibration_table(manifest: dict[str, Any]) -> str:
    cal = manifest.get("calibration", {})
    paths = manifest.get("history", {}).get("paths", {})
    rows = []
    for name, info in cal.get("paths", {}).items():
        hist = paths.get(name, {})
        coef = cal.get("probability", {}).get(name)
        rows.append(
            f"<tr><td class=l>{name}</td><td class=l>{'yes' if info['used'] else 'no'}</td><td>{info['rows']:,}</td>"
            f"<td>{'' if info.get('evidence') is None else format(info['evidence'], '.1f')}</td>"
            f"<td>{'' if name not in cal.get('path_factor', {}) else format(cal['path_factor'][name], '.3f')}</td>"
            f"<td>{'' if coef is None else f'{coef[0]:.2f}, {coef[1]:.2f}'}</td>"
            f"<td>{'' if hist.get('lot_defect_rate') is None else format(hist['lot_defect_rate'], '.2%')}</td>"
            f"<td>{'' if hist.get('alarm_rate') is None else format(hist['alarm_rate'], '.2%')}</td></tr>")
    head = ("<tr><th class=l>path</th><th class=l>used</th><th>history rows</th><th>lot evidence (LR)</th>"
            "<th>typical line factor</th><th>P(defect): a, b</th><th>lot defect rate</th><th>alarm rate</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _cluster_figure(manifest: dict[str, Any]) -> str:
    makers = list(manifest["setting_models"])
    fig, axes = plt.subplots(2, len(makers), figsize=(4.2 * len(makers), 6), squeeze=False)
    table = manifest["group_table"]
    for j, maker in enumerate(makers):
        model = manifest["setting_models"][maker]
        sizes: dict[int, int] = {}
        for row in table:
            if row["key"]["maker"] == maker and row["key"]["cluster"] >= 0:  # pooled part groups span all clusters
                sizes[row["key"]["cluster"]] = sizes.get(row["key"]["cluster"], 0) + row["rows"]
        ks = sorted(sizes)
        axes[0, j].bar([str(k) for k in ks], [sizes[k] for k in ks], color="#4c9f70")
        axes[0, j].set_title(f"{maker}: rows per setting cluster (k={model['k']})", fontsize=9)
        axes[0, j].tick_params(labelsize=6)
        sil = {int(k): v for k, v in model["silhouette"].items()}
        if sil:
            axes[1, j].plot(sorted(sil), [sil[k] for k in sorted(sil)], marker="o", ms=3)
            axes[1, j].axvline(model["k"], color="#d62728", lw=1)
        axes[1, j].set_title(f"{maker}: silhouette by k (red: chosen)", fontsize=9)
        axes[1, j].set_xlabel("k", fontsize=8)
    fig.tight_layout()
    return figure_to_img(fig, "setting clusters")


def _group_table(manifest: dict[str, Any]) -> str:
    trained = {e["id"]: e for e in manifest["groups"]}
    history = manifest.get("history", {}).get("groups", {})
    head = (
        "<tr><th class=l>maker</th><th class=l>facility</th><th class=l>item</th><th>cluster</th><th>rows</th>"
        "<th>lots</th><th>lot defect rate</th><th class=l>role</th><th class=l>model</th><th>base threshold</th>"
        "<th>loss CV</th><th>alarm rate on history</th><th class=l>reason</th></tr>"
    )
    body = []
    from model_store.groups import GroupKey

    for row in manifest["group_table"]:
        key = row["key"]
        gid = GroupKey(key["maker"], key["facility"], key["item"], key["cluster"]).id
        entry = trained.get(gid)
        val = history.get(gid)
        rate = row["lot_defect_rate"]
        body.append(
            f"<tr class={row['role']}><td class=l>{html.escape(key['maker'])}</td><td class=l>{html.escape(key['facility'])}</td>"
            f"<td class=l>{html.escape(key['item'])}</td><td>{key['cluster']}</td><td>{row['rows']}</td><td>{row['lots']}</td>"
            f"<td>{'' if rate is None else f'{rate:.2%}'}</td><td class=l>{row['role']}</td>"
            f"<td class=l>{entry['model_kind'] if entry else ''}</td>"
            f"<td>{entry['threshold']['base']:.4g}</td><td>{entry['threshold']['cv']:.3f}</td>" if entry else
            f"<tr class={row['role']}><td class=l>{html.escape(key['maker'])}</td><td class=l>{html.escape(key['facility'])}</td>"
            f"<td class=l>{html.escape(key['item'])}</td><td>{key['cluster']}</td><td>{row['rows']}</td><td>{row['lots']}</td>"
            f"<td>{'' if rate is None else f'{rate:.2%}'}</td><td class=l>{row['role']}</td><td></td><td></td><td></td>"
        )
        alarm = None if not val else val.get("alarm_rate")
        body[-1] += f"<td>{'' if alarm is None else format(alarm, '.2%')}</td><td class=l>{html.escape(row['reason'])}</td></tr>"
    return f"<table>{head}{''.join(body)}</table>"


def write_training_report(manifest: dict[str, Any], path: Path) -> None:
    groups = manifest["groups"]
    kinds: dict[str, int] = {}
    for entry in groups:
        kinds[entry["model_kind"]] = kinds.get(entry["model_kind"], 0) + 1
    roles: dict[str, int] = {}
    for row in manifest["group_table"]:
        roles[row["role"]] = roles.get(row["role"], 0) + 1
    cfg = manifest["config"]
    summary = (
        f"<p>Model version <b>{html.escape(manifest['model_version'])}</b>, created {manifest['created_at']}, "
        f"{manifest['training']['records']:,} records, trained in {manifest['training']['seconds']:.0f} s.</p>"
        f"<p>Groups: {', '.join(f'{v} {k}' for k, v in sorted(roles.items()))}. "
        f"Models: {', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}.</p>"
        f"<p class=muted>Rules: train below {cfg['grouping']['normal_defect_rate']:.1%} lot defect rate, drop under "
        f"{cfg['grouping']['min_group_rows']} rows; IsolationForest under {cfg['model']['autoencoder_min_rows']} rows, "
        f"AutoEncoder under {cfg['model']['memae_min_rows']}, MemAE above; prior line = max(q{cfg['threshold']['fixed_quantile']}, "
        f"max presumed-good loss), times a factor per (group, path) matched on the lots so that alarms on history equal the "
        f"lots' bad counts, × (1 + min({cfg['threshold']['cv_gain']}·CV + {cfg['threshold']['distance_gain']}·distance, "
        f"{cfg['threshold']['margin_limit']})). A production value beyond its band by more than "
        f"{cfg['threshold']['excursion_band_share']:.0%} of the band's width always alarms.</p>"
        "<p class=muted>Every figure below comes from the serving core (the same code as <code>moldwatch score</code>) "
        "run over the training history.</p>"
    )
    body = (
        summary
        + "<h2>Setting clusters</h2>" + _cluster_figure(manifest)
        + "<h2>Lot calibration</h2>" + _calibration_table(manifest) + _history_figure(manifest)
        + "<h2>Groups</h2>" + _group_table(manifest)
        + "<h2>Training loss and thresholds</h2>" + "".join(_loss_histograms(groups, manifest.get("calibration", {})))
    )
    path.write_text(page("moldwatch training report", body), encoding="utf-8")
