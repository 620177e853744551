"""The CLI end to end, as a user runs it: subprocesses, exit codes, one-line errors, no partial output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pandas as pd
import pytest

from model_store.serving.verdict import VERDICT_SCHEMA_PATH
from service.devservers import free_port

pytestmark = pytest.mark.slow


def moldwatch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert lines and lines[-1].startswith("error:"), result.stderr
    return " ".join(lines)  # rich may wrap a long line on narrow terminals


def test_help_for_every_command() -> None:
    for command in ("simulate", "train", "score", "recipe", "run", "demo", "canary", "store"):
        result = moldwatch(command, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout
        assert "list[" not in result.stdout and "<list" not in result.stdout, command  # Python types are no metavars


def test_simulate_streams_a_partitioned_dataset_and_refuses_to_overwrite_it(tmp_path) -> None:
    plant = tmp_path / "plant"
    args = ("simulate", "--out", str(plant), "--shots", "12000", "--days", "4", "--facilities", "6", "--items", "8",
            "--format", "parquet-dataset", "--chunk-shots", "2000", "--partition-by", "lot_date,facility")
    result = moldwatch(*args)
    assert result.returncode == 0, result.stderr
    assert (plant / "records" / "lot_date=2026-01-05" / "facility=F01").is_dir()
    lots = pd.read_csv(plant / "lots.csv")
    shots = sum(len(pd.read_parquet(p)) for p in (plant / "records").rglob("*.parquet"))
    assert shots == int((lots["good_qty"] + lots["bad_qty"]).sum()) > 10_000
    assert f"Simulated {shots:,} shots" in " ".join(result.stderr.split())
    assert "already exists" in one_line_error(moldwatch(*args))
    assert "use lot_date, facility or both" in one_line_error(moldwatch(*args[:-1], "item"))
    # `train` reads the dataset folder as it is (partition folders and all); a lot export that
    # repeats a row is said (rows of one lot are summed, so the repeat doubles its counts).
    pd.concat([lots, lots.iloc[[4]]]).to_csv(plant / "lots.csv", index=False)
    store = tmp_path / "store"
    result = moldwatch(
        "train", "--schema", str(plant / "schema.yaml"), "--records", str(plant / "records"), "--lots", str(plant / "lots.csv"),
        "--store", str(store), "--workers", "1", "--set", "model.epochs=1", "--set", "grouping.min_group_rows=300",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((store / "manifest.json").read_text())["training"]["records"] == shots
    repeated = lots.iloc[4]
    assert (f"1 lot row repeats an earlier row exactly (same facility, item, day and counts; e.g. {repeated['facility']} "
            f"{repeated['item']} {repeated['lot_date']})") in " ".join(result.stderr.split())


def test_simulate_train_score_end_to_end(tmp_path) -> None:
    plant = tmp_path / "plant"
    result = moldwatch("simulate", "--out", str(plant), "--shots", "30000", "--days", "5", "--facilities", "20", "--items", "40",
                       "--seed", "3")
    assert result.returncode == 0, result.stderr
    store = tmp_path / "store"
    # Operator feedback kept by a worker: 40 shots confirmed as defects, one more taken back later.
    ids = pd.read_parquet(plant / "records.parquet", columns=["shot_id"])["shot_id"].astype(str).tolist()
    answers = [{"record_id": i, "label": "defect", "at": "2026-12-05T10:00:00.000+00:00"} for i in ids[:41]]
    answers.append({"record_id": ids[40], "label": "false_alarm", "at": "2026-12-05T11:00:00.000+00:00"})
    answers.append({"record_id": "not-in-these-records", "label": "defect", "at": "2026-12-05T10:00:00.000+00:00"})
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text("".join(json.dumps(a) + "\n" for a in answers))
    # a label column the schema names and the records lack: said, not silently ignored
    schema_text = (plant / "schema.yaml").read_text()
    assert "\nlabel:" not in schema_text
    (plant / "schema.yaml").write_text(schema_text + "\nlabel: pass_fail\n")
    result = moldwatch(
        "train", "--schema", str(plant / "schema.yaml"), "--records", str(plant / "records.parquet"), "--lots", str(plant / "lots.csv"),
        "--store", str(store), "--workers", "1", "--set", "model.epochs=2", "--set", "model.autoencoder_min_rows=900",
        "--set", "model.memae_min_rows=2500", "--set", "grouping.min_group_rows=300", "--feedback", str(feedback),
    )
    assert result.returncode == 0, result.stderr
    assert "Left out 40 shots operators confirmed as defects (41 in" in " ".join(result.stderr.split())
    assert "names 'pass_fail' as the label column" in " ".join(result.stderr.split())
    # piped (a log, not a terminal): progress as lines while it runs, not a bar drawn at the end
    assert "Training group models: started" in result.stderr and "Calibrating on the lots: done" in result.stderr
    manifest = json.loads((store / "manifest.json").read_text())
    assert {g["model_kind"] for g in manifest["groups"]} == {"iforest", "autoencoder", "memae"}
    assert "<img" in (store / "report.html").read_text()
    out = tmp_path / "verdicts.jsonl"
    result = moldwatch("score", "--store", str(store), "--records", str(plant / "records.parquet"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(verdicts) == len(pd.read_parquet(plant / "records.parquet"))
    schema = json.loads(VERDICT_SCHEMA_PATH.read_text())
    for verdict in verdicts[:500]:
        jsonschema.validate(verdict, schema)
    assert len({v["record_id"] for v in verdicts}) == len(verdicts)


@pytest.fixture()
def plant_csv(small_plant_files, tmp_path) -> dict[str, Path]:
    return small_plant_files


def _train(plant: dict[str, Path], records: Path, store: Path) -> subprocess.CompletedProcess:
    return moldwatch("train", "--schema", str(plant["schema"]), "--records", str(records), "--lots", str(plant["lots"]),
                     "--store", str(store), "--workers", "1", "--set", "model.epochs=1")


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda f: f.drop(columns=["facility"]), "missing column 'facility'"),
        (lambda f: f.assign(maker=f["maker"].where(f.index != 3, "ACME")), "unknown maker in column 'maker', row 4"),
        (lambda f: f.iloc[0:0], "no rows"),
        (lambda f: f.assign(**{f.columns[-1]: f[f.columns[-1]].astype(object).where(f.index != 5, "hot")}), "must be numeric; row 6"),
    ],
    ids=["missing-column", "unknown-maker", "empty-file", "text-in-numeric"],
)
def test_bad_records_fail_with_one_line_and_write_nothing(plant_csv, tmp_path, mutate, expected) -> None:
    frame = pd.read_csv(plant_csv["records"])
    numeric = [c for c in frame.columns if frame[c].dtype == float][-1]
    frame = frame[[c for c in frame.columns if c != numeric] + [numeric]]  # the last column is numeric
    bad = tmp_path / "records.csv"
    mutate(frame).to_csv(bad, index=False)
    store = tmp_path / "store"
    message = one_line_error(_train(plant_csv, bad, store))
    assert expected in message
    assert not store.exists() and not list(tmp_path.glob(".store.staging-*"))


def test_a_history_above_max_rows_trains_on_whole_lots_and_the_store_says_so(plant_csv, tmp_path) -> None:
    store = tmp_path / "store"
    result = moldwatch("train", "--schema", str(plant_csv["schema"]), "--records", str(plant_csv["records"]),
                       "--lots", str(plant_csv["lots"]), "--store", str(store), "--workers", "1", "--max-rows", "30000",
                       "--set", "model.epochs=1")
    assert result.returncode == 0, result.stderr
    rows = len(pd.read_csv(plant_csv["records"], usecols=[0]))
    sample = json.loads((store / "manifest.json").read_text())["training"]["history_sample"]
    assert sample["rows"] == rows and sample["kept_rows"] <= 30000 < rows and sample["max_rows"] == 30000
    assert f"The history holds {rows:,} records, more than --max-rows 30,000: training on the {sample['kept_rows']:,} shots" \
        in " ".join(result.stderr.split())
    assert "--max-rows must be 0" in one_line_error(moldwatch("train", "--schema", str(plant_csv["schema"]), "--records",
                                                              str(plant_csv["records"]), "--lots", str(plant_csv["lots"]),
                                                              "--store", str(tmp_path / "other"), "--max-rows", "-5"))


def test_a_bad_feedback_file_fails_before_reading_the_history(plant_csv, tmp_path) -> None:
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text('{"record_id": "a", "label": "defect"}\n{"record_id": "b", "label": "maybe"}\n')
    result = moldwatch("train", "--schema", str(plant_csv["schema"]), "--records", str(plant_csv["records"]),
                       "--lots", str(plant_csv["lots"]), "--store", str(tmp_path / "s"), "--feedback", str(feedback))
    assert f"{feedback}:2: expected a feedback record with record_id and label" in one_line_error(result)
    assert not (tmp_path / "s").exists()


def test_truly_empty_file(plant_csv, tmp_path) -> None:
    empty = tmp_path / "records.csv"
    empty.write_text("")
    assert "the file is empty" in one_line_error(_train(plant_csv, empty, tmp_path / "store"))


def test_tampered_and_unreadable_store(store_copy, plant_csv, tmp_path) -> None:
    out = tmp_path / "v.jsonl"
    manifest = json.loads((store_copy / "manifest.json").read_text())
    artifact = store_copy / manifest["groups"][0]["artifacts"]["model"]
    artifact.write_bytes(b"tampered" + artifact.read_bytes())
    message = one_line_error(moldwatch("score", "--store", str(store_copy), "--records", str(plant_csv["records"]), "--out", str(out)))
    assert "does not match its sha256" in message and not out.exists()
    (store_copy / "manifest.json").write_text("garbage")
    message = one_line_error(moldwatch("score", "--store", str(store_copy), "--records", str(plant_csv["records"]), "--out", str(out)))
    assert "unreadable manifest" in message and not out.exists()


def test_failed_retrain_keeps_the_existing_store(store_copy, plant_csv, tmp_path) -> None:
    before = (store_copy / "manifest.json").read_bytes()
    bad = tmp_path / "records.csv"
    pd.read_csv(plant_csv["records"]).drop(columns=["item"]).to_csv(bad, index=False)
    one_line_error(_train(plant_csv, bad, store_copy))
    assert (store_copy / "manifest.json").read_bytes() == before


def test_bad_override_is_explained(plant_csv, tmp_path) -> None:
    result = moldwatch("train", "--schema", str(plant_csv["schema"]), "--records", str(plant_csv["records"]),
                       "--lots", str(plant_csv["lots"]), "--store", str(tmp_path / "s"), "--set", "model.nope=1")
    message = one_line_error(result)
    assert "--set model.nope: unknown setting (did you mean model.seed?)" in message
    assert "grouping.min_group_rows" in message and "moldwatch train --list-settings" in message



# -- messages that say what to do ------------------------------------------------------------------
def _runner():
    from typer.testing import CliRunner

    from service.cli import app

    return CliRunner(), app


@pytest.mark.parametrize("command", ["simulate", "train", "score", "recipe", "run", "demo"])
def test_help_is_legible_at_80_columns(command) -> None:
    """No option or environment-variable name cut short, no line past the 80th column."""
    runner, app = _runner()
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    too_long = [line for line in result.output.splitlines() if len(line) > 80 and " " in line.strip()]
    assert not too_long, too_long
    if command == "run":
        from service.config import WorkerSettings, env_name, is_secret

        text = " ".join(result.output.split())  # names are never wrapped; words are
        for name in WorkerSettings.model_fields:
            assert env_name(name) in text
            if not is_secret(name):
                assert "--" + name.replace("_", "-") in text


def test_unknown_set_name_lists_the_valid_names() -> None:
    from model_store.config import TrainingConfig
    from model_store.recipe import RecipeConfig
    from service.set_option_help import names

    runner, app = _runner()
    result = runner.invoke(app, ["train", "--schema", "s", "--records", "r", "--lots", "l", "--store", "x", "--set", "grouping.min_rows=3"])
    assert result.exit_code == 2
    assert "did you mean grouping.min_group_rows?" in result.output
    assert all(name in result.output for name in names(TrainingConfig()))
    result = runner.invoke(app, ["recipe", "--store", "s", "--records", "r", "--out", "o", "--set", "confidance=0.9"])
    assert result.exit_code == 2 and "did you mean confidence?" in result.output
    assert all(name in result.output for name in names(RecipeConfig()))


@pytest.mark.parametrize("command, config", [("train", "training"), ("recipe", "recipe")])
def test_list_settings_prints_every_name_with_default_and_meaning(command, config) -> None:
    from model_store.config import TrainingConfig
    from model_store.recipe import RecipeConfig
    from service.set_option_help import settings

    runner, app = _runner()
    result = runner.invoke(app, [command, "--list-settings"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    listed = dict(line.split(" = ", 1) for line in lines if not line.startswith(" "))
    target = TrainingConfig() if config == "training" else RecipeConfig()
    for name, default, meaning in settings(target):
        assert listed[name] in (str(default), repr(default)), name
        assert meaning, f"{name} has no meaning to show"
    assert all(len(line) <= 80 for line in lines)
    if config == "training":  # the setting-conditioned scorer's section is listed too
        assert {"conditional.combine", "conditional.min_alpha", "conditional.excursion_share"} <= set(listed)


def test_usage_mistakes_end_like_every_other_error() -> None:
    message = one_line_error(moldwatch("train", "--schema", "plant.yaml"))
    assert "Missing option '--records'" in message and "--help" in message
    assert moldwatch("train", "--schema", "plant.yaml").returncode == 2
    assert moldwatch("train", "--list-settings").returncode == 0
    bare = moldwatch()
    assert bare.returncode == 0 and "Usage" in bare.stdout
    # a batch of no records is a usage mistake, not a traceback from deep inside
    message = one_line_error(moldwatch("score", "--store", "s", "--records", "r.csv", "--out", "-", "--batch", "0"))
    assert "--batch" in message and "greater than or equal to 1" in message


def test_score_reads_json_lines_from_stdin(trained_store, small_plant_files) -> None:
    frame = pd.read_csv(small_plant_files["records"]).head(5)
    lines = "\n".join(frame.to_json(orient="records", lines=True).splitlines()) + "\n\n"  # a blank line is skipped
    result = subprocess.run([sys.executable, "-m", "service", "score", "--store", str(trained_store), "--records", "-", "--out", "-"],
                            input=lines, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(v["record_id"] for v in verdicts) == sorted(frame["shot_id"].astype(str))
    schema = json.loads(VERDICT_SCHEMA_PATH.read_text())
    for verdict in verdicts:
        jsonschema.validate(verdict, schema)
    bad = subprocess.run([sys.executable, "-m", "service", "score", "--store", str(trained_store), "--records", "-", "--out", "-"],
                         input=lines.splitlines()[0] + "\n{not json\n", capture_output=True, text=True, timeout=300)
    assert "stdin line 2: not JSON" in one_line_error(bad) and bad.stdout == ""
    # One input rule with the worker and POST /score: a production field the record lacks is a gap
    # (imputed, and said so), a field that cannot be read names the line and the field.
    record = json.loads(lines.splitlines()[0])
    maker_fields = [k for k, v in record.items() if k == "cushion" or k == "PV_CUSHION" or k == "CushionAct"]
    lacking = {k: v for k, v in record.items() if k not in maker_fields and v is not None}
    gap = subprocess.run([sys.executable, "-m", "service", "score", "--store", str(trained_store), "--records", "-", "--out", "-"],
                         input=json.dumps(lacking) + "\n", capture_output=True, text=True, timeout=300)
    assert gap.returncode == 0, gap.stderr
    (verdict,) = [json.loads(line) for line in gap.stdout.splitlines()]
    assert verdict["resolution"] != "unscorable" and set(verdict["imputed"]) & {"cushion", "PV_CUSHION", "CushionAct"}
    two = lines.splitlines()[0] + "\n" + json.dumps({**lacking, "timestamp": "yesterday"}) + "\n"
    strict = subprocess.run([sys.executable, "-m", "service", "score", "--store", str(trained_store), "--records", "-", "--out", "-",
                             "--strict"], input=two, capture_output=True, text=True, timeout=300)
    assert "stdin line 2: timestamp: is not a date-time" in one_line_error(strict) and strict.stdout == ""
    # without --strict the good record is scored and the refused one goes to stderr, one JSON line
    broken = subprocess.run([sys.executable, "-m", "service", "score", "--store", str(trained_store), "--records", "-", "--out", "-"],
                            input=two, capture_output=True, text=True, timeout=300)
    assert broken.returncode == 0, broken.stderr
    assert [json.loads(line)["record_id"] for line in broken.stdout.splitlines()] == [str(record["shot_id"])]
    refusal = json.loads(next(line for line in broken.stderr.splitlines() if line.startswith("{")))
    assert refusal == {"row": 2, "record_id": str(lacking["shot_id"]), "reason": "invalid_field",
                       "error": "stdin line 2: timestamp: is not a date-time (ISO 8601 expected) (got 'yesterday')"}
    assert "1 record refused" in broken.stderr and "1 refused" in broken.stderr


def test_score_of_a_file_with_bad_rows_scores_the_others_and_names_the_refused(trained_store, small_plant_files,
                                                                                tmp_path) -> None:
    frame = pd.read_csv(small_plant_files["records"]).head(12).astype(object)
    numeric = max(frame.columns, key=lambda c: (pd.to_numeric(frame[c], errors="coerce").notna().sum(), c))  # a production field
    frame.loc[2, "timestamp"] = "05/13/2026 25:99"
    frame.loc[6, numeric] = "hot"
    frame.loc[9, "maker"] = "ACME"
    records, out = tmp_path / "records.csv", tmp_path / "verdicts.jsonl"
    frame.to_csv(records, index=False)
    stale = tmp_path / "verdicts.jsonl.refused.jsonl"
    result = moldwatch("score", "--store", str(trained_store), "--records", str(records), "--out", str(out))
    assert result.returncode == 0, result.stderr
    scored = [json.loads(line)["record_id"] for line in out.read_text().splitlines()]
    assert sorted(scored) == sorted(str(frame["shot_id"][i]) for i in range(12) if i not in (2, 6, 9))
    refused = [json.loads(line) for line in stale.read_text().splitlines()]
    assert [(r["row"], r["record_id"], r["reason"]) for r in refused] == [
        (3, str(frame["shot_id"][2]), "invalid_field"), (7, str(frame["shot_id"][6]), "invalid_field"),
        (10, str(frame["shot_id"][9]), "unknown_maker")]
    assert refused[1]["error"] == f"column {numeric!r} must be numeric; row 7 (value 'hot'): expected a number or a numeric string"
    assert "3 records refused" in result.stderr and str(stale) in result.stderr.replace("\n", "")
    # a clean run removes the refusals of an earlier one beside its --out
    frame.drop(index=[2, 6, 9]).to_csv(records, index=False)
    assert moldwatch("score", "--store", str(trained_store), "--records", str(records), "--out", str(out)).returncode == 0
    assert not stale.exists() and len(out.read_text().splitlines()) == 9
    # a --refused file named by the user is always written, empty when nothing is refused
    named = tmp_path / "refusals" / "today.jsonl"
    assert moldwatch("score", "--store", str(trained_store), "--records", str(records), "--out", str(out),
                     "--refused", str(named)).returncode == 0
    assert named.read_text() == ""
    assert "--refused" in one_line_error(moldwatch("score", "--store", str(trained_store), "--records", str(records),
                                                   "--out", str(out), "--refused", str(tmp_path)))
    # every row refused: one line, nothing written
    everything = frame.assign(maker="ACME")
    everything.to_csv(records, index=False)
    out.unlink()
    message = one_line_error(moldwatch("score", "--store", str(trained_store), "--records", str(records), "--out", str(out)))
    assert "unknown maker in column 'maker', row 1" in message and "12 refused" in message
    assert not out.exists() and not stale.exists() and not list(tmp_path.glob("*.partial"))


def test_readme_example_record_is_a_valid_input() -> None:
    """The record the README shows for POST /score and `score --records -` decodes under the simulated plant's schema."""
    import re

    from model_store.simulate import SimulationConfig, simulate
    from service.decode import CanonicalRecord, RecordDecoder

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"<!-- example-record -->\s*```json\n(.*?)```", readme, re.S)
    assert block, "README: the example input record is marked with <!-- example-record -->"
    record = json.loads(block.group(1))
    schema = simulate(SimulationConfig(seed=3, days=2, facilities=4, items=6, shots=3000)).schema
    assert isinstance(RecordDecoder(schema).decode(record), CanonicalRecord)


def test_run_without_a_usable_store_exits_2_and_its_log_says_so(tmp_path) -> None:
    # No server is needed: the store is loaded before any connection. The closing log line must
    # carry the exit code the command really exits with (it used to say exit_code=0 before exit 2).
    env = {**os.environ, "MOLDWATCH_STORE": str(tmp_path / "no-store"), "MOLDWATCH_HTTP_PORT": str(free_port()),
           "MOLDWATCH_LOG_FORMAT": "json"}
    result = subprocess.run([sys.executable, "-m", "service", "run"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "model store not found; train one with 'moldwatch train'" in result.stderr
    events = [json.loads(line) for line in (result.stdout + result.stderr).splitlines() if line.startswith("{")]
    stopped = [e for e in events if e.get("event") == "worker stopped"]
    assert stopped and stopped[-1]["exit_code"] == 2
    assert any(e.get("event") == "model store unusable; not starting" for e in events)


def test_paths_that_cannot_be_written_are_one_line_before_any_work(plant_csv, tmp_path) -> None:
    a_file = tmp_path / "notes.json"
    a_file.write_text("{}")
    train = moldwatch("train", "--schema", str(plant_csv["schema"]), "--records", str(plant_csv["records"]),
                      "--lots", str(plant_csv["lots"]), "--store", str(a_file))
    assert train.returncode == 2
    assert f"{a_file}: exists and is not a directory; choose an empty or new directory for the store" in one_line_error(train)
    assert "Read " not in train.stdout  # refused before the history was read
    under = moldwatch("train", "--schema", str(plant_csv["schema"]), "--records", str(plant_csv["records"]),
                      "--lots", str(plant_csv["lots"]), "--store", str(a_file / "store"))
    assert f"is inside {a_file}, which is a file" in one_line_error(under)
    simulate = moldwatch("simulate", "--out", str(a_file), "--shots", "2000", "--days", "2")
    assert simulate.returncode == 2
    assert f"--out {a_file}: exists and is not a directory; choose a directory for the plant" in one_line_error(simulate)


def test_score_out_a_directory_and_json_records_given_as_a_file_say_what_to_do(trained_store, small_plant_files,
                                                                                 tmp_path) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    scored = moldwatch("score", "--store", str(trained_store), "--records", str(small_plant_files["records"]),
                       "--out", str(folder))
    assert f"--out {folder}: is a directory; give the verdicts file's name" in one_line_error(scored)
    assert list(folder.iterdir()) == [] and not (tmp_path / "runs.partial").exists()
    record = tmp_path / "record.json"
    record.write_text("{}")
    wrong = moldwatch("score", "--store", str(trained_store), "--records", str(record), "--out", "-")
    assert f"(JSON records: moldwatch score --records - < {record})" in one_line_error(wrong)


def test_lines_show_of_a_missing_book_says_there_is_none(tmp_path) -> None:
    shown = moldwatch("lines", "show", "--lines", str(tmp_path / "nonexist.json"))
    assert shown.returncode == 0
    assert "no line book at" in shown.stdout and "None (None)" not in shown.stdout
