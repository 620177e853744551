"""The line book on disk: read it, publish a new version atomically, keep every version in a log.

``lines.json`` is replaced whole by a rename (a reader sees the old book or the new one, never half
of one); before the rename, the new version is appended to ``lines.json.log.jsonl`` and flushed to
disk, so the log always holds every version that was ever served (and possibly one more that a
crash kept from being published, which ``moldwatch lines history`` shows as such).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from model_store.errors import DataError
from model_store.serving.line_book import EMPTY_BOOK, LineBook


def log_path(path: Path) -> Path:
    return path.with_name(path.name + ".log.jsonl")


def read_line_book(path: Path) -> LineBook:
    """The book at ``path`` (the empty book when there is none yet); DataError naming the file and
    the field otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return EMPTY_BOOK
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable line book ({exc.__class__.__name__}: {exc})") from None
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{path}: not JSON ({str(exc)[:120]}); expected a line book written by 'moldwatch lines'") from None
    try:
        return LineBook.from_dict(raw)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None


def read_history(path: Path) -> list[LineBook]:
    """Every version in the book's log, oldest first; DataError naming ``file:line`` for a bad one."""
    history = []
    source = log_path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            history.append(LineBook.from_dict(json.loads(line)))
        except ValueError as exc:
            raise DataError(f"{source}:{number}: {str(exc)[:200]}") from None
    return history


def publish(path: Path, book: LineBook) -> None:
    """Append ``book`` to the log, then replace ``path`` with it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(book.to_dict(), sort_keys=True)
    with open(log_path(path), "a", encoding="utf-8") as out:
        out.write(payload + "\n")
        out.flush()
        os.fsync(out.fileno())
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(json.dumps(book.to_dict(), indent=1, sort_keys=True) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


__all__ = ["log_path", "read_line_book", "read_history", "publish"]
