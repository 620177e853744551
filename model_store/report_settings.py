"""The training report's "Machine settings" section: each maker's setting clusters with their set points.

A setting cluster is a number to the store; to the plant it is a set of set points. Training
records each cluster's median set points over its shots (:func:`cluster_set_points`, in the
manifest as ``setting_clusters``); a store from before that shows the cluster's centre instead
(the K-Means centroid, scaled back to raw units).
"""
from __future__ import annotations

import html
import math
import re
from typing import Any

import numpy as np
import pandas as pd

from model_store.groups import PART_CLUSTER


def cluster_set_points(records: pd.DataFrame, setting_models: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per maker, per setting cluster: its shots and the median of each set point over them.

    ``records`` as :func:`model_store.store_training.prepare` leaves them (state imputed, ``cluster``
    column); ``setting_models`` maps maker -> :class:`~model_store.serving.clusters.SettingModel`.
    JSON-ready (NaN -> None).
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for maker, model in setting_models.items():
        sub = records[(records["maker"] == maker).to_numpy() & (records["cluster"] >= 0).to_numpy()]
        entries = []
        for cluster, rows in sub.groupby("cluster"):
            median = rows[list(model.fields)].median(numeric_only=False).to_numpy(dtype=float)
            entries.append({"cluster": int(cluster), "rows": int(len(rows)),
                            "median": [None if math.isnan(v) else round(float(v), 6) for v in median]})
        out[str(maker)] = entries
    return out


def setting_name(cluster: int) -> str:
    """A cluster as the plant reads it: 'setting 3'; the pooled part group as 'all settings'."""
    return "all settings" if int(cluster) == PART_CLUSTER else f"setting {int(cluster)}"


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _set_points(manifest: dict[str, Any], maker: str) -> tuple[dict[int, list[float | None]], str]:
    """Each cluster's set points, and what they are (median over shots, or the cluster centre)."""
    recorded = manifest.get("setting_clusters", {}).get(maker)
    if recorded is not None:
        return {int(e["cluster"]): e["median"] for e in recorded}, "median over the setting's shots"
    model = manifest["setting_models"][maker]
    centres = np.asarray(model["centroids"], dtype=float) * np.asarray(model["scale"]) + np.asarray(model["minimum"])
    return {k: [float(v) for v in row] for k, row in enumerate(centres)}, "centre of the cluster (this store predates recorded medians)"


def _field_header(name: str) -> str:
    # long schema names wrap after an underscore or before an inner capital instead of widening the table
    marked = re.sub(r"(?<=_)|(?<=[a-z0-9])(?=[A-Z])", "\x00", name)
    return "<wbr>".join(html.escape(part) for part in marked.split("\x00"))


def settings_section(manifest: dict[str, Any]) -> str:
    """Per maker: one row per setting with its shots, the parts that ran it and its set points."""
    table = manifest["group_table"]
    schema = manifest.get("schema", {})
    units = schema.get("units") or {}
    parts: list[str] = []
    intro = (
        "<p>Each maker's set-point combinations are sorted into a few <b>settings</b> (setting clusters): shots of one "
        "part under one setting are expected to look alike. The values are the set points of the setting"
        + ("" if units else "; the plant schema records no units, so they are in the units of the records")
        + ".</p>"
    )
    parts.append(intro)
    for maker, model in manifest["setting_models"].items():
        points, what = _set_points(manifest, maker)
        shots: dict[int, int] = {}
        runs: dict[int, set[tuple[str, str]]] = {}
        for row in table:
            key = row["key"]
            if key["maker"] != maker or key["cluster"] == PART_CLUSTER:  # a pooled part group spans every setting
                continue
            shots[key["cluster"]] = shots.get(key["cluster"], 0) + row["rows"]
            runs.setdefault(key["cluster"], set()).add((key["facility"], key["item"]))
        fields = list(model["fields"])
        head = ("<tr><th class=l>setting</th><th>shots in history</th><th>parts running it</th>"
                + "".join(f"<th class=field>{_field_header(f)}"
                          + (f"<br><small>{html.escape(str(units[f]))}</small>" if f in units else "") + "</th>" for f in fields)
                + "</tr>")
        body = []
        for cluster in sorted(set(points) | set(shots)):
            values = points.get(cluster) or [None] * len(fields)
            body.append(
                f"<tr><td class=l>{setting_name(cluster)}</td><td>{shots.get(cluster, 0):,}</td>"
                f"<td>{len(runs.get(cluster, ()))}</td>" + "".join(f"<td>{_number(v)}</td>" for v in values) + "</tr>")
        parts.append(
            f"<h3>{html.escape(maker)}: {len(points)} settings</h3>"
            f"<p class=small>Set points: {html.escape(what)}.</p>"
            f"<div class=scroll><table class=settings>{head}{''.join(body)}</table></div>")
    grouped = sum(r["rows"] for r in table if r["key"]["cluster"] != PART_CLUSTER)
    outside = int(manifest["training"]["records"]) - grouped
    if outside > 0:
        parts.append(
            f"<p class=small>{outside:,} shots of the history are in no setting: their part or set points were "
            "unknown and could not be filled in from the machine's neighbouring shots.</p>")
    return "".join(parts)
