"""One watched file, reloaded when it changes: the model store's manifest and the recipes file.

The worker serves from files that operators replace while it runs (``moldwatch train`` republishes
the store, ``moldwatch recipe`` rewrites the recipes). :class:`Reloader` polls the file's
signature, loads a changed file through an async callback, and keeps serving the last good value
when a load fails::

    recipes = Reloader("recipes file", path, load_recipes, poll_s=2.0)
    await recipes.load(force=True)          # at start-up (a missing file is a failure, not a crash)
    supervisor.spawn("recipes-watcher", recipes.watch())
    recipes.value                           # the last good value (None until one loaded)
    recipes.reason()                        # why there is none, for readiness and error bodies

Why each rule:

- **signature** ``(inode, mtime_ns, size)``: a file renamed into place (atomic publish) changes
  the inode even within one mtime tick; an in-place edit changes mtime or size. Reading the
  signature costs one ``stat``, so polling is cheap; no inotify (it misses changes on network and
  container volumes). The model store is a directory: its signature covers every file in it
  (:func:`tree_signature`), so a store copied in any order is tried again as files land, and
  is served once it verifies.
- **debounce**: a new signature is loaded only once it was seen unchanged on two polls in a row, so
  a file written in place (an editor, ``echo > file``) is read when the writer is done, not half way.
- **the signature is taken before reading**: a write that lands during the read is seen at the
  next poll; a file that failed is not re-read every poll, only when it changes again.
- **the last good value is kept** on any failure, which is logged and counted (``failures``,
  and the owner's ``on_failed`` hook for its metrics).
- **one load at a time** (a lock): the watcher and a forced reload (the scorer found the store
  broken under it) never read the same file twice at once.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import structlog

log = structlog.get_logger("moldwatch.reloader")

T = TypeVar("T")
Signature = tuple[int, int, int]


# Read the file; return the new value, None for "nothing new" (keep the current one), or raise to
# reject the file (the current value is kept). ``force``: the owner asked for a fresh read.
Loader = Callable[[Path, bool], Awaitable[Any]]


def file_signature(path: Path) -> Signature | None:
    """``(inode, mtime_ns, size)`` of ``path``, or None while it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def tree_signature(directory: Path, anchor: str) -> Signature | None:
    """One signature for every file under ``directory`` (name, inode, mtime, size), or None while
    ``anchor`` (the store's manifest) is missing. A store copied file by file, in any order,
    changes it with every file that lands, so the store is tried again when it may have become
    whole; one ``stat`` per file per poll."""
    if not (directory / anchor).is_file():
        return None
    entries = []
    newest = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:  # removed while walking: the next poll sees the settled tree
                continue
            entries.append((os.path.relpath(os.path.join(root, name), directory), st.st_ino, st.st_mtime_ns, st.st_size))
            newest = max(newest, st.st_mtime_ns)
    return (len(entries), hash(tuple(sorted(entries))), newest)


class Reloader(Generic[T]):
    """A value read from one file, reloaded when the file changes, the last good one kept."""

    def __init__(self, name: str, path: Path | Callable[[], Path], load: Loader, poll_s: float, *,
                 debounce: bool = True, on_loaded: Callable[[T], None] | None = None,
                 on_failed: Callable[[Exception], None] | None = None,
                 describe: Callable[[T], Any] | None = None,
                 signature: Callable[[Path], Signature | None] = file_signature) -> None:
        self.name = name
        self._signature = signature
        self._path = path
        self._load = load
        self.poll_s = poll_s
        self.debounce = debounce
        self._on_loaded = on_loaded
        self._on_failed = on_failed
        self._describe = describe
        self._lock = asyncio.Lock()
        self.value: T | None = None
        self.error: str | None = None  # the last failure; None after a good load
        self.signature: Signature | None = None  # of the file last read (or tried)
        self.loads = 0
        self.failures = 0
        self.polls = 0
        self._pending: Signature | None = None  # a new signature seen once, waiting to settle

    @property
    def path(self) -> Path:
        """The file now (a callable path is re-evaluated: a directory may appear or be replaced)."""
        return self._path() if callable(self._path) else self._path

    def rejected(self) -> str | None:
        """Why the newest file was refused while the last good value is still served (None: the
        file on disk is the one served, or nothing is served yet: see :meth:`reason`)."""
        return self.error if self.value is not None else None

    def reason(self) -> str | None:
        """None while a value is served; otherwise why not (readiness, error bodies)."""
        if self.value is not None:
            return None
        return self.error or f"{self.name} not loaded yet"

    async def load(self, force: bool = False, raise_errors: bool = False) -> bool:
        """Read the file if it changed since the last read (always with ``force``); True when a new
        value replaced the current one. Failures keep the current value; with ``raise_errors``
        (start-up, where there is nothing to keep) they are raised instead of logged."""
        async with self._lock:
            path = self.path
            signature = self._signature(path)
            if not force and (signature is None or signature == self.signature):
                return False
            self.signature = signature  # before reading: see the module docstring
            try:
                value = await self._load(path, force)
            except Exception as exc:  # any failure: keep serving the last good value
                self.error = f"{type(exc).__name__}: {exc}"
                if raise_errors:
                    raise
                self.failures += 1
                log.error(f"{self.name} rejected; keeping the current one", path=str(path), error=self.error,  # noqa: G004 - structlog renders the event once: no deferred %-formatting to keep
                          serving=self._serving())
                if self._on_failed is not None:
                    self._on_failed(exc)
                return False
            if value is None:  # the same content under a new signature: nothing to swap
                self.error = None
                return False
            self.value, self.error = value, None
            self.loads += 1
            if self._on_loaded is not None:
                self._on_loaded(value)
            return True

    async def watch(self) -> None:
        """Poll forever, every ``poll_s`` (a task: cancel it to stop)."""
        while True:
            await asyncio.sleep(self.poll_s)
            await self.poll()

    async def poll(self) -> bool:
        """One look at the file: load it when its signature changed and (with ``debounce``) the
        previous poll saw the same new signature. True when a new value replaced the current one."""
        self.polls += 1
        signature = self._signature(self.path)
        # None: missing right now (a directory replaced by two renames, a file being swapped):
        # keep what is served and load the file when it is back.
        if signature is None or signature == self.signature:
            self._pending = None
            return False
        if self.debounce and signature != self._pending:
            self._pending = signature  # first sight: load it if the next poll sees the same
            return False
        self._pending = None
        return await self.load()

    def _serving(self) -> Any:
        if self.value is None:
            return None
        return self._describe(self.value) if self._describe is not None else True


__all__ = ["Reloader", "Loader", "file_signature", "tree_signature", "Signature"]
