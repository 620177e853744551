"""The on-disk model store: a directory with a JSON manifest and hashed artifacts.

The manifest's contract is :mod:`model_store.serving.store_format` (typed, versioned; training
writes it through the same structures, ``model_store/store.py``). Written atomically (staging
dir, then rename); loading checks the format and every field, verifies every hash and refuses a
mismatch. Nothing loaded is an arbitrary pickle.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_store.errors import StoreError
from model_store.schema import PlantSchema, parse_schema
from model_store.serving.clusters import SettingModel
from model_store.serving.store_format import STORE_FORMAT, GroupEntry, Manifest

__all__ = ["MANIFEST", "STORE_FORMAT", "StoreManifest", "open_store", "sha256_file"]

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class StoreManifest:
    """A verified manifest: its typed contents (``contents``, parsed from ``raw`` on creation)
    and the schema and setting models it holds. Artifacts are loaded lazily through :meth:`artifact`.

    ``raw`` stays for the sections kept as JSON (drift references, report figures).
    """

    root: Path
    raw: dict[str, Any]
    schema: PlantSchema
    setting_models: dict[str, SettingModel]
    contents: Manifest = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "contents", Manifest.from_dict(self.raw, source=str(self.root / MANIFEST)))

    @classmethod
    def of_parsed(cls, root: Path, raw: dict[str, Any], contents: Manifest, schema: PlantSchema,
                  setting_models: dict[str, SettingModel]) -> StoreManifest:
        """The manifest of ``raw`` already parsed as ``contents`` (by :func:`open_store`): a large
        store's manifest takes about as long to parse as to read, so it is not parsed twice."""
        manifest = cls.__new__(cls)
        for name, value in (("root", root), ("raw", raw), ("schema", schema), ("setting_models", setting_models),
                            ("contents", contents)):
            object.__setattr__(manifest, name, value)
        return manifest

    @property
    def model_version(self) -> str:
        return self.contents.model_version

    @property
    def schema_hash(self) -> str:
        return self.contents.schema_hash

    @property
    def groups(self) -> tuple[GroupEntry, ...]:
        return self.contents.groups

    def group(self, group_id: str) -> GroupEntry:
        entry = self.contents.group(group_id)
        if entry is None:
            raise StoreError(f"{self.root}: no group {group_id!r} in the manifest")
        return entry

    def artifact(self, relative: str) -> Path:
        """Path of an artifact after re-checking its hash (it may have changed since opening)."""
        expected = self.contents.artifacts.get(relative)
        path = self.root / relative
        if expected is None:
            raise StoreError(f"{self.root}: artifact {relative} is not listed in the manifest")
        if not path.is_file():
            raise StoreError(f"{self.root}: artifact {relative} is missing; retrain or restore the store")
        if sha256_file(path) != expected:
            raise StoreError(f"{self.root}: artifact {relative} does not match its sha256; the store was modified, retrain or restore it")
        return path


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
    contents = Manifest.from_dict(raw, source=str(manifest_path))  # the format and every field, or one refusal
    schema = parse_schema(contents.schema, source=f"{manifest_path}#schema")
    if schema.hash() != contents.schema_hash:
        raise StoreError(f"{manifest_path}: schema hash mismatch; the manifest was edited")
    if verify:
        for relative, expected in contents.artifacts.items():
            path = root / relative
            if not path.is_file():
                raise StoreError(f"{root}: artifact {relative} is missing; retrain or restore the store")
            if sha256_file(path) != expected:
                raise StoreError(f"{root}: artifact {relative} does not match its sha256; the store was modified, retrain or restore it")
    models = {m: SettingModel.from_dict(v) for m, v in contents.setting_models.items()}
    return StoreManifest.of_parsed(root, raw, contents, schema, models)
