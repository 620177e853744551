"""A base install (no `train` extra, as in the worker image) serves, and says in one line what the
commands that train need: exit 2 with `pip install 'moldwatch[train]'`, before reading any input.

The test environment has every library, so the CLI runs in a subprocess whose import system
refuses the train extra's packages the way a base install lacks them (ModuleNotFoundError).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from service import cli

HINT = "pip install 'moldwatch[train]'"

# Runs the CLI with the packages named in argv[1] (comma-separated) made unimportable.
BOOT = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
sys.argv = ["moldwatch", *sys.argv[2:]]
from service.cli import app
app()
"""


def base_install(*args: str, blocked: tuple[str, ...] = cli.TRAIN_EXTRA, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BOOT, ",".join(blocked), *args],
                          input=stdin, capture_output=True, text=True, timeout=300)


def the_hint(result: subprocess.CompletedProcess) -> str:
    """Exit code 2 and exactly one line on stderr, naming the extra to install."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith(HINT), result.stderr
    return lines[0]


def test_the_blocker_blocks() -> None:
    # The guard must be able to fail: with the extra blocked, its libraries really cannot be imported.
    code = "import sklearn"
    done = subprocess.run([sys.executable, "-c", BOOT.replace("from service.cli import app\napp()", code), "sklearn"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "ModuleNotFoundError: No module named 'sklearn'" in done.stderr


def test_what_score_and_run_import_needs_no_extra() -> None:
    # Every module `moldwatch score` and `moldwatch run` import, all at once, with the extra absent.
    code = ("import service.cli, service.progress, model_store.loaders, model_store.schema, service.run_command, "
            "model_store.serving.scoring, model_store.serving.store, model_store.serving.verdict")
    done = subprocess.run([sys.executable, "-c", BOOT.replace("from service.cli import app\napp()", code), ",".join(cli.TRAIN_EXTRA)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert the_help(base_install("score", "--help")) and the_help(base_install("run", "--help"))


def the_help(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == 0 and result.stdout.startswith("Usage: ")


def test_train_without_the_extra_says_what_to_install(tmp_path) -> None:
    # Real-looking arguments; the check comes first, so nothing is read and no store is started.
    store = tmp_path / "store"
    line = the_hint(base_install("train", "--schema", str(tmp_path / "schema.yaml"), "--records", str(tmp_path / "r.csv"),
                                 "--lots", str(tmp_path / "l.csv"), "--store", str(store)))
    assert line.startswith("error: moldwatch train needs the train extra "
                           "(tensorflow, keras, sklearn, scipy, skops, matplotlib not installed)")
    assert not store.exists()


def test_one_missing_training_library_is_enough(tmp_path) -> None:
    line = the_hint(base_install("train", "--schema", "s.yaml", "--records", "r.csv", "--lots", "l.csv",
                                 "--store", str(tmp_path / "store"), blocked=("tensorflow",)))
    assert "(tensorflow not installed)" in line


def test_recipe_simulate_and_parquet_input_say_what_to_install(tmp_path) -> None:
    out = tmp_path / "out"
    assert "moldwatch recipe needs" in the_hint(base_install("recipe", "--store", str(tmp_path / "store"), "--records", "r.csv",
                                                            "--out", str(out)))
    assert "moldwatch simulate needs the train extra (pyarrow not installed)" in the_hint(base_install("simulate", "--out", str(out)))
    assert "moldwatch demo needs" in the_hint(base_install("demo", "--workdir", str(out), "--duration", "1"))
    parquet = tmp_path / "records.parquet"
    parquet.write_bytes(b"PAR1")
    assert "moldwatch score on Parquet needs" in the_hint(base_install("score", "--store", str(tmp_path), "--records", str(parquet),
                                                                      "--out", str(out)))
    assert not out.exists()


def test_a_lazy_import_of_the_extra_is_explained_too(capsys) -> None:
    # What the commands' own checks do not foresee (a postgresql:// source, say)
    # reaches the app as ModuleNotFoundError: one line and exit 2 for the extra's packages...
    app = cli._App(add_completion=False, pretty_exceptions_enable=False)

    @app.command()
    def load(module: str) -> None:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    @app.command()
    def other() -> None:  # two commands, so `load` is a subcommand name as in moldwatch
        pass

    with pytest.raises(SystemExit) as exited:
        app(["load", "psycopg.sql"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: psycopg.sql is not installed; this needs the train extra: {HINT}"
    # ... while any other missing module is a bug, and keeps its traceback.
    with pytest.raises(ModuleNotFoundError):
        app(["load", "not_a_moldwatch_dependency"])


@pytest.mark.slow
def test_a_base_install_scores_csv_and_json_lines(trained_store, small_plant_files, tmp_path) -> None:
    rows = small_plant_files["records"].read_text().splitlines()[:301]
    records = tmp_path / "records.csv"
    records.write_text("\n".join(rows) + "\n")
    out = tmp_path / "verdicts.jsonl"
    done = base_install("score", "--store", str(trained_store), "--records", str(records), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert len(out.read_text().splitlines()) == 300

    import pandas as pd

    lines = pd.read_csv(records).head(5).to_json(orient="records", lines=True)
    done = base_install("score", "--store", str(trained_store), "--records", "-", "--out", "-", stdin=lines)
    assert done.returncode == 0, done.stderr
    verdicts = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(verdicts) == 5 and all(isinstance(v["anomaly"], bool) for v in verdicts)
