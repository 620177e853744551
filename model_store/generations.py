"""Store generations: promote a candidate store, keep the ones it replaced, roll back in one step.

The served store stays where the worker reads it (``STORE``, e.g. ``/models/store``); the stores it
replaced live beside it in ``STORE.generations/`` as ``<UTC time>_<model_version>`` directories,
with ``log.jsonl``: one line per promotion, rollback and refusal (who ran it and why), so every
change of the served store is on record and can be undone.

A swap is one ``renameat2(RENAME_EXCHANGE)`` where the kernel and filesystem have it (Linux >= 3.15,
most local filesystems): the worker polling ``STORE/manifest.json`` sees the old store or the
new one, never neither. Elsewhere it falls back to two renames (a moment without a store: the
worker keeps serving the one it holds and loads the new one at its next poll). A candidate on
another filesystem is first copied beside the store and verified there.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import getpass
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model_store.errors import StoreError
from model_store.serving.store import MANIFEST, StoreManifest, open_store

LOG = "log.jsonl"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def generations_dir(store: Path) -> Path:
    return store.parent / f"{store.name}.generations"


@dataclass(frozen=True)
class Generation:
    path: Path
    model_version: str
    created_at: str

    def describe(self) -> dict[str, str]:
        return {"model_version": self.model_version, "created_at": self.created_at, "path": str(self.path)}


def list_generations(store: Path) -> list[Generation]:
    """The kept stores, newest first (a directory that is not a readable store is skipped)."""
    found = []
    root = generations_dir(Path(store))
    if not root.is_dir():
        return []
    for child in root.iterdir():
        if child.is_dir() and (child / MANIFEST).is_file():
            try:
                raw = json.loads((child / MANIFEST).read_text())
            except (OSError, ValueError):
                continue
            found.append(Generation(child, str(raw.get("model_version")), str(raw.get("created_at", ""))))
    return sorted(found, key=lambda g: g.path.name, reverse=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (both must exist); False where the system cannot."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _swap_in(new: Path, store: Path, parked: Path) -> None:
    """Make ``new`` the store; the store that was there ends up at ``parked``."""
    if not store.exists():
        os.rename(new, store)
        return
    if _exchange(new, store):
        os.rename(new, parked)  # ``new`` now holds the old store
        return
    os.rename(store, parked)
    os.rename(new, store)


def _stamp(manifest: StoreManifest | None) -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + (f"_{manifest.model_version}" if manifest else "")


def _log(store: Path, event: dict[str, Any]) -> None:
    root = generations_dir(store)
    root.mkdir(parents=True, exist_ok=True)
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers; the event still counts
        user = str(os.getuid())
    line = json.dumps({"at": datetime.now(UTC).isoformat(timespec="seconds"), "by": user, **event})
    with open(root / LOG, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_log(store: Path) -> list[dict[str, Any]]:
    path = generations_dir(Path(store)) / LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _same_plant(current: StoreManifest | None, new: StoreManifest, what: str) -> None:
    if current is not None and current.schema_hash != new.schema_hash:
        raise StoreError(f"{new.root}: {what} is for another plant schema than the served store {current.root}; the "
                         "worker cannot hot-swap it (field names change): deploy it with a restart instead")


def promote(store: str | Path, candidate: str | Path, reason: str = "", keep: int = 5) -> Generation | None:
    """Serve ``candidate`` at ``store``; the replaced store is kept (the newest ``keep`` are).

    Returns the kept generation (None when there was no store). The candidate directory is
    consumed (moved, or copied then removed when it is on another filesystem)."""
    store, candidate = Path(store).absolute(), Path(candidate).absolute()
    if keep < 1:
        raise StoreError(f"keep must be at least 1 (the store being replaced), got {keep}")
    new = open_store(candidate)  # verified: a candidate that does not verify is never served
    current = open_store(store, verify=False) if (store / MANIFEST).is_file() else None
    _same_plant(current, new, "the candidate")
    if current is not None and current.model_version == new.model_version:
        raise StoreError(f"{candidate}: model version {new.model_version} is the one already served; nothing to promote")
    if store.exists() and current is None and any(store.iterdir()):
        raise StoreError(f"{store}: exists and is not a model store; refusing to replace it")
    root = generations_dir(store)
    root.mkdir(parents=True, exist_ok=True)
    staged = candidate
    if os.stat(candidate).st_dev != os.stat(store.parent).st_dev:
        staged = store.parent / f".{store.name}.incoming-{uuid.uuid4().hex[:8]}"
        shutil.copytree(candidate, staged)
        open_store(staged)
    parked = root / _stamp(current)
    _swap_in(staged, store, parked)
    if staged != candidate:
        shutil.rmtree(candidate, ignore_errors=True)
    kept = Generation(parked, current.model_version, current.contents.created_at or "") if current else None
    _prune(store, keep)
    _log(store, {"event": "promote", "model_version": new.model_version,
                 "replaced": current.model_version if current else None, "reason": reason})
    return kept


def rollback(store: str | Path, to: str | None = None, reason: str = "") -> str:
    """Serve the newest kept generation (or the one with model version ``to``) again; the store it
    replaces is kept in its turn. Returns the model version now served."""
    store = Path(store).absolute()
    kept = list_generations(store)
    if to is not None:
        kept = [g for g in kept if g.model_version == to]
    if not kept:
        wanted = f" with model version {to}" if to else ""
        raise StoreError(f"{generations_dir(store)}: no kept store{wanted} to roll back to "
                         f"(kept: {', '.join(g.model_version for g in list_generations(store)) or 'none'})")
    target = kept[0]
    back = open_store(target.path)  # verified before it is served again
    current = open_store(store, verify=False) if (store / MANIFEST).is_file() else None
    _same_plant(current, back, "the kept store")
    _swap_in(target.path, store, generations_dir(store) / _stamp(current))
    _log(store, {"event": "rollback", "model_version": back.model_version,
                 "replaced": current.model_version if current else None, "reason": reason})
    return back.model_version


def record_refusal(store: str | Path, candidate: str | Path, model_version: str | None, reasons: list[str]) -> None:
    """A candidate the canary rule refused is on record too."""
    _log(Path(store).absolute(), {"event": "refuse", "model_version": model_version, "candidate": str(candidate),
                                  "reason": "; ".join(reasons)})


def _prune(store: Path, keep: int) -> None:
    for old in list_generations(store)[keep:]:
        shutil.rmtree(old.path, ignore_errors=True)


__all__ = ["Generation", "generations_dir", "list_generations", "promote", "rollback", "read_log", "record_refusal"]
