"""The HTML training report: what was trained, how, and where each group draws its line."""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from model_store.plots import figure_to_img, page, plt

GRID = 30  # histograms per figure: readable at report width


def _loss_histograms(groups: list[dict[str, Any]]) -> list[str]:
    images = []
    for start in range(0, len(groups), GRID):
        chunk = groups[start : start + GRID]
        cols = 6
        rows = math.ceil(len(chunk) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 1.9), squeeze=False)
        for ax in axes.flat[len(chunk):]:
            ax.axis("off")
        for ax, entry in zip(axes.flat, chunk):
            hist = entry["training"]["loss_histogram"]
            edges = np.asarray(hist["edges"])
            ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", color="#5b8bd0")
            ax.axvline(entry["threshold"]["base"], color="#d62728", lw=1.2)
            ax.set_yscale("log")
            ax.set_title(f"{entry['id']}\n{entry['model_kind']} · {entry['rows']} rows", fontsize=6.5)
            ax.tick_params(labelsize=5.5)
        fig.suptitle("Training loss per group (red: base threshold)", fontsize=9)
        fig.tight_layout()
        images.append(figure_to_img(fig, f"loss histograms {start + 1}-{start + len(chunk)}"))
    return images


def _cluster_figure(manifest: dict[str, Any]) -> str:
    makers = list(manifest["setting_models"])
    fig, axes = plt.subplots(2, len(makers), figsize=(4.2 * len(makers), 6), squeeze=False)
    table = manifest["group_table"]
    for j, maker in enumerate(makers):
        model = manifest["setting_models"][maker]
        sizes: dict[int, int] = {}
        for row in table:
            if row["key"]["maker"] == maker:
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
    validation = manifest.get("validation_groups", {})
    head = (
        "<tr><th class=l>maker</th><th class=l>facility</th><th class=l>item</th><th>cluster</th><th>rows</th>"
        "<th>lots</th><th>lot defect rate</th><th class=l>role</th><th class=l>model</th><th>base threshold</th>"
        "<th>loss CV</th><th>validation anomaly rate</th><th class=l>reason</th></tr>"
    )
    body = []
    from model_store.groups import GroupKey

    for row in manifest["group_table"]:
        key = row["key"]
        gid = GroupKey(key["maker"], key["facility"], key["item"], key["cluster"]).id
        entry = trained.get(gid)
        val = validation.get(gid)
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
        body[-1] += f"<td>{'' if not val else format(val['anomaly_rate'], '.2%')}</td><td class=l>{html.escape(row['reason'])}</td></tr>"
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
        f"AutoEncoder under {cfg['model']['memae_min_rows']}, MemAE above; threshold = max(q{cfg['threshold']['fixed_quantile']}, "
        f"max presumed-good loss) × (1 + min({cfg['threshold']['cv_gain']}·CV + {cfg['threshold']['distance_gain']}·distance, "
        f"{cfg['threshold']['margin_limit']})).</p>"
    )
    body = (
        summary
        + "<h2>Setting clusters</h2>" + _cluster_figure(manifest)
        + "<h2>Groups</h2>" + _group_table(manifest)
        + "<h2>Training loss and thresholds</h2>" + "".join(_loss_histograms(groups))
    )
    path.write_text(page("moldwatch training report", body), encoding="utf-8")
