"""Writing a model store: artifacts staged in a directory that becomes the store atomically.

The contract and the reader live in :mod:`model_store.serving.store` (serving only reads).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from model_store.errors import StoreError
from model_store.serving.store import MANIFEST, STORE_FORMAT, sha256_file
from model_store.serving.store_format import Manifest


def new_model_version(schema_hash: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{schema_hash[:8]}-{uuid.uuid4().hex[:6]}"


class StoreStaging:
    """A staging directory that becomes the store only when :meth:`commit` succeeds.

    Use as a context manager: on any exception the staging directory is removed and an existing
    store at the target is left untouched.
    """

    def __init__(self, target: str | Path):
        self.target = Path(target).resolve()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if self.target.exists() and not (self.target / MANIFEST).is_file() and any(self.target.iterdir()):
            raise StoreError(f"{self.target}: exists and is not a model store; choose an empty or new directory")
        self.path = self.target.parent / f".{self.target.name}.staging-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()

    def __enter__(self) -> "StoreStaging":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Hash every artifact, write the manifest, then swap the staging dir into place.

        The manifest is written as the reader will parse it (:class:`Manifest`): what it would
        refuse (a field missing, of the wrong type, not finite) fails here, before anything moves.
        """
        artifacts: dict[str, str] = {}
        for file in sorted(self.path.rglob("*")):
            if file.is_file():
                artifacts[file.relative_to(self.path).as_posix()] = sha256_file(file)
        contents = Manifest.from_dict({**manifest, "store_format": STORE_FORMAT, "artifacts": artifacts},
                                      source=f"{self.target / MANIFEST} (being written)")
        tmp = self.path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(contents.to_dict(), indent=1, allow_nan=False))
        os.replace(tmp, self.path / MANIFEST)
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.target, old)
        os.rename(self.path, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target
