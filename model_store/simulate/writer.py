"""Write a simulated plant the way a plant would hand it over: an export, lots, a schema, and
(kept apart under ``truth/``) the evaluation-only labels and settings."""
from __future__ import annotations

from pathlib import Path

from model_store.errors import MoldwatchError
from model_store.schema import write_schema
from model_store.simulate.simulator import SimulatedPlant

RECORD_FORMATS = ("parquet", "csv")


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
