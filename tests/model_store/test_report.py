"""The training report as the plant reads it: what the store can judge (every part once, with the
path its shots take or the reason it has none), plant words up front, the statistics in a fold.

One tiny real store (one maker of the forest plant, IsolationForests only, seconds to train) in
which one part has exactly the row threshold and another one row fewer.
"""
from __future__ import annotations

import copy
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_store.canonical import canonical_lots, canonical_records
from model_store.config import TrainingConfig
from model_store.groups import PART_CLUSTER, GroupKey
from model_store.report import write_training_report
from model_store.report_coverage import BORROWED, NONE, OWN, judged_on_own_history, store_coverage
from model_store.report_settings import cluster_set_points
from model_store.serving.conditional import PART_SEPARATOR, ConditionalUnit
from model_store.serving.store_format import ConditionalUnitEntry, read

MAKER = "HANIL"
AT, BELOW = ("F06", "ITM-004"), ("F02", "ITM-008")  # parts cut to exactly THRESHOLD shots and one fewer
THRESHOLD = 150
OVERRIDES = {
    "grouping.min_group_rows": str(THRESHOLD),  # a model of its own (per setting, or the part's pooled one)
    "conditional.min_part_rows": str(THRESHOLD),  # the setting-conditioned model's tables of its own
    # every lot counts as clean: a part's pooled model takes all its shots, so its size is its history
    "grouping.normal_defect_rate": "1.0",
    "grouping.part_max_lot_rate": "1.0",
    "threshold.path_min_evidence": "0",  # no path switched off by the lots: the parts' paths are fixed
    "conditional.combine": "groups",  # the per-setting models decide (the conditional variant: below)
    "model.autoencoder_min_rows": str(10**9),
    "model.memae_min_rows": str(10**9),
    "model.iforest_trees": "25",
    "workers": "1",
}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def _cut(records: pd.DataFrame, lots: pd.DataFrame) -> pd.DataFrame:
    """One maker's complete rows (item, set points and a lot known: every count below is exact),
    with the two parts cut to THRESHOLD and THRESHOLD - 1 shots spread over the whole history."""
    sub = records[records["maker"] == MAKER]
    settings = [c for c in sub.columns if c.startswith("set_")]
    covered = sub.merge(lots[["facility", "item", "lot_date"]].drop_duplicates(), on=["facility", "item", "lot_date"], how="left",
                        indicator=True)["_merge"].eq("both").to_numpy()
    sub = sub[sub["item"].notna().to_numpy() & sub[settings].notna().all(axis=1).to_numpy() & covered]
    keep = []
    for (facility, item), rows in sub.groupby(["facility", "item"]):
        rows = rows.sort_values("timestamp")
        want = THRESHOLD if (facility, item) == AT else THRESHOLD - 1 if (facility, item) == BELOW else None
        if want is not None:
            assert len(rows) > want, "the forest plant changed: pick other parts"
            rows = rows.iloc[np.unique(np.linspace(0, len(rows) - 1, want).round().astype(int))]
            assert len(rows) == want
        keep.append(rows)
    return pd.concat(keep).sort_values("timestamp").reset_index(drop=True)


@pytest.fixture(scope="module")
def tiny_store(forest_plant, tmp_path_factory) -> Path:
    from model_store.store_training import train_store

    records = canonical_records(forest_plant.records, forest_plant.schema)
    lots = canonical_lots(forest_plant.lots, forest_plant.schema)
    store = tmp_path_factory.mktemp("stores") / "report_store"
    train_store(_cut(records, lots), lots, forest_plant.schema, store, TrainingConfig().with_overrides(OVERRIDES))
    return store


@pytest.fixture(scope="module")
def manifest(tiny_store) -> dict:
    return json.loads((tiny_store / "manifest.json").read_text())


class Page(HTMLParser):
    """Checks nesting, and collects what the tests read: the coverage rows, images, folds, headings."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.rows: list[dict] = []  # table.coverage rows: attrs and cell texts
        self.images: list[tuple[str, str, bool]] = []  # alt, src, inside a <details>
        self.details: list[dict] = []
        self.headings: list[tuple[str, str, bool]] = []  # tag, text (small print left out), inside a <details>
        self.sections: dict[str, str] = {}  # h2 id -> the text under it
        self._table_class: list[str] = []
        self._row: dict | None = None
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None
        self._small = 0
        self._section: str | None = None

    @property
    def folded(self) -> bool:
        return "details" in self.stack

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "h2":
            self._section = attrs.get("id") or ""
            self.sections.setdefault(self._section, "")
        if tag == "details":
            self.details.append(attrs)
        if tag == "img":
            self.images.append((attrs.get("alt", ""), attrs.get("src", ""), self.folded))
        if tag == "table":
            self._table_class.append(attrs.get("class") or "")
        if tag == "tr" and self._table_class and self._table_class[-1] == "coverage" and "data-part" in attrs:
            self._row = {"attrs": attrs, "cells": []}
        if tag == "td" and self._row is not None:
            self._cell = []
        if tag in ("h2", "h3", "th", "summary"):
            self._heading = []
        if tag == "small":
            self._small += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()
        if tag == "small":
            self._small -= 1
        if tag in ("h2", "h3", "th", "summary") and self._heading is not None:
            self.headings.append((tag, " ".join("".join(self._heading).split()), self.folded))
            self._heading = None
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        if tag == "table":
            self._table_class.pop()

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._heading is not None and not self._small:
            self._heading.append(data)
        if self._section is not None and not self.folded:
            self.sections[self._section] += data


def _page(path: Path) -> Page:
    parser = Page()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def _row(page: Page, part: tuple[str, str]) -> dict:
    found = [r for r in page.rows if r["attrs"]["data-part"] == f"{part[0]}|{part[1]}"]
    assert len(found) == 1, found
    return found[0]


def _parts_with_history(manifest: dict) -> list[tuple[str, str]]:
    return sorted({(r["key"]["facility"], r["key"]["item"]) for r in manifest["group_table"]})


# -- the page ------------------------------------------------------------------------------------
def test_report_is_well_formed_self_contained_with_the_statistics_folded(tiny_store) -> None:
    page = _page(tiny_store / "report.html")
    assert page.errors == [] and page.stack == [], (page.errors, page.stack)
    text = (tiny_store / "report.html").read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(?!data:)', text)  # nothing fetched from elsewhere
    assert page.images and all(src.startswith("data:image/png;base64,") for _, src, _ in page.images)
    # one fold, collapsed; the score histograms and silhouettes all inside it, a compact figure up front
    assert len(page.details) == 1 and "open" not in page.details[0]
    histograms = [(alt, folded) for alt, _, folded in page.images if alt.startswith("score histograms")]
    assert histograms and all(folded for _, folded in histograms)
    assert all(folded for alt, _, folded in page.images if "silhouette" in alt)
    assert [alt for alt, _, folded in page.images if not folded and "alarm line" in alt]
    # the report opens with what the store can judge
    assert next(h for h in page.headings if h[0] == "h2")[1] == "What this store can judge"


def test_headings_and_columns_up_front_speak_plant(tiny_store) -> None:
    page = _page(tiny_store / "report.html")
    shown = " | ".join(text for _, text, folded in page.headings if not folded).lower()
    for term in ("q0.995", "silhouette", "loss cv", "(lr)", "cluster", "path", "role", "rows"):
        assert term not in shown, term
    assert "alarm line" in " ".join(text for _, text, folded in page.headings if folded).lower()


def test_settings_are_shown_with_their_median_set_points(tiny_store, manifest) -> None:
    page = _page(tiny_store / "report.html")
    settings = page.sections["settings"]
    clusters = manifest["setting_clusters"][MAKER]
    assert clusters and sum(c["rows"] for c in clusters) == manifest["training"]["records"]
    assert "median over the setting's shots" in settings
    for cluster in clusters:
        assert f"setting {cluster['cluster']}" in settings
    assert all(f in settings for f in manifest["setting_models"][MAKER]["fields"][:2])


# -- what the store can judge ----------------------------------------------------------------------
def test_every_part_with_history_is_listed_once_with_a_path_or_a_reason(tiny_store, manifest) -> None:
    page = _page(tiny_store / "report.html")
    listed = [tuple(r["attrs"]["data-part"].split("|")) for r in page.rows]
    assert sorted(listed) == _parts_with_history(manifest)  # each exactly once
    for row in page.rows:
        _machine, _item, _maker, _shots, against, _models, why = row["cells"]
        assert against, row
        if row["attrs"]["data-basis"] != OWN:
            assert why, row
    section = page.sections["judge"]
    assert f"{len(listed)} parts" in section and "came back unjudged" in section


def test_a_part_at_the_row_threshold_is_judged_and_one_below_is_named_with_it(tiny_store, manifest) -> None:
    page = _page(tiny_store / "report.html")
    at, below = _row(page, AT), _row(page, BELOW)
    assert at["attrs"]["data-basis"] == OWN and at["cells"][3] == f"{THRESHOLD:,}"
    assert "part model" in at["cells"][5] and at["cells"][6] == ""
    # its settings with the threshold's shots have models of their own too (here all its shots run one setting)
    full = [r for r in manifest["group_table"] if (r["key"]["facility"], r["key"]["item"]) == AT
            and r["key"]["cluster"] != PART_CLUSTER and r["rows"] >= THRESHOLD]
    assert full and at["cells"][5].startswith(f"{len(full)} of ")
    assert below["attrs"]["data-basis"] == BORROWED and below["cells"][3] == f"{THRESHOLD - 1:,}"
    why = below["cells"][6]
    assert f"only {THRESHOLD - 1:,} shots in history, fewer than the {THRESHOLD:,} a model needs" in why
    assert below["cells"][5].startswith("none")
    # and it is named in the list above the table, with its reason
    section = page.sections["judge"]
    assert f"{BELOW[1]} on {BELOW[0]} ({THRESHOLD - 1:,} shots)" in section
    assert f"fewer shots than the {THRESHOLD:,} a model of its own needs" in section.lower()


def test_the_setting_conditioned_model_at_its_threshold(manifest) -> None:
    """With the setting-conditioned model deciding (the default), a part one shot short of its
    tables is weighed against its maker's history for that reason; the part at the threshold has
    its tables (what it lacks, if anything, is a line of its own, not shots)."""
    variant = copy.deepcopy(manifest)
    variant["conditional"]["combine"] = "conditional"
    parts = {(p.facility, p.item): p for p in store_coverage(variant).parts}
    below, at = parts[BELOW], parts[AT]
    assert below.basis == BORROWED
    assert f"only {THRESHOLD - 1:,} shots in history, fewer than the {THRESHOLD:,} needed" in below.why
    assert f"fewer than the {THRESHOLD:,}" not in at.why
    assert at.basis == OWN or "alarm line" in at.why
    # a small history lowers the unit's floor below the config's; a part it still left out at the
    # configured threshold is short of the lowered floor, not of the threshold
    key = f"{AT[0]}{PART_SEPARATOR}{AT[1]}"
    entry = variant["conditional"]["units"][MAKER]
    entry["raw_tables"] = [k for k in entry["raw_tables"] if k != key]
    at = {(p.facility, p.item): p for p in store_coverage(variant).parts}[AT]
    assert at.basis == BORROWED and "too few shots of its own" in at.why and "fewer than" not in at.why


def test_the_own_history_rule_is_the_units_own(tiny_store, manifest) -> None:
    """judged_on_own_history says what ConditionalUnit.evidence does for every part of the store."""
    entry = manifest["conditional"]["units"][MAKER]
    unit = ConditionalUnit.from_files(read(ConditionalUnitEntry.from_dict, entry), tiny_store / entry["artifact"])
    keys = np.array(sorted({f"{f}{PART_SEPARATOR}{i}" for f, i in _parts_with_history(manifest)}), dtype=object)
    _, _, judged_as, _, _ = unit.evidence(np.zeros((len(keys), len(unit.settings))), keys, np.zeros((len(keys), len(unit.features))))
    for key, used in zip(keys, judged_as):
        assert judged_on_own_history(entry, key) == (used == key), key
    assert any(used == key for key, used in zip(keys, judged_as))  # the check can see both answers
    assert any(used != key for key, used in zip(keys, judged_as))


def test_no_reason_claims_fewer_shots_than_the_part_has(manifest) -> None:
    for combine in ("groups", "conditional", "max"):
        variant = copy.deepcopy(manifest)
        variant["conditional"]["combine"] = combine
        for part in store_coverage(variant).parts:
            for text in (part.why, part.models):
                for shots, need in re.findall(r"only ([\d,]+) shots in history, fewer than the ([\d,]+)", text):
                    assert int(shots.replace(",", "")) == part.shots < int(need.replace(",", "")), (part.name, text)


def test_a_part_at_the_threshold_without_a_model_is_not_called_too_small(manifest) -> None:
    """A part with exactly the rows a model needs, whose lots were too defective for one: the
    reason is its dirty days, never 'fewer than' the threshold."""
    variant = copy.deepcopy(manifest)
    at = [r for r in variant["group_table"] if (r["key"]["facility"], r["key"]["item"]) == AT]
    dropped = {GroupKey(**r["key"]).id for r in at}
    variant["groups"] = [g for g in variant["groups"] if g["id"] not in dropped]
    for row in at:
        if row["key"]["cluster"] == PART_CLUSTER:
            row.update(role="dropped", rows=THRESHOLD // 3)
    part = {(p.facility, p.item): p for p in store_coverage(variant).parts}[AT]
    assert part.shots == THRESHOLD
    assert f"only {THRESHOLD // 3:,} on days whose lots ran under" in part.models
    assert "fewer than" not in part.models


def test_unjudged_history_is_counted_with_its_causes(manifest) -> None:
    variant = copy.deepcopy(manifest)
    # a store whose history came back partly unjudged: one setting never judged, others partly
    groups = variant["history"]["groups"]
    _gid, first = next(iter(groups.items()))
    first["scored"], first["paths"] = 0, {}
    missing = first["rows"]
    variant["history"]["paths"]["unscorable"] = {"rows": missing + 7}
    coverage = store_coverage(variant)
    assert coverage.unjudged == missing + 7
    assert sum(n for _, n in coverage.causes) == missing + 7
    assert any("unknown" in why for why, n in coverage.causes if n == 7)


# -- set points ------------------------------------------------------------------------------------
def test_cluster_set_points_are_medians_over_each_settings_shots() -> None:
    from model_store.serving.clusters import SettingModel

    model = SettingModel("M", ("a", "b"), np.zeros(2), np.ones(2), np.zeros((2, 2)), {})
    frame = pd.DataFrame({"maker": ["M"] * 5 + ["N"], "cluster": [0, 0, 0, 1, -1, 0],
                          "a": [1.0, 2.0, 10.0, 5.0, 99.0, 7.0], "b": [np.nan, np.nan, np.nan, 3.0, 1.0, 1.0]})
    out = cluster_set_points(frame, {"M": model})
    assert out == {"M": [{"cluster": 0, "rows": 3, "median": [2.0, None]}, {"cluster": 1, "rows": 1, "median": [5.0, 3.0]}]}


def test_a_store_without_recorded_set_points_shows_cluster_centres(manifest, tmp_path) -> None:
    variant = copy.deepcopy(manifest)
    del variant["setting_clusters"]
    write_training_report(variant, tmp_path / "report.html")
    page = _page(tmp_path / "report.html")
    assert page.errors == []
    assert "centre of the cluster" in page.sections["settings"]


def test_the_one_line_summary_counts_what_the_section_counts(manifest) -> None:
    from model_store.report_coverage import BORROWED, OWN, coverage_line

    coverage = store_coverage(manifest)
    own, borrowed, none = (len(coverage.by_basis(b)) for b in (OWN, BORROWED, NONE))
    line = coverage_line(manifest)
    assert line.startswith(f"{len(coverage.parts)} parts: {own} judged against their own history, {borrowed} only against "
                           f"other parts', {none} not at all; ")
    assert "\n" not in line
