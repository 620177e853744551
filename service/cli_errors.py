"""How a ``moldwatch`` command talks on stderr and ends on bad input.

The stderr console, :func:`fail` (``error: <reason>`` and exit code 2), :func:`user_errors` (expected
failures as that one line, no traceback) and :func:`require_train_extra`. The command modules
(``run_command``, ``demo``, ``recipe_command``, ...) import these from here, never from
``service.cli``: the CLI imports the command modules to register their commands, and nothing
imports it back.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import wraps
from typing import Any

import typer
from rich.console import Console

from model_store.errors import MoldwatchError

console = Console(stderr=True)
if not console.is_terminal:
    # Piped into a file or a CI log: one line per message (rich would break lines at 80 columns,
    # mid-path, and grep would miss them).
    console.soft_wrap = True

# What only the `train` extra installs (pyproject.toml). A base install, such as the worker image,
# serves (`run`, `score` on CSV or JSON lines) but cannot train, build recipes, simulate, or read
# Parquet or PostgreSQL; those commands say so in one line instead of a traceback.
TRAIN_EXTRA = ("tensorflow", "keras", "sklearn", "scipy", "skops", "matplotlib", "psycopg", "pyarrow")
TRAINING = ("tensorflow", "keras", "sklearn", "scipy", "skops", "matplotlib")
INSTALL_TRAIN = "pip install 'moldwatch[train]'"


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (found, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # an import hook refusing it, or a module without a spec
        return False


def require_train_extra(command: str, modules: tuple[str, ...] = TRAINING) -> None:
    """Called first thing by the commands that need the train extra: before any input is read."""
    missing = [module for module in modules if not installed(module)]
    if missing:
        fail(f"moldwatch {command} needs the train extra ({', '.join(missing)} not installed): {INSTALL_TRAIN}")


def say_error(message: str) -> None:
    """``error: <message>`` on stderr (the message printed as it is, never as markup)."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """The one way a command ends on bad input: ``error: <reason>`` on stderr, exit code 2."""
    say_error(message)
    raise typer.Exit(code)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into a one-line reason and exit code 2 (no traceback)."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MoldwatchError as exc:
            fail(str(exc))
        except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            fail(f"{exc.filename}: {exc.strerror}")
        except KeyboardInterrupt:
            fail("interrupted", code=130)

    return wrapper


__all__ = ["console", "fail", "installed", "require_train_extra", "say_error", "user_errors", "TRAIN_EXTRA", "TRAINING", "INSTALL_TRAIN"]
