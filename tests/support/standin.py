"""A stand-in ``moldwatch`` on PATH that records its arguments: the deploy scripts run for real."""
from __future__ import annotations

from pathlib import Path


def standin_moldwatch(tmp_path: Path, exits: dict[str, int] | None = None) -> tuple[Path, Path]:
    """``(bin_dir, calls)``: put ``bin_dir`` first on PATH; each call appends its arguments as one
    line to ``calls`` and exits with ``exits[command]`` (0 for any other command)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    cases = "".join(f"{command}) exit {code};; " for command, code in (exits or {}).items())
    fake = bin_dir / "moldwatch"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\ncase "$1" in {cases}esac\nexit 0\n')
    fake.chmod(0o755)
    return bin_dir, calls
