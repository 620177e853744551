"""Public labelled sets (bench/plants/public.py).

Tests that need the real files skip when ``data/public/`` lacks them (the data is git-ignored);
everything else runs on small synthetic files written in the sets' own formats.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
import pytest
import yaml

from bench.plants import ProvingPlant, public
from model_store.canonical import canonical_lots, canonical_records
from model_store.schema import load_schema

SETS = list(public.PUBLIC_SETS)


# --- schema files ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SETS)
def test_yaml_matches_the_code(name):
    path = public.schema_path(name)
    assert path.is_file(), f"{path} missing: run .venv/bin/python -m bench.plants.public --write-schemas"
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == public.schema_dict(name)
    assert load_schema(path).to_dict() == public.public_schema(name).to_dict()


@pytest.mark.parametrize("name", SETS)
def test_entry_names_source_label_and_roles(name):
    entry = public.PUBLIC_SETS[name]
    for key in ("citation", "licence", "label", "lot_dates", "caveats"):
        assert entry[key], key
    assert entry["source"]["repository"].startswith("https://github.com/")
    schema = public.public_schema(name)
    fields = schema.makers[schema.maker_constant]
    assert (list(fields.settings), list(fields.production)) == (entry["roles"]["settings"], entry["roles"]["production"])


# --- missing files -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", SETS)
def test_missing_file_says_where_and_whence(name, tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        public.load_public(name, root=tmp_path)
    message = str(caught.value)
    for path in public.set_files(name, tmp_path).values():
        assert str(path) in message
    source = public.PUBLIC_SETS[name]["source"]
    assert source["repository"] in message and source["commit"] in message
    assert "never commit" in message


def test_unknown_set_lists_the_known_ones():
    with pytest.raises(KeyError, match="polenta_road_lens"):
        public.load_public("kamp")


def test_available_lists_only_complete_sets(tmp_path):
    assert public.available(tmp_path) == []
    _write_polenta(tmp_path, _polenta_frame())
    (tmp_path / public.LAB).mkdir()
    (tmp_path / public.LAB / public.LAB_MACHINE_FILE).write_bytes(b"")  # one of two files only
    assert public.available(tmp_path) == [public.POLENTA]


def test_environment_moves_the_root(tmp_path, monkeypatch):
    _write_polenta(tmp_path, _polenta_frame())
    monkeypatch.setenv("MOLDWATCH_PUBLIC_DATA", str(tmp_path))
    assert public.public_root() == tmp_path
    assert public.load_public(public.POLENTA).records.shape[0] == 40


# --- Polenta on a synthetic file -------------------------------------------------------------------
def _polenta_frame(n_per_class: int = 10) -> pd.DataFrame:
    """Rows sorted by class like the real file; every value tells its row (row * 0.001 added)."""
    rows = 4 * n_per_class
    frame = pd.DataFrame({c: 100.0 + np.arange(rows) * 0.001 for c in public.POLENTA_COLUMNS[:-1]})
    frame["ZUx - Cycle time"] = 75.0
    frame[public.POLENTA_LABEL] = np.repeat([1.0, 2.0, 3.0, 4.0], n_per_class)
    return frame


def _write_polenta(root: Path, frame: pd.DataFrame) -> Path:
    path = root / public.POLENTA / "data.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep=";", index=False)
    return path


def test_polenta_maps_rows_labels_and_lots(tmp_path):
    frame = _polenta_frame()
    _write_polenta(tmp_path, frame)
    plant = public.load_public(public.POLENTA, root=tmp_path)
    assert isinstance(plant, ProvingPlant) and plant.generator == "public"
    records, labels = plant.records, plant.labels
    assert len(records) == len(labels) == 40
    assert public.POLENTA_LABEL not in records.columns  # truth stays out of the export
    assert set(public.POLENTA_COLUMNS[:-1]) <= set(records.columns)
    # lens-NNNN is file row NNNN: its values and its label are that row's.
    for _, rec in records.sample(8, random_state=0).iterrows():
        row = int(rec["record_id"].split("-")[1]) - 1
        assert rec["Melt temperature"] == pytest.approx(frame["Melt temperature"].iloc[row])
        truth = labels.loc[labels["record_id"] == rec["record_id"]].iloc[0]
        assert truth["defect"] == int(frame[public.POLENTA_LABEL].iloc[row] == 1)
        assert truth["quality_class"] == frame[public.POLENTA_LABEL].iloc[row]
    assert labels["defect"].sum() == 10
    # Five pseudo days, each with its share of every class (the file is sorted by class).
    assert records["lot_date"].nunique() == public.POLENTA_DAYS
    per_day = pd.crosstab(records["lot_date"].to_numpy(), labels["quality_class"].to_numpy())
    assert per_day.to_numpy().min() >= 1 and per_day.to_numpy().max() <= 3
    _lots_match_labels(plant)
    stamps = pd.to_datetime(records["timestamp"])
    assert stamps.is_monotonic_increasing
    assert (stamps.dt.strftime("%Y-%m-%d") == records["lot_date"]).all()
    gaps = stamps.groupby(records["lot_date"]).diff().dropna().dt.total_seconds()
    assert np.allclose(gaps, 75.0)  # one cycle time apart


def test_polenta_refuses_a_foreign_file(tmp_path):
    _write_polenta(tmp_path, _polenta_frame().drop(columns=["SVo - Shot volume"]))
    with pytest.raises(public.PublicDataError, match="SVo - Shot volume"):
        public.load_public(public.POLENTA, root=tmp_path)


def test_golden_days_spread_every_block_evenly():
    day, rank = public.golden_days(1451, 5)
    assert sorted(rank) == list(range(1451))
    per_day = np.bincount(day)
    assert per_day.sum() == 1451 and per_day.max() - per_day.min() <= 1
    for start, stop in ((0, 370), (370, 776), (776, 1086), (1086, 1451)):
        counts = np.bincount(day[start:stop], minlength=5)
        assert counts.max() - counts.min() <= 3


# --- lab run on synthetic workbooks -----------------------------------------------------------------
def _cell(ref: str, value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, str):
        return f'<c r="{ref}" t="inlineStr"><is><t>{escape(value)}</t></is></c>'
    return f'<c r="{ref}"><v>{value!r}</v></c>'


def _column_letters(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _write_xlsx(path: Path, rows: list[list]) -> None:
    """A minimal workbook (one sheet, inline strings) in the layout the lab files use."""
    body = "".join(
        f'<row r="{r + 1}">' + "".join(_cell(f"{_column_letters(c)}{r + 1}", v) for c, v in enumerate(row)) + "</row>"
        for r, row in enumerate(rows)
    )
    sheet = ('<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/'
             f'spreadsheetml/2006/main"><sheetData>{body}</sheetData></worksheet>')
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as book:
        book.writestr("xl/worksheets/sheet1.xml", sheet)


DEFECTIVE_CYCLES = {60: ("weight1 (no dot)", 2.40), 100: ("dimension (dot)", 3100.0), 200: ("dimension (no dot)", 2900.0)}
UNMEASURED_CYCLE = 170


def _write_lab(root: Path) -> None:
    cycles = list(range(public.LAB_LAST_CYCLE, 0, -1))  # the export lists the newest cycle first
    header = ["Dato", public.LAB_TIME_OF_DAY, public.LAB_CYCLE, *public.LAB_PRODUCTION, "Stopur 1"]
    units = [None, None, None, *(["s"] * len(public.LAB_PRODUCTION)), "s"]
    machine = [header, units]
    for c in cycles:
        machine.append([0.128, 0.375 + c * 25 / 86400, float(c), *[float(i) + c / 1000 for i in range(len(public.LAB_PRODUCTION))], 0.0])
    machine.append([None] * len(header))  # the real sheet has empty rows after the data
    _write_xlsx(root / public.LAB / public.LAB_MACHINE_FILE, machine)
    quality = [["cycle", *public.LAB_MEASUREMENTS]]
    for c in range(1, public.LAB_LAST_CYCLE + 1):
        values = {"weight1 (no dot)": 2.46, "weight2 (dot)": 2.45, "dimension (dot)": 2970.0, "dimension (no dot)": 2965.0}
        if c in DEFECTIVE_CYCLES:
            field, value = DEFECTIVE_CYCLES[c]
            values[field] = value
        if c == UNMEASURED_CYCLE:
            values = dict.fromkeys(values)
        quality.append([float(c), *values.values()])
    _write_xlsx(root / public.LAB / public.LAB_QUALITY_FILE, quality)


def test_read_xlsx_reads_header_units_and_numbers(tmp_path):
    path = tmp_path / "book.xlsx"
    _write_xlsx(path, [["a", "b|c", "Sprøjtetid"], ["s", None, "ccm"], [1.5, 2.0, 3.25]])
    frame = public.read_xlsx(path)
    assert list(frame.columns) == ["a", "b|c", "Sprøjtetid"]
    assert frame.iloc[0, [0, 2]].tolist() == ["s", "ccm"] and pd.isna(frame.iloc[0, 1])  # empty cell
    assert frame.iloc[1].tolist() == [1.5, 2.0, 3.25]


def test_lab_maps_batches_set_points_and_defects(tmp_path):
    _write_lab(tmp_path)
    plant = public.load_public(public.LAB, root=tmp_path)
    records, labels = plant.records, plant.labels
    assert len(records) == public.LAB_LAST_CYCLE - 1  # the unmeasured cycle is left out
    assert "lab-170" not in set(records["record_id"])
    assert plant.notes["unmeasured_cycles_left_out"] == [UNMEASURED_CYCLE]
    assert not set(public.LAB_MEASUREMENTS) & set(records.columns)  # truth stays out of the export
    defective = set(labels.loc[labels["defect"] == 1, "cycle"])
    assert defective == set(DEFECTIVE_CYCLES)
    # Batches become lot dates in cycle order; each batch carries its documented set points.
    assert records["lot_date"].nunique() == 7
    by_cycle = records.set_index(labels["cycle"].to_numpy())
    assert by_cycle.loc[60, "set_hold_time"] == 0.5 and by_cycle.loc[51, "set_hold_time"] == 2.0
    assert by_cycle.loc[101, "set_cooling_time"] == 10.0 and by_cycle.loc[102, "set_cooling_time"] == 20.0
    assert by_cycle.loc[102, "set_hold_pressure"] == 200.0
    assert by_cycle.loc[130, "set_temp_CV1"] == 170.0 and by_cycle.loc[146, "set_temp_CV1"] == 200.0
    assert by_cycle.loc[146, "set_injection_speed"] == 50.0 and by_cycle.loc[212, "set_clamp_speed"] == 100.0
    assert by_cycle.loc[60, "Sprøjtetid"] == pytest.approx(1.0 + 60 / 1000)  # the machine row of that cycle
    assert labels.groupby("batch")["cycle"].agg(["min", "max"]).to_numpy().tolist() == [
        [1, 51], [52, 76], [77, 101], [102, 126], [127, 145], [146, 169], [171, 212]]
    stamps = pd.to_datetime(records["timestamp"])
    assert stamps.is_monotonic_increasing
    assert (stamps.dt.strftime("%Y-%m-%d") == records["lot_date"]).all()
    _lots_match_labels(plant)


# --- the real files (skipped when absent) ---------------------------------------------------------------
def _need(name: str) -> None:
    if name not in public.available():
        pytest.skip(f"{name} not under {public.public_root()}: see bench/plants/public.py PUBLIC_SETS[{name!r}]['source']")


@pytest.mark.parametrize("name", SETS)
def test_real_files_are_the_documented_ones(name):
    _need(name)
    for file, path in public.set_files(name).items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == public.PUBLIC_SETS[name]["source"]["sha256"][file], f"{path} differs from the documented file"


def test_real_polenta():
    _need(public.POLENTA)
    plant = public.load_public(public.POLENTA)
    assert len(plant.records) == 1451
    assert plant.labels["defect"].sum() == 370
    assert plant.labels["quality_class"].value_counts().sort_index().tolist() == [370, 406, 310, 365]
    assert plant.lots["lot_date"].nunique() == 5
    rates = plant.lots["bad_qty"] / (plant.lots["good_qty"] + plant.lots["bad_qty"])
    assert rates.between(0.24, 0.27).all()  # every pseudo day carries its share of waste
    _lots_match_labels(plant)


def test_real_lab():
    _need(public.LAB)
    plant = public.load_public(public.LAB)
    assert len(plant.records) == 211
    assert plant.lots["lot_date"].nunique() == 7
    rates = (plant.lots["bad_qty"] / (plant.lots["good_qty"] + plant.lots["bad_qty"])).round(2).tolist()
    assert rates[1] == rates[2] == 1.0  # hold time 0.5 s and cooling 10 s: every cycle out of tolerance
    assert rates[-1] < 0.1  # clamp speed only: almost all in tolerance
    _lots_match_labels(plant)


def _lots_match_labels(plant: ProvingPlant) -> None:
    """The lot counts are the true labels per day, and both canonical mappings accept the plant."""
    canonical = canonical_records(plant.records, plant.schema)
    lots = canonical_lots(plant.lots, plant.schema)
    assert len(canonical) == len(plant.records)
    assert list(canonical["record_id"]) == list(plant.labels["record_id"])
    truth = plant.labels["defect"].groupby(canonical["lot_date"].to_numpy()).agg(["size", "sum"])
    by_day = lots.set_index("lot_date")
    assert (by_day["good_qty"] + by_day["bad_qty"]).to_dict() == truth["size"].to_dict()
    assert by_day["bad_qty"].to_dict() == truth["sum"].to_dict()
