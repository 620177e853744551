"""The proving ground: plants of more than one kind, each handed over as a plant would hand it.

Every plant, whatever made it, is a :class:`ProvingPlant`: the raw export in the plant's own
column names, its daily lots, the schema that maps them (the project's own format), and the
per-shot truth that only evaluation may read. ``bench/peers.py`` runs every detector on each.

Generators and sources (one module each):

- ``model_store.simulate`` - the project's own simulator (three makers, lots, setting clusters);
- :mod:`bench.plants.forge` - a second simulator written independently, from a description of
  injection-molding physics, defects and plant habits only;
- :mod:`bench.plants.public` - public labelled injection-molding data, mapped with a schema
  (read from ``data/public/``, which is git-ignored: see that module for where each set comes from).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from model_store.schema import PlantSchema


@dataclass
class ProvingPlant:
    """One plant of the proving ground.

    ``records``, ``lots`` and ``schema`` are all a real plant would give moldwatch; ``labels``
    (``record_id``, ``defect`` as 0/1) is the per-shot truth and serves evaluation only.
    """

    name: str
    generator: str  # "moldwatch-simulate", "forge", "public"
    records: pd.DataFrame
    lots: pd.DataFrame
    schema: PlantSchema
    labels: pd.DataFrame
    notes: dict[str, Any] = field(default_factory=dict)  # how it was made (seed, knobs, source, caveats)
