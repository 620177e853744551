"""The wheel (what the worker image installs) holds the serving and training code, not the local
test and demo servers: service/devservers (Java launchers, Maven POMs, server processes) stays in
the source tree, where `moldwatch demo`, `python -m service.devservers` and the tests use it.

The wheel is built offline, without build isolation, from a copy of the tree (setuptools' own
build folder in the checkout could hold files of an earlier build)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    pytest.importorskip("setuptools", minversion="77")  # pyproject.toml's build requirement; the locks pin it
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("model_store", "service"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out),
                           str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = out.glob("moldwatch-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_wheel_leaves_the_dev_servers_out(wheel_files: list[str]) -> None:
    assert [name for name in wheel_files if name.startswith("service/devservers")] == []
    assert not [name for name in wheel_files if name.endswith((".java", ".xml"))]


def test_the_wheel_holds_the_worker_the_cli_and_the_schemas(wheel_files: list[str]) -> None:
    # The check above must be able to fail: the same build does package the rest of the tree.
    for name in ("service/cli.py", "service/demo.py", "service/worker.py", "service/sources/kafka.py",
                 "model_store/serving/scoring.py", "model_store/schemas/verdict.schema.json", "model_store/schemas/kamp.yaml"):
        assert name in wheel_files
    assert (ROOT / "service" / "devservers" / "__init__.py").exists()  # still in the source tree
