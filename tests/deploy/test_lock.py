"""requirements.lock: every dependency pyproject.toml declares (with the test extra) is pinned,
inside its range, with a sha256; setup.sh and the Dockerfile install it in hash-checking mode."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)\s*\\\n\s+--hash=sha256:([0-9a-f]{64})$", re.M)


def pins() -> dict[str, str]:
    return {canonicalize_name(name): version for name, version, _ in PIN.findall(LOCK.read_text())}


def test_every_entry_is_pinned_with_a_hash() -> None:
    text = LOCK.read_text()
    entries = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert entries and len(entries) == len(PIN.findall(text))
    assert re.search(r"^# platform: cpython 3\.\d+ linux \w+$", text, re.M)


def test_pyproject_dependencies_are_locked_within_their_ranges() -> None:
    """Fails when pyproject.toml gained or changed a dependency: run deploy/local/lock.sh."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = pins()
    environment = {"platform_machine": re.search(r"^# platform: \S+ \S+ \S+ (\S+)$", LOCK.read_text(), re.M).group(1)}
    for spec in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        requirement = Requirement(spec)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements.lock: run deploy/local/lock.sh"
        assert requirement.specifier.contains(locked[name], prereleases=True), f"{name}=={locked[name]} is outside {requirement.specifier}"


@pytest.mark.parametrize("path", ["deploy/local/setup.sh", "Dockerfile"])
def test_installers_use_the_lock_in_hash_checking_mode(path) -> None:
    text = (ROOT / path).read_text()
    assert re.search(r"--require-hashes -r (requirements\.lock|\"\$lock\")", text), path
