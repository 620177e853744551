"""The on-disk model store: a directory with a JSON manifest and hashed artifacts.

Contract (the manifest this module reads and ``model_store/trainer.py`` writes): store format
version, schema hash, created time and, per group, key,
model kind, artifact paths with sha256, rows, lot defect rate, threshold parameters, loss
summary and setting centroid. Written atomically (staging dir, then rename); loading verifies
every hash and refuses a mismatch. Nothing loaded is an arbitrary pickle.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from model_store.errors import StoreError
from model_store.schema import PlantSchema, parse_schema
from model_store.serving.clusters import SettingModel

STORE_FORMAT = 4  # 4: setting-conditioned units per maker (conditional/); 3: excursion bands, pooled part groups, lot calibration; 2: error scales, NumPy forests, profiles
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class StoreManifest:
    """A verified, parsed manifest. Artifacts are loaded lazily through :meth:`artifact`."""

    root: Path
    raw: dict[str, Any]
    schema: PlantSchema
    setting_models: dict[str, SettingModel]

    @property
    def model_version(self) -> str:
        return str(self.raw["model_version"])

    @property
    def schema_hash(self) -> str:
        return str(self.raw["schema_hash"])

    @property
    def groups(self) -> list[dict[str, Any]]:
        return self.raw["groups"]

    def group(self, group_id: str) -> dict[str, Any]:
        for entry in self.groups:
            if entry["id"] == group_id:
                return entry
        raise StoreError(f"{self.root}: no group {group_id!r} in the manifest")

    def artifact(self, relative: str) -> Path:
        """Path of an artifact after re-checking its hash (it may have changed since opening)."""
        expected = self.raw["artifacts"].get(relative)
        path = self.root / relative
        if expected is None:
            raise StoreError(f"{self.root}: artifact {relative} is not listed in the manifest")
        if not path.is_file():
            raise StoreError(f"{self.root}: artifact {relative} is missing; retrain or restore the store")
        if sha256_file(path) != expected:
            raise StoreError(f"{self.root}: artifact {relative} does not match its sha256; the store was modified, retrain or restore it")
        return path

    def iter_groups(self) -> Iterator[dict[str, Any]]:
        return iter(self.groups)


def open_store(root: str | Path, verify: bool = True) -> StoreManifest:
    """Read and verify a store. Raises :class:`StoreError` with a one-line reason."""
    root = Path(root)
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise StoreError(f"{root}: model store not found; train one with 'moldwatch train'")
    try:
        raw = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{root}: no {MANIFEST}; not a model store (or an interrupted write)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{manifest_path}: unreadable manifest ({exc.__class__.__name__}: {exc})".splitlines()[0]) from None
    if not isinstance(raw, dict) or raw.get("store_format") != STORE_FORMAT:
        found = raw.get("store_format") if isinstance(raw, dict) else None
        raise StoreError(f"{manifest_path}: store format {found!r} is not supported (expected {STORE_FORMAT}); retrain the store")
    for key in ("model_version", "schema", "schema_hash", "groups", "setting_models", "artifacts"):
        if key not in raw:
            raise StoreError(f"{manifest_path}: manifest lacks {key!r}; the store is incomplete")
    schema = parse_schema(raw["schema"], source=f"{manifest_path}#schema")
    if schema.hash() != raw["schema_hash"]:
        raise StoreError(f"{manifest_path}: schema hash mismatch; the manifest was edited")
    if verify:
        for relative, expected in raw["artifacts"].items():
            path = root / relative
            if not path.is_file():
                raise StoreError(f"{root}: artifact {relative} is missing; retrain or restore the store")
            if sha256_file(path) != expected:
                raise StoreError(f"{root}: artifact {relative} does not match its sha256; the store was modified, retrain or restore it")
    models = {m: SettingModel.from_dict(v) for m, v in raw["setting_models"].items()}
    return StoreManifest(root=root, raw=raw, schema=schema, setting_models=models)
