"""Writing a model store: artifacts staged in a directory that becomes the store atomically.

The contract and the reader live in :mod:`model_store.serving.store` (serving only reads).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model_store.errors import StoreError
from model_store.serving.store import MANIFEST, STORE_FORMAT, sha256_file
from model_store.serving.store_format import Manifest


def first_lost_field(built: Any, written: Any, path: str = "") -> str | None:
    """The first field of ``built`` that ``written`` lacks or holds differently (named as the
    reader's refusals name fields), or None; fields ``written`` adds (defaults) do not count."""
    if built is written:
        return None
    if isinstance(built, dict) and isinstance(written, dict):
        for key, value in built.items():
            name = f"{path}.{key}" if path else str(key)
            if key not in written:
                return name
            lost = first_lost_field(value, written[key], name)
            if lost is not None:
                return lost
        return None
    if isinstance(built, (list, tuple)) and isinstance(written, (list, tuple)):
        if len(built) != len(written):
            return path
        for i, (value, other) in enumerate(zip(built, written)):
            lost = first_lost_field(value, other, f"{path}[{i}]")
            if lost is not None:
                return lost
        return None
    return None if built == written else path


def new_model_version(schema_hash: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{schema_hash[:8]}-{uuid.uuid4().hex[:6]}"


def not_a_folder(path: str | Path) -> str | None:
    """Why ``path`` cannot be (or be made) a directory: it is a file, or a file lies on its way."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            return "exists and is not a directory" if parent == path else f"is inside {parent}, which is a file"
    return None


def check_store_target(target: str | Path) -> None:
    """Refuse a place a store cannot go, before hours of training: a file, a folder holding
    something else, or a path through a file."""
    target = Path(target)
    problem = not_a_folder(target)
    if problem:
        raise StoreError(f"{target}: {problem}; choose an empty or new directory for the store")
    if target.is_dir() and not (target / MANIFEST).is_file() and any(target.iterdir()):
        raise StoreError(f"{target}: exists and is not a model store; choose an empty or new directory")


class StoreStaging:
    """A staging directory that becomes the store only when :meth:`commit` succeeds.

    Use as a context manager: on any exception the staging directory is removed and an existing
    store at the target is left untouched.
    """

    def __init__(self, target: str | Path):
        self.target = Path(target).resolve()
        check_store_target(self.target)
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.target.parent}: cannot create the store's folder ({exc.strerror or exc})") from None
        self.path = self.target.parent / f".{self.target.name}.staging-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()

    def __enter__(self) -> StoreStaging:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Hash every artifact, write the manifest, then swap the staging dir into place.

        The manifest is written as the reader will parse it (:class:`Manifest`): what it would
        refuse (a field missing, of the wrong type, not finite) fails here, before anything moves;
        so does a field the format does not know (it would be lost in writing).
        """
        artifacts: dict[str, str] = {}
        for file in sorted(self.path.rglob("*")):
            if file.is_file():
                artifacts[file.relative_to(self.path).as_posix()] = sha256_file(file)
        built = {**manifest, "store_format": STORE_FORMAT, "artifacts": artifacts}
        source = f"{self.target / MANIFEST} (being written)"
        written = Manifest.from_dict(built, source=source).to_dict()
        lost = first_lost_field(built, written)
        if lost is not None:
            raise StoreError(f"{source}: field {lost!r} is not part of store format {STORE_FORMAT}; declare it in "
                             f"model_store/serving/store_format.py, or it would not be written")
        tmp = self.path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(written, indent=1, allow_nan=False))
        os.replace(tmp, self.path / MANIFEST)
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.target, old)
        os.rename(self.path, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target
