"""Write a simulated plant the way a plant would hand it over: an export, lots, a schema, and
(kept apart under ``truth/``) the evaluation-only labels and settings."""
from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from model_store.errors import MoldwatchError
from model_store.schema import write_schema
from model_store.simulate.simulator import SimulatedPlant
from model_store.simulate.stream import PlantStream

RECORD_FORMATS = ("parquet", "csv")
PARTITION_COLUMNS = ("lot_date", "facility")  # what a dataset may be partitioned by (hive: key=value folders)
DATASET_ROW_GROUP = 65_536  # rows per Parquet row group in a dataset's files: what a reader holds at once per file

ChunkProgress = Callable[[int, int], None]
"""progress(done, total): pieces written so far, of all."""


def write_plant(plant: SimulatedPlant, out_dir: Path | str, fmt: str = "parquet") -> dict[str, Path]:
    """Write records.<fmt>, lots.csv, schema.yaml, truth/labels.parquet and truth/settings.csv.

    Returns the paths by role: records, lots, schema, labels, settings.
    """
    if fmt not in RECORD_FORMATS:
        raise MoldwatchError(f"unknown records format {fmt!r}; use one of: {', '.join(RECORD_FORMATS)}")
    out = Path(out_dir)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    paths = {
        "records": out / f"records.{fmt}",
        "lots": out / "lots.csv",
        "schema": out / "schema.yaml",
        "labels": out / "truth" / "labels.parquet",
        "settings": out / "truth" / "settings.csv",
    }
    if fmt == "parquet":
        plant.records.to_parquet(paths["records"], index=False)
    else:
        # Millisecond timestamps, as an MES export writes them.
        plant.records.to_csv(paths["records"], index=False, date_format="%Y-%m-%d %H:%M:%S.%f")
    plant.lots.to_csv(paths["lots"], index=False)
    write_schema(plant.schema, paths["schema"])
    plant.labels.to_parquet(paths["labels"], index=False)
    plant.settings.to_csv(paths["settings"], index=False)
    return paths


def check_partitioning(partition_by: Sequence[str]) -> tuple[str, ...]:
    columns = tuple(partition_by)
    unknown = [c for c in columns if c not in PARTITION_COLUMNS]
    if unknown or len(set(columns)) != len(columns):
        raise MoldwatchError(f"partition by {','.join(columns) or '(nothing)'}: use lot_date, facility or both, each once")
    return columns


def partition_path(keys: Sequence[str], values: Sequence[object]) -> Path:
    """The hive folder of one partition: ``lot_date=2026-01-05/facility=F01`` (values URI-escaped)."""
    return Path(*(f"{key}={quote(str(value), safe='')}" for key, value in zip(keys, values)))


class _PartWriter:
    """Parquet files under a folder, every file with the first table's Arrow schema."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.schema: object = None

    def write(self, frame: pd.DataFrame, relative: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self.schema is None:
            # Plain strings (pandas 3 hands over large_string): what a reader's hive partitioning
            # infers for a partition key, so the key's folder and its column have one type.
            self.schema = pa.schema(
                [f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f for f in table.schema],
                metadata=table.schema.metadata,
            )
        table = table.cast(self.schema)  # and a piece whose column is all blank would read as another type
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=DATASET_ROW_GROUP)


def write_plant_dataset(
    stream: PlantStream,
    out_dir: Path | str,
    partition_by: Sequence[str] = ("lot_date",),
    progress: ChunkProgress | None = None,
) -> dict[str, Path]:
    """Write ``stream``'s plant piece by piece: ``records/`` a hive-partitioned Parquet dataset
    (``records/lot_date=2026-01-05/part-00000.parquet``: each file holds whole records, the
    partition columns included), ``truth/labels/`` one Parquet file per piece, then ``lots.csv``,
    ``schema.yaml`` and ``truth/settings.csv``. One piece is in memory at a time.

    Both folders are written under temporary names and renamed at the end: an interrupted run
    leaves no half dataset under the final names. An existing ``records/`` is refused.
    """
    keys = check_partitioning(partition_by)
    out = Path(out_dir)
    paths = {
        "records": out / "records",
        "lots": out / "lots.csv",
        "schema": out / "schema.yaml",
        "labels": out / "truth" / "labels",
        "settings": out / "truth" / "settings.csv",
    }
    for role in ("records", "labels"):
        if paths[role].exists():
            raise MoldwatchError(f"{paths[role]} already exists; remove it or write to another directory")
    staging = {role: paths[role].with_name(f".{paths[role].name}.partial") for role in ("records", "labels")}
    for folder in staging.values():
        shutil.rmtree(folder, ignore_errors=True)  # what an interrupted earlier run left
        folder.mkdir(parents=True)
    records, labels = _PartWriter(staging["records"]), _PartWriter(staging["labels"])
    n_settings = len(stream.definition.settings)
    setting_shots = np.zeros(n_settings, dtype=np.int64)
    setting_defects = np.zeros(n_settings, dtype=np.int64)
    lots: list[pd.DataFrame] = []
    if progress:
        progress(0, len(stream.plans))
    for chunk in stream.chunks():
        name = f"part-{chunk.plan.index:05d}.parquet"
        if keys:
            for values, part in chunk.records.groupby(list(keys), sort=True):
                records.write(part, partition_path(keys, values) / name)
        else:
            records.write(chunk.records, Path(name))
        labels.write(chunk.labels, Path(name))
        lots.append(chunk.lots)  # a few rows per machine-day
        setting_shots += chunk.setting_shots
        setting_defects += chunk.setting_defects
        if progress:
            progress(chunk.plan.index + 1, len(stream.plans))
        del chunk
    for role, folder in staging.items():
        folder.rename(paths[role])
    lot_table = pd.concat(lots, ignore_index=True).sort_values(["facility", "item", "lot_date"], kind="stable")
    lot_table.to_csv(paths["lots"], index=False)
    write_schema(stream.schema, paths["schema"])
    stream.settings_truth(setting_shots, setting_defects).to_csv(paths["settings"], index=False)
    return paths
