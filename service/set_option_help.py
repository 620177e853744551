"""Every ``--set`` name of ``train`` and ``recipe``, with its default and its meaning.

The meaning is read from the comments above each field of the config dataclasses
(model_store/config.py, model_store/recipe/config.py): the reason for a default is written there
once, so ``--list-settings`` cannot drift from the code. Also the reading of ``--set NAME=VALUE``
options (:func:`parse_sets`) and the refusal of unknown names (:func:`check_names`).
"""
from __future__ import annotations

import difflib
import inspect
import re
import shutil
import textwrap
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from typing import Any

from model_store.errors import MoldwatchError

FIELD = re.compile(r"^\s+(\w+)\s*:\s*[^=]+?=\s*.+?(?:\s+#\s*(?P<inline>.*))?$")
COMMENT = re.compile(r"^\s+#\s?(?P<text>.*)$")
# Standard training knobs that carry no comment in the dataclass (their meaning is the textbook one).
PLAIN = {
    "epochs": "Maximum training epochs of an AutoEncoder / MemAE (early stopping usually ends sooner).",
    "batch_size": "Rows per gradient step of an AutoEncoder / MemAE.",
    "patience": "Early stopping: epochs without a better validation loss before training stops (best weights restored).",
    "validation_split": "Share of a group's training rows held out for early stopping.",
    "learning_rate": "Adam learning rate of an AutoEncoder / MemAE.",
    "seed": "Random seed of model training: the same data and seed give the same models.",
    "workers": "Parallel training processes (0 = one per core); also --workers.",
}


def _tokens(name: str) -> set[str]:
    return {t for t in name.lower().split("_") if len(t) > 2}


def _shares_block(name: str, owner: str, block: str) -> bool:
    """A comment-less field right under a commented one shares its comment when they are about the
    same thing: a common name part (min_clusters / max_clusters) or its name in the comment."""
    text = block.lower()
    return bool(_tokens(name) & _tokens(owner)) or any(t in text for t in _tokens(name))


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment block right above it (or its trailing comment), as one sentence."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    block: list[str] = []
    owner: tuple[str, str] | None = None  # the last commented field of an unbroken run of fields
    for line in source.splitlines():
        comment = COMMENT.match(line)
        if comment:
            block.append(comment.group("text").strip())
            owner = None
            continue
        match = FIELD.match(line)
        if match:
            name = match.group(1)
            text = (" ".join(block) or (match.group("inline") or "")).strip()
            if text:
                owner = (name, text) if block else None
            elif owner is not None and _shares_block(name, *owner):
                text = owner[1]
            out.setdefault(name, text or PLAIN.get(name, ""))
        else:
            owner = None
        block = []
    return out


def settings(config: Any, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """(dotted name, default, meaning) for every leaf field of a config dataclass instance."""
    meanings = field_comments(type(config))
    for f in fields(config):
        meanings.setdefault(f.name, PLAIN.get(f.name, ""))
        value = getattr(config, f.name)
        if is_dataclass(value):
            yield from settings(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, meanings.get(f.name, "")


def names(config: Any, prefix: str = "") -> list[str]:
    return [name for name, _, _ in settings(config, prefix)]


def listing(config: Any, prefix: str = "", width: int | None = None) -> str:
    """A plain-text list: ``name = default`` then the meaning, indented and wrapped to the terminal."""
    width = min(width or shutil.get_terminal_size((80, 24)).columns, 100)
    lines = []
    for name, default, meaning in settings(config, prefix):
        lines.append(f"{name} = {default!r}" if isinstance(default, str) else f"{name} = {default}")
        if meaning:
            lines += textwrap.wrap(meaning, width=width, initial_indent="    ", subsequent_indent="    ",
                                   break_on_hyphens=False, break_long_words=False)
    return "\n".join(lines)


def check_names(overrides: dict[str, str], valid: list[str], command: str, aliases: tuple[str, ...] = ()) -> None:
    """Refuse an unknown ``--set`` name with the closest match and the list of valid names."""
    for name in overrides:
        if name in valid or name in aliases:
            continue
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise MoldwatchError(
            f"--set {name}: unknown setting{hint}; valid names: {', '.join(valid)} "
            f"(defaults and meanings: moldwatch {command} --list-settings)"
        )


def parse_sets(values: list[str]) -> dict[str, str]:
    """``--set NAME=VALUE`` options as a name -> value mapping (both stripped)."""
    overrides = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep:
            raise MoldwatchError(f"--set {value!r}: expected section.name=value, e.g. grouping.min_group_rows=300")
        overrides[name.strip()] = setting.strip()
    return overrides
