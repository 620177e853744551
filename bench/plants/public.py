"""Public labelled injection-molding data, handed over as a plant export.

Each set is read from ``data/public/<name>/`` (git-ignored: the data is never committed; set
``MOLDWATCH_PUBLIC_DATA`` to read it from elsewhere). :data:`PUBLIC_SETS` says where each file
comes from, under which terms, how its label becomes a defect and what to keep in mind.

A public set is not a plant export: it lacks record ids, timestamps, machines, parts, lot dates
and daily lots. :func:`load_public` adds exactly those (named in the set's entry) and keeps the
set's own column names for everything else, so the schema in ``bench/plants/schemas/<name>.yaml``
reads like one a plant would write. The quality label never enters the records: it becomes the
evaluation ``labels`` and the daily good/bad lot counts, which is all a plant would know.

    .venv/bin/python -m bench.plants.public                  # which sets are present, and a summary
    .venv/bin/python -m bench.plants.public --write-schemas  # regenerate the schema YAML files
"""
from __future__ import annotations

import argparse
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import yaml

from bench.plants import ProvingPlant
from model_store.schema import PlantSchema, parse_schema

REPO = Path(__file__).resolve().parents[2]
PUBLIC_ROOT: Path = Path(os.environ.get("MOLDWATCH_PUBLIC_DATA", REPO / "data" / "public"))
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"

# Columns added to every set to make it a plant export (the set's own columns keep their names).
RECORD_ID, TIMESTAMP, FACILITY, ITEM, LOT_DATE = "record_id", "timestamp", "machine", "part", "lot_date"

# ---------------------------------------------------------------------------------------------
# Set 1: Polenta et al. 2022, road lenses (iGuzzini, Engel E-MAC 310/100)
# ---------------------------------------------------------------------------------------------
POLENTA = "polenta_road_lens"
POLENTA_LABEL = "quality"
POLENTA_SETTINGS = ["Mold temperature", "ZUx - Cycle time"]
POLENTA_PRODUCTION = [
    "Melt temperature",
    "time_to_fill",
    "ZDx - Plasticizing time",
    "SKx - Closing force",
    "SKs - Clamping force peak value",
    "Ms - Torque peak value current cycle",
    "Mm - Torque mean value current cycle",
    "APSs - Specific back pressure peak value",
    "APVs - Specific injection pressure peak value",
    "CPn - Screw position at the end of hold pressure",
    "SVo - Shot volume",
]
POLENTA_COLUMNS = [
    "Melt temperature", "Mold temperature", "time_to_fill", "ZDx - Plasticizing time", "ZUx - Cycle time",
    "SKx - Closing force", "SKs - Clamping force peak value", "Ms - Torque peak value current cycle",
    "Mm - Torque mean value current cycle", "APSs - Specific back pressure peak value",
    "APVs - Specific injection pressure peak value", "CPn - Screw position at the end of hold pressure",
    "SVo - Shot volume", POLENTA_LABEL,
]
POLENTA_WASTE = 1  # class 1 "Waste" (U0 < 0.4) is the only class that fails the standard
POLENTA_DAYS = 5  # the paper's five production days; the file does not say which row is which
POLENTA_FIRST_DAY = "2019-09-16"  # pseudo dates: the rows carry no date at all
POLENTA_SHIFT_START = "06:00:00"

# ---------------------------------------------------------------------------------------------
# Set 2: a small lab run with deliberate setting changes (two-cavity mold, 212 cycles)
# ---------------------------------------------------------------------------------------------
LAB = "lab_setting_changes"
LAB_MACHINE_FILE = "machine_parameters.xlsx"
LAB_QUALITY_FILE = "our_dataset_labels.xlsx"
LAB_CYCLE = "Cykler"  # the machine's cycle counter, the key between the two files
LAB_TIME_OF_DAY = "Tid"  # Excel fraction of a day
LAB_MEASUREMENTS = ["weight1 (no dot)", "weight2 (dot)", "dimension (dot)", "dimension (no dot)"]
# First cycle of each batch (the README's table; its overlap at cycle 102 is resolved by the data:
# cycle 102 already runs the standard cooling time of batch 4's neighbours, see caveats).
LAB_BATCH_STARTS = [1, 52, 77, 102, 127, 146, 170]
LAB_LAST_CYCLE = 212
# Standard set points (README "Standard parameters"; clamp speed from batch 7's "from 200 to 100").
LAB_STANDARD = {
    "set_cooling_time": 20.0,  # køletid [s]
    "set_hold_time": 2.0,  # eftertryk tid [s]
    "set_hold_pressure": 500.0,  # eftertryk [bar]
    "set_injection_pressure": 800.0,  # indsprøjtningstryk [bar]
    "set_temp_DV1": 220.0,  # nozzle zone [°C]
    "set_temp_CV1": 200.0,  # barrel zones [°C]
    "set_temp_CV2": 210.0,
    "set_temp_CV3": 220.0,
    "set_injection_speed": 103.9,  # indsprøjtningshastighed
    "set_hold_speed": 55.0,  # eftertrykhastighed
    "set_clamp_speed": 200.0,  # lukke- og åbningshastighed
}
# What each batch changed from the standard (not cumulative: the data returns to standard between batches).
LAB_CHANGES: dict[int, dict[str, float]] = {
    1: {},
    2: {"set_hold_time": 0.5},
    3: {"set_cooling_time": 10.0},
    4: {"set_injection_pressure": 300.0, "set_hold_pressure": 200.0},
    5: {"set_temp_DV1": 190.0, "set_temp_CV1": 170.0, "set_temp_CV2": 180.0, "set_temp_CV3": 190.0},
    6: {"set_injection_speed": 50.0, "set_hold_speed": 25.0},
    7: {"set_clamp_speed": 100.0},
}
LAB_SETTINGS = list(LAB_STANDARD)
LAB_PRODUCTION = [
    "Materialepude",
    "Sprøjtetid",
    "Doséringstid",
    "Cyklustid",
    "Omskiftning til eftertryk",
    "Sprøjtetryk maks.",
    "Lukkekraft",
    "VT lukke tid",
    "VT på tid",
    "Sprøjtetryk Integral",
    "Indtrækszone Er-temperatur",
    "DV1 Er-temperatur",
    "CV1 Er-temperatur",
    "CV2 Er-temperatur",
    "CV3 Er-temperatur",
    "VT åbent tid",
    "Olietemperatur",
    "eftertryksvej",
    "Tid udstøter tilbage",
    "Maks. Drejningsmoment dosering",
    "Tid udstøter frem",
    "Omdrejninger pr. cyklus",
    "SN position ved slut Eft.tr.",
]
# A part is out of tolerance when a measurement is more than 1 % (the authors' own threshold in
# clean.py) from the steady standard production: batch 1 after its warm-up (cycles 21-51).
LAB_TOLERANCE = 0.01
LAB_REFERENCE_CYCLES = (21, 51)
LAB_FIRST_DAY = "2023-04-03"  # pseudo dates: one per batch; the export lost its date (see caveats)

PUBLIC_SETS: dict[str, dict[str, Any]] = {
    POLENTA: {
        "name": POLENTA,
        "title": "Plastic road lenses, 1451 parts, 13 process parameters, four quality classes",
        "citation": (
            "Polenta, A.; Tomassini, S.; Falcionelli, N.; Contardo, P.; Dragoni, A.F.; Sernani, P. "
            "A Comparison of Machine Learning Techniques for the Quality Classification of Molded Products. "
            "Information 2022, 13, 272. https://doi.org/10.3390/info13060272"
        ),
        "source": {
            "repository": "https://github.com/airtlab/machine-learning-for-quality-prediction-in-plastic-injection-molding",
            "commit": "41b8f392923d37b50b5098ed918dd2f0de1bc328",
            "files": {"data.csv": "dataset/data.csv"},
            "download": (
                "https://raw.githubusercontent.com/airtlab/machine-learning-for-quality-prediction-in-plastic-injection-molding/"
                "41b8f392923d37b50b5098ed918dd2f0de1bc328/dataset/data.csv"
            ),
            "sha256": {"data.csv": "c8424a6a47cb793383e19e646212b09f5b63b66147a9397f26fdd8760b6889e0"},
        },
        "licence": (
            "no licence file; the readme's 'Data and Source Code Release Agreement': freely released for "
            "research and educational purposes, cite the paper"
        ),
        "machine": "Engel E-MAC 310/100, data from the TIG MES; iGuzzini Illuminazione, Recanati (Italy)",
        "label": (
            f"column {POLENTA_LABEL!r}: 1 Waste (U0 < 0.4, fails UNI EN 13201-2) = defect 1; "
            "2 Acceptable, 3 Target, 4 Inefficient (all comply) = defect 0"
        ),
        "roles": {
            "settings": POLENTA_SETTINGS,
            "production": POLENTA_PRODUCTION,
            "why": (
                "no set points are exported. Mold temperature is held by its controller (the project's rule "
                "for such exports); cycle time is fixed by the timer set points (cooling, hold, ...), jitters "
                "by 0.01 s and sits on three levels (74.8, 75.6, 75.7 s) that mark the setting regimes. Melt "
                "temperature is a measured melt reading with outliers from 82 to 155 °C: a production field."
            ),
        },
        "added_columns": {
            RECORD_ID: "'lens-NNNN', NNNN = the row's 1-based line in data.csv (header not counted)",
            TIMESTAMP: f"pseudo: {POLENTA_SHIFT_START} on the pseudo day plus the day's earlier cycle times",
            FACILITY: "constant 'E-MAC-310-100'",
            ITEM: "constant 'road-lens'",
            LOT_DATE: f"pseudo day, {POLENTA_DAYS} consecutive dates from {POLENTA_FIRST_DAY}",
            "maker": "schema constant 'engel'",
        },
        "lot_dates": (
            f"{POLENTA_DAYS} pseudo days. The file is sorted by quality class (rows 1-370 class 1, 371-776 "
            "class 2, 777-1086 class 3, 1087-1451 class 4), so its order carries no time: cutting it into "
            "five blocks would put every waste part in the first two days. Instead row i is ranked by "
            "frac(i * golden ratio) (deterministic, no RNG) and the ranking is cut into five equal days: "
            "each pseudo day holds about a fifth of every class and setting regime, in mixed order."
        ),
        "caveats": [
            "Pseudo days: the train/test split by lot date is an i.i.d. split (like the paper's stratified "
            "5-fold CV), not a temporal one; the real days (2019-09-18/19/20, 2020-02-07, 2020-05-20) "
            "cannot be recovered from the file.",
            "Defect share is high (370 of 1451, 25.5 %) and the same on every pseudo day: above the "
            "default grouping.normal_defect_rate (1 %) and part_max_lot_rate (3 %), so with the defaults "
            "no lot looks clean enough to train on; the lots carry no contrast between days.",
            "Waste is tied to one setting regime: every class 1 and 2 part runs at cycle time ~74.8 s and "
            "fill time ~7.0 s, classes 3-4 at 75.6-75.7 s; within that regime waste and acceptable parts "
            "differ only in small shifts (closing/clamping force about 11 N lower, fill time levels).",
            "About 330 rows hold values with 11 or more decimals (e.g. 106.4761843026486) where the rest "
            "have at most 3: interpolated or imputed by the authors, most of them (277) in class 1.",
            "The readme counts 360 'Inefficient' parts; the file has 365 (1451 in all).",
            "Quality is a photometric class per lens (general uniformity U0), not a visual defect.",
        ],
    },
    LAB: {
        "name": LAB,
        "title": "Lab run with deliberate setting changes: 212 cycles of a two-cavity mold, 7 batches",
        "citation": (
            "Spangsberg, R. (and co-authors not named), 'manually_labeled_injection_molding_data_set_analysis', "
            "GitHub repository, April 2023 (no paper)"
        ),
        "source": {
            "repository": "https://github.com/RasmusSpangsberg/manually_labeled_injection_molding_data_set_analysis",
            "commit": "c75ccd2a53b3eef557a4b471c2bf5e371860d1e1",
            "files": {LAB_MACHINE_FILE: f"data/raw/{LAB_MACHINE_FILE}", LAB_QUALITY_FILE: f"data/raw/{LAB_QUALITY_FILE}"},
            "download": (
                "https://raw.githubusercontent.com/RasmusSpangsberg/manually_labeled_injection_molding_data_set_analysis/"
                "c75ccd2a53b3eef557a4b471c2bf5e371860d1e1/data/raw/<file>"
            ),
            "sha256": {
                LAB_MACHINE_FILE: "04c58aee5b4a04b648c3d586cd1a7ccb892383d35f47ab23f61347235f2b3314",
                LAB_QUALITY_FILE: "e9cf2f65aa92fec56a5196d064e749cbec0ec88866b4cfb5c4193ffa1c0ed4fe",
            },
        },
        "licence": "none stated (no licence file, no terms in the README): ask the author before any redistribution",
        "machine": "not named; Danish machine export (47 columns: actual values, no set points), one session",
        "label": (
            "derived: each cycle molds two parts (cavity 'dot' and 'no dot'), each weighed and measured by hand. "
            f"A cycle is defect 1 when any of {LAB_MEASUREMENTS} is more than {LAB_TOLERANCE:.0%} from its "
            f"median over the steady standard run (batch 1, cycles {LAB_REFERENCE_CYCLES[0]}-{LAB_REFERENCE_CYCLES[1]}); "
            "the 1 % is the authors' own threshold (clean.py), which they take around the mean of all batches "
            "instead (that would call 33 % of the standard batch defective)."
        ),
        "roles": {
            "settings": LAB_SETTINGS,
            "production": LAB_PRODUCTION,
            "why": (
                "the export has actual values only, but the README documents the set points of every batch "
                "(standard values and what each batch changed), so they are added as set_* columns, batch by "
                "batch; the measured temperatures (Er-temperatur) stay production fields. Left out of both "
                "roles: Dato/Tid/Cykler, constant columns (Stopur 1-8, Bruger|parametre 1-4, Fejlemner, "
                "Testemner, VT låse position, Udst.fremme position) and set positions that only flip by one "
                "resolution step (Omskiftning til eftertryk SN-Pos., Snekke tilbage efter dos., Doséring "
                "stopposition, VT åben position, Udst.slutposition)."
            ),
        },
        "added_columns": {
            RECORD_ID: "'lab-NNN', NNN = the machine's cycle counter (Cykler)",
            TIMESTAMP: "the batch's pseudo date plus the real time of day (Tid)",
            FACILITY: "constant 'lab-machine'",
            ITEM: "constant 'two-cavity-part'",
            LOT_DATE: f"one pseudo date per batch, 7 consecutive dates from {LAB_FIRST_DAY}",
            "set_*": "set points per batch from the README (see 'roles')",
            "maker": "schema constant 'lab'",
        },
        "lot_dates": (
            "7 lot dates, one per batch (cycles 1-51, 52-76, 77-101, 102-126, 127-145, 146-169, 170-212): "
            "the whole run is one session (09:07 to 13:38), so each deliberate setting change is a lot, and "
            "early lots train, later ones test with set points never seen in training."
        ),
        "batches": {
            1: "standard set points", 2: "hold time 0.5 s", 3: "cooling time 10 s",
            4: "injection pressure 300 bar, hold pressure 200 bar", 5: "DV1/CV1/CV2/CV3 190/170/180/190 °C",
            6: "injection speed 50, hold speed 25", 7: "clamp closing/opening speed 100 (from 200)",
        },
        "caveats": [
            "Tiny: 211 labelled cycles (cycle 170, the first after a 1 h 53 min pause, was not measured and is "
            "left out), 19-51 per lot: below the default grouping.min_group_rows (300).",
            "The label is derived from continuous measurements (weight to 0.01 g, dimension in unknown units); "
            "see 'label'. Defect share per batch runs from 100 % (hold time 0.5 s, cooling 10 s) to a few %.",
            "Batch 1 starts with a warm-up: dimensions climb from ~2905 to ~2968 over the first ~18 cycles, "
            "so its first shots are out of tolerance (start-up scrap).",
            "Batch edges: the README gives cycle 102 to both batch 3 and 4; the data (cycle time back to 25.4 s, "
            "pressures already lower) puts it in batch 4. Actual temperatures of batch 5 approach their new "
            "set points over its first ~3 cycles. Some values lag one row (Sprøjtetryk Integral changes one "
            "cycle after Cyklustid at a batch edge).",
            "The export's 'Dato' column lost its date (a time-formatted constant); lot dates are pseudo, the "
            "time of day is real.",
            "No licence stated.",
        ],
    },
}


class PublicDataError(ValueError):
    """A public set's file is present but not what the set's entry describes."""


def public_root() -> Path:
    """Where public sets are read from, re-read from the environment (tests and users may point elsewhere)."""
    return Path(os.environ.get("MOLDWATCH_PUBLIC_DATA", PUBLIC_ROOT))


def set_files(name: str, root: Path | None = None) -> dict[str, Path]:
    """The files a set needs, by their name in the set's folder."""
    entry = _entry(name)
    folder = (root or public_root()) / name
    return {file: folder / file for file in entry["source"]["files"]}


def available(root: Path | None = None) -> list[str]:
    """The sets whose files are all present."""
    return [name for name in PUBLIC_SETS if all(p.is_file() for p in set_files(name, root).values())]


def load_public(name: str, root: Path | None = None) -> ProvingPlant:
    """Read a public set from ``root/<name>/`` (default :func:`public_root`) as a plant export."""
    _require_files(name, root)
    return _LOADERS[name](root or public_root())


# ---------------------------------------------------------------------------------------------
# Schemas: built here, mirrored in bench/plants/schemas/<name>.yaml (a test keeps them equal)
# ---------------------------------------------------------------------------------------------
def schema_dict(name: str) -> dict[str, Any]:
    """The set's plant schema as the mapping a YAML file would hold."""
    spec = {
        POLENTA: ("engel", POLENTA_SETTINGS, POLENTA_PRODUCTION),
        LAB: ("lab", LAB_SETTINGS, LAB_PRODUCTION),
    }
    _entry(name)
    maker, settings, production = spec[name]
    return {
        "name": name,
        "record_id": RECORD_ID,
        "timestamp": TIMESTAMP,
        "lot_date": LOT_DATE,
        "item": ITEM,
        "facility": FACILITY,
        "maker": {"constant": maker},
        "makers": {maker: {"settings": list(settings), "production": list(production)}},
        "lots": {"facility": "facility", "item": "item", "lot_date": "lot_date", "good_qty": "good_qty", "bad_qty": "bad_qty"},
    }


def schema_path(name: str) -> Path:
    return SCHEMA_DIR / f"{name}.yaml"


def public_schema(name: str) -> PlantSchema:
    return parse_schema(schema_dict(name), source=str(schema_path(name)))


def schema_yaml(name: str) -> str:
    """The schema file's text: a comment saying where the roles come from, then the mapping."""
    entry = _entry(name)
    lines = [
        f"# Plant schema for the public set '{name}' (bench/plants/public.py builds the same mapping;",
        "# tests/bench/test_public.py keeps the two equal: regenerate with",
        "# `.venv/bin/python -m bench.plants.public --write-schemas`).",
        f"# Source: {entry['source']['repository']}",
        "#",
        *_comment(f"Roles: {entry['roles']['why']}"),
        "# The quality label is not in the records: it is evaluation truth (ProvingPlant.labels).",
    ]
    body = yaml.safe_dump(schema_dict(name), sort_keys=False, allow_unicode=True, width=120)
    return "\n".join(lines) + "\n" + body


def write_schemas() -> list[Path]:
    SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PUBLIC_SETS:
        schema_path(name).write_text(schema_yaml(name), encoding="utf-8")
        written.append(schema_path(name))
    return written


def _comment(text: str, width: int = 98) -> list[str]:
    words, lines, line = text.split(), [], "#"
    for word in words:
        if len(line) + 1 + len(word) > width:
            lines.append(line)
            line = "#"
        line += " " + word
    return lines + [line]


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------
def _entry(name: str) -> dict[str, Any]:
    try:
        return PUBLIC_SETS[name]
    except KeyError:
        raise KeyError(f"unknown public set {name!r}; known: {', '.join(PUBLIC_SETS)}") from None


def _require_files(name: str, root: Path | None) -> None:
    entry = _entry(name)
    missing = {file: path for file, path in set_files(name, root).items() if not path.is_file()}
    if not missing:
        return
    source = entry["source"]
    wanted = "; ".join(f"{path} (the repository's {source['files'][file]})" for file, path in missing.items())
    raise FileNotFoundError(
        f"public set {name!r} is not on this machine: put {wanted}. They come from {source['repository']} "
        f"at commit {source['commit']}, e.g. {source['download']}. Licence: {entry['licence']}. "
        f"data/public/ is git-ignored; never commit the data (MOLDWATCH_PUBLIC_DATA points elsewhere)."
    )


def _plant(name: str, records: pd.DataFrame, defect: np.ndarray, extra_labels: dict[str, Any], notes: dict[str, Any]) -> ProvingPlant:
    """Assemble the plant: lots from the true labels per (facility, item, lot_date), as a plant would count them."""
    truth = pd.DataFrame({"facility": records[FACILITY], "item": records[ITEM], "lot_date": records[LOT_DATE], "defect": defect})
    lots = truth.groupby(["facility", "item", "lot_date"], sort=True)["defect"].agg(["size", "sum"]).reset_index()
    lots["good_qty"] = (lots["size"] - lots["sum"]).astype("int64")
    lots["bad_qty"] = lots["sum"].astype("int64")
    labels = pd.DataFrame({"record_id": records[RECORD_ID].to_numpy(), "defect": defect.astype(np.int8), **extra_labels})
    entry = _entry(name)
    notes = {
        "source": entry["source"], "citation": entry["citation"], "licence": entry["licence"], "label": entry["label"],
        "lot_dates": entry["lot_dates"], "caveats": entry["caveats"], "rows": len(records),
        "defect_share": round(float(defect.mean()), 4), **notes,
    }
    return ProvingPlant(
        name=name,
        generator="public",
        records=records.reset_index(drop=True),
        lots=lots[["facility", "item", "lot_date", "good_qty", "bad_qty"]],
        schema=public_schema(name),
        labels=labels.reset_index(drop=True),
        notes=notes,
    )


def _check_columns(frame: pd.DataFrame, needed: list[str], path: Path) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise PublicDataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")


# --- Polenta -----------------------------------------------------------------------------------
def golden_days(n: int, days: int) -> np.ndarray:
    """Rank of each row in a low-discrepancy order, cut into ``days`` equal days.

    Returns ``(day, rank)`` stacked as a (2, n) array. Row i's key is frac(i * phi): any block of
    consecutive rows (the file's class blocks) spreads evenly over the ranking, so each day gets
    its share of every block without a random generator whose stream could change between versions.
    """
    phi = (np.sqrt(5.0) - 1.0) / 2.0
    key = np.mod(np.arange(1, n + 1) * phi, 1.0)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(key, kind="stable")] = np.arange(n)
    return np.vstack([rank * days // n, rank])


def _load_polenta(root: Path) -> ProvingPlant:
    path = set_files(POLENTA, root)["data.csv"]
    raw = pd.read_csv(path, sep=";")
    _check_columns(raw, POLENTA_COLUMNS, path)
    quality = pd.to_numeric(raw[POLENTA_LABEL], errors="coerce")
    if quality.isna().any() or not set(quality.astype(int)) <= {1, 2, 3, 4}:
        raise PublicDataError(f"{path}: column {POLENTA_LABEL!r} must hold classes 1-4")
    n = len(raw)
    day, rank = golden_days(n, POLENTA_DAYS)
    dates = pd.Timestamp(POLENTA_FIRST_DAY) + pd.to_timedelta(day, unit="D")
    order = np.argsort(rank, kind="stable")  # time order within and across days
    # Each shot starts when the one before it on its pseudo day ended: its own cycle time apart.
    cycle = pd.Series(raw["ZUx - Cycle time"].to_numpy(dtype=float)[order])
    offset = (cycle.groupby(day[order]).cumsum() - cycle).to_numpy()
    shift = pd.Timedelta(POLENTA_SHIFT_START)
    stamps = (dates[order] + shift + pd.to_timedelta(np.round(offset * 1000).astype(np.int64), unit="ms")).to_numpy("datetime64[ms]")

    process = raw.drop(columns=[POLENTA_LABEL]).iloc[order].reset_index(drop=True)
    row = np.arange(1, n + 1)[order]
    records = pd.concat(
        [
            pd.DataFrame(
                {
                    RECORD_ID: [f"lens-{r:04d}" for r in row],
                    TIMESTAMP: stamps,
                    FACILITY: "E-MAC-310-100",
                    ITEM: "road-lens",
                    LOT_DATE: dates[order].strftime("%Y-%m-%d"),
                }
            ),
            process,
        ],
        axis=1,
    )
    cls = quality.astype(int).to_numpy()[order]
    defect = (cls == POLENTA_WASTE).astype(np.int8)
    return _plant(POLENTA, records, defect, {"quality_class": cls, "file_row": row}, {"pseudo_days": POLENTA_DAYS})


# --- Lab run -------------------------------------------------------------------------------------
_XLSX_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"


def read_xlsx(path: Path) -> pd.DataFrame:
    """The first worksheet of an .xlsx file, first row as header (standard library only: the
    project does not depend on openpyxl). Numbers become floats, text stays text, empty cells None."""
    with zipfile.ZipFile(path) as book:
        names = book.namelist()
        shared = _shared_strings(book.read("xl/sharedStrings.xml")) if "xl/sharedStrings.xml" in names else []
        sheets = sorted(n for n in names if re.fullmatch(r"xl/worksheets/sheet\d+\.xml", n))
        if not sheets:
            raise PublicDataError(f"{path}: no worksheet in the workbook")
        first = "xl/worksheets/sheet1.xml" if "xl/worksheets/sheet1.xml" in sheets else sheets[0]
        sheet = ElementTree.fromstring(book.read(first))
    rows = [_xlsx_row(row, shared) for row in sheet.iter(f"{_XLSX_NS}row")]
    width = max((max(r) + 1 for r in rows if r), default=0)
    grid = [[r.get(i) for i in range(width)] for r in rows]
    if not grid:
        raise PublicDataError(f"{path}: the first worksheet is empty")
    header = [str(h) if h is not None else f"column_{i + 1}" for i, h in enumerate(grid[0])]
    return pd.DataFrame(grid[1:], columns=header)


def _shared_strings(xml: bytes) -> list[str]:
    root = ElementTree.fromstring(xml)
    return ["".join(t.text or "" for t in si.iter(f"{_XLSX_NS}t")) for si in root.iter(f"{_XLSX_NS}si")]


def _xlsx_row(row: ElementTree.Element, shared: list[str]) -> dict[int, Any]:
    cells: dict[int, Any] = {}
    for position, cell in enumerate(row.iter(f"{_XLSX_NS}c")):
        ref = cell.get("r")
        index = _column_index(ref) if ref else position
        kind, value = cell.get("t"), cell.find(f"{_XLSX_NS}v")
        if kind == "inlineStr":
            cells[index] = "".join(t.text or "" for t in cell.iter(f"{_XLSX_NS}t"))
        elif value is None or value.text is None:
            cells[index] = None
        elif kind == "s":
            cells[index] = shared[int(value.text)]
        elif kind in ("str", "e"):
            cells[index] = value.text
        elif kind == "b":
            cells[index] = value.text == "1"
        else:
            cells[index] = float(value.text)
    return cells


def _column_index(ref: str) -> int:
    number = 0
    for letter in re.match(r"[A-Z]+", ref).group(0):
        number = number * 26 + ord(letter) - ord("A") + 1
    return number - 1


def lab_batch(cycle: np.ndarray) -> np.ndarray:
    """Batch number (1-7) of each cycle, from :data:`LAB_BATCH_STARTS`."""
    return np.searchsorted(np.asarray(LAB_BATCH_STARTS), cycle, side="right")


def lab_set_points(batch: np.ndarray) -> pd.DataFrame:
    """The documented set points of each row's batch."""
    table = pd.DataFrame([{**LAB_STANDARD, **LAB_CHANGES[b]} for b in sorted(LAB_CHANGES)], index=sorted(LAB_CHANGES))
    return table.loc[batch].reset_index(drop=True)


def lab_defects(quality: pd.DataFrame) -> tuple[np.ndarray, dict[str, float]]:
    """Out-of-tolerance cycles (any part measurement > 1 % from the steady standard run's median)."""
    first, last = LAB_REFERENCE_CYCLES
    steady = quality[(quality["cycle"] >= first) & (quality["cycle"] <= last)]
    reference = {m: float(steady[m].median()) for m in LAB_MEASUREMENTS}
    out = np.zeros(len(quality), dtype=bool)
    for m, ref in reference.items():
        out |= np.abs(quality[m].to_numpy(dtype=float) - ref) > LAB_TOLERANCE * abs(ref)
    return out.astype(np.int8), reference


def _lab_machine(path: Path) -> pd.DataFrame:
    raw = read_xlsx(path)
    _check_columns(raw, [LAB_CYCLE, LAB_TIME_OF_DAY, *LAB_PRODUCTION], path)
    # The second row holds units (ccm, s, bar_spec, ...) and the sheet has empty rows after the data.
    cycle = pd.to_numeric(raw[LAB_CYCLE], errors="coerce")
    machine = raw[cycle.notna()].copy()
    for column in machine.columns:
        machine[column] = pd.to_numeric(machine[column], errors="coerce")
    machine[LAB_CYCLE] = machine[LAB_CYCLE].astype(np.int64)
    if machine[LAB_CYCLE].duplicated().any():
        raise PublicDataError(f"{path}: cycle numbers repeat in column {LAB_CYCLE!r}")
    return machine.sort_values(LAB_CYCLE).reset_index(drop=True)


def _lab_quality(path: Path) -> pd.DataFrame:
    raw = read_xlsx(path)
    _check_columns(raw, ["cycle", *LAB_MEASUREMENTS], path)
    quality = raw[["cycle", *LAB_MEASUREMENTS]].apply(pd.to_numeric, errors="coerce")
    quality = quality[quality["cycle"].notna()].copy()
    quality["cycle"] = quality["cycle"].astype(np.int64)
    return quality


def _load_lab(root: Path) -> ProvingPlant:
    files = set_files(LAB, root)
    machine, quality = _lab_machine(files[LAB_MACHINE_FILE]), _lab_quality(files[LAB_QUALITY_FILE])
    # A cycle without all four measurements has no truth: it is left out, like an unmeasured part.
    measured = quality.dropna(subset=LAB_MEASUREMENTS)
    dropped = sorted(set(quality["cycle"]) - set(measured["cycle"]))
    merged = machine.merge(measured, left_on=LAB_CYCLE, right_on="cycle", how="inner", validate="one_to_one")
    merged = merged[(merged[LAB_CYCLE] >= 1) & (merged[LAB_CYCLE] <= LAB_LAST_CYCLE)].reset_index(drop=True)
    if merged.empty:
        raise PublicDataError(f"{files[LAB_MACHINE_FILE]}: no cycle matches a measured cycle in {files[LAB_QUALITY_FILE]}")
    cycle = merged[LAB_CYCLE].to_numpy()
    batch = lab_batch(cycle)
    defect, reference = lab_defects(merged[["cycle", *LAB_MEASUREMENTS]])
    dates = pd.Timestamp(LAB_FIRST_DAY) + pd.to_timedelta(batch - 1, unit="D")
    # Tid is the real time of day (an Excel fraction); the date is the batch's pseudo date.
    time_of_day = pd.to_timedelta(np.round(merged[LAB_TIME_OF_DAY].to_numpy(dtype=float) * 86_400_000).astype(np.int64), unit="ms")
    export = merged[list(machine.columns)]
    records = pd.concat(
        [
            pd.DataFrame(
                {
                    RECORD_ID: [f"lab-{c:03d}" for c in cycle],
                    TIMESTAMP: (dates + time_of_day).to_numpy("datetime64[ms]"),
                    FACILITY: "lab-machine",
                    ITEM: "two-cavity-part",
                    LOT_DATE: dates.strftime("%Y-%m-%d"),
                }
            ),
            lab_set_points(batch),
            export.reset_index(drop=True),
        ],
        axis=1,
    )
    extra = {"batch": batch, "cycle": cycle, **{m: merged[m].to_numpy() for m in LAB_MEASUREMENTS}}
    notes = {"reference_medians": reference, "tolerance": LAB_TOLERANCE, "unmeasured_cycles_left_out": dropped,
             "batches": PUBLIC_SETS[LAB]["batches"]}
    return _plant(LAB, records, defect, extra, notes)


_LOADERS: dict[str, Callable[[Path], ProvingPlant]] = {POLENTA: _load_polenta, LAB: _load_lab}


def _summary(plant: ProvingPlant) -> str:
    lots = plant.lots.assign(rate=lambda f: (f["bad_qty"] / (f["good_qty"] + f["bad_qty"])).round(3))
    return (
        f"{plant.name}: {len(plant.records)} records, defect share {plant.labels['defect'].mean():.3f}, "
        f"{plant.lots['lot_date'].nunique()} lot dates\n{lots.to_string(index=False)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-schemas", action="store_true", help="regenerate bench/plants/schemas/*.yaml")
    args = parser.parse_args(argv)
    if args.write_schemas:
        for path in write_schemas():
            print(f"wrote {path}")
        return 0
    present = available()
    for name in PUBLIC_SETS:
        if name in present:
            print(_summary(load_public(name)))
        else:
            try:
                _require_files(name, None)
            except FileNotFoundError as exc:
                print(f"{name}: missing. {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
