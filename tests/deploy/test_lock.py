"""The two locks: every dependency pyproject.toml declares is pinned, inside its range, with a sha256.

requirements.lock        the base install + the train, test and cluster extras: setup.sh, .ci/run, the tests
requirements-serve.lock  the base install alone: the worker image (no TensorFlow, scikit-learn, ...)

Both are written by deploy/local/lock.sh; the installers use them in hash-checking mode.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
FULL, SERVE = ROOT / "requirements.lock", ROOT / "requirements-serve.lock"
# Which of pyproject's requirement lists each lock must satisfy.
LOCKED_LISTS = {FULL: ("dependencies", "train", "test", "cluster"), SERVE: ("dependencies",)}
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)\s*\\\n\s+--hash=sha256:([0-9a-f]{64})$", re.M)
LOCKS = pytest.mark.parametrize("lock", [FULL, SERVE], ids=lambda p: p.name)


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pins(lock: Path) -> dict[str, tuple[str, str]]:
    return {canonicalize_name(name): (version, sha) for name, version, sha in PIN.findall(lock.read_text())}


def platform_machine(lock: Path) -> str:
    return re.search(r"^# platform: \S+ \S+ \S+ (\S+)$", lock.read_text(), re.M).group(1)


def requirements(lists: tuple[str, ...], machine: str) -> list[Requirement]:
    """pyproject's requirements in ``lists`` that apply on ``machine`` (markers evaluated)."""
    declared = project()
    specs = [spec for name in lists
             for spec in (declared["dependencies"] if name == "dependencies" else declared["optional-dependencies"][name])]
    found = [Requirement(spec) for spec in specs]
    return [r for r in found if r.marker is None or r.marker.evaluate({"platform_machine": machine})]


@LOCKS
def test_every_entry_is_pinned_with_a_hash(lock) -> None:
    text = lock.read_text()
    entries = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert entries and len(entries) == len(PIN.findall(text))
    assert re.search(r"^# platform: cpython 3\.\d+ linux \w+$", text, re.M)


@LOCKS
def test_pyproject_dependencies_are_locked_within_their_ranges(lock) -> None:
    """Fails when pyproject.toml gained or changed a dependency: run deploy/local/lock.sh."""
    locked = pins(lock)
    for requirement in requirements(LOCKED_LISTS[lock], platform_machine(lock)):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in {lock.name}: run deploy/local/lock.sh"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), \
            f"{lock.name}: {name}=={version} is outside {requirement.specifier}"


def test_the_serving_lock_is_the_full_lock_less_training_and_tests() -> None:
    # Same platform, and every package the worker image installs at the version and hash the tests ran.
    assert platform_machine(SERVE) == platform_machine(FULL)
    full, serve = pins(FULL), pins(SERVE)
    assert {name: pin for name, pin in serve.items() if full.get(name) != pin} == {}
    # Nothing only the train extra asks for reaches the worker image, not even through a base dependency.
    base = {canonicalize_name(r.name) for r in requirements(("dependencies",), platform_machine(SERVE))}
    train_only = {canonicalize_name(r.name) for r in requirements(("train",), platform_machine(SERVE))} - base
    assert train_only and not train_only & serve.keys(), sorted(train_only & serve.keys())
    assert {"keras", "scikit-learn", "scipy", "matplotlib"} <= train_only
    assert any(name.startswith("tensorflow") for name in train_only)  # tensorflow-cpu on x86_64
    # Nor Dask (moldwatch train --cluster): the worker image stays slim.
    assert not {"dask", "distributed", "tornado", "msgpack"} & serve.keys()


def test_installers_use_the_locks_in_hash_checking_mode() -> None:
    assert re.search(r'--require-hashes -r (requirements\.lock|"\$lock")', (ROOT / "deploy/local/setup.sh").read_text())
    assert re.search(r"^lock=requirements\.lock\b", (ROOT / "deploy/local/setup.sh").read_text(), re.M)
    # The image installs the lock its LOCK build argument names: by default the serving one.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'--require-hashes -r "?\$\{?LOCK\}?"?', dockerfile)
    assert re.search(r"^ARG LOCK=requirements-serve\.lock$", dockerfile, re.M)


def test_setup_installs_the_extras_the_full_lock_holds() -> None:
    # setup.sh installs the project over the lock: with fewer extras the tests would miss TensorFlow
    # or Dask; lock.sh must lock the same extras.
    assert "'.[train,test,cluster]'" in (ROOT / "deploy/local/setup.sh").read_text()
    assert "-e '.[train,test,cluster]'" in (ROOT / "deploy/local/lock.sh").read_text()


def _report(*packages: tuple[str, str, str | None]) -> dict:
    """A minimal `pip install --report` document: name, version, sha256 (None: an artifact without one)."""
    return {
        "environment": {"implementation_name": "cpython", "python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"},
        "install": [{"metadata": {"name": name, "version": version},
                     "download_info": {"url": f"https://files.example/{name}", "archive_info": {"hashes": {"sha256": sha} if sha else {}}}}
                    for name, version, sha in packages],
    }


def test_lock_py_pins_every_package_but_the_project(tmp_path) -> None:
    report = tmp_path / "report.json"
    report.write_text(json.dumps(_report(("Zeta", "1.0", "a" * 64), ("moldwatch", "0.1.0", None), ("alpha", "2.3", "b" * 64))))
    out, constraints = tmp_path / "out.lock", tmp_path / "pins.txt"
    done = subprocess.run([sys.executable, str(ROOT / "deploy/local/lock.py"), str(report), str(out), "--pins", str(constraints),
                           "--what", "for a test", "--used-by", "nobody"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert PIN.findall(out.read_text()) == [("alpha", "2.3", "b" * 64), ("Zeta", "1.0", "a" * 64)]
    assert "# platform: cpython 3.11 linux x86_64" in out.read_text()
    assert constraints.read_text() == "alpha==2.3\nZeta==1.0\n"
    # An artifact pip could not hash (a VCS or local source) cannot be locked: refused, nothing written.
    report.write_text(json.dumps(_report(("alpha", "2.3", None))))
    out.unlink()
    done = subprocess.run([sys.executable, str(ROOT / "deploy/local/lock.py"), str(report), str(out), "--what", "x", "--used-by", "y"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "alpha 2.3: pip's report has no sha256" in done.stderr and not out.exists()
