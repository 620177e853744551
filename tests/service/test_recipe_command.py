"""``moldwatch recipe`` end to end on the small simulated plant: files, report, MongoDB, bad input."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from model_store.serving.recipe_book import RecipeBook
from model_store.serving.store import open_store
from service.cli import app

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def run_recipe(*args: str):
    return runner.invoke(app, ["recipe", *args], catch_exceptions=False)


def fail_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:"), result.output
    return lines[-1]


@pytest.fixture(scope="module")
def recipes_dir(trained_store, small_plant_files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recipe") / "out"
    result = run_recipe("--store", str(trained_store), "--records", str(small_plant_files["records"]),
                        "--lots", str(small_plant_files["lots"]), "--out", str(out), "--schema", str(small_plant_files["schema"]))
    assert result.exit_code == 0, result.output
    return out


def test_writes_json_csv_and_report(recipes_dir, trained_store):
    assert sorted(p.name for p in recipes_dir.iterdir()) == ["clusters.csv", "recipes.csv", "recipes.json", "report.html"]
    doc = json.loads((recipes_dir / "recipes.json").read_text())
    store = open_store(trained_store)
    assert doc["model_version"] == store.model_version and doc["schema_hash"] == store.schema_hash
    assert doc["recipes"] and len(pd.read_csv(recipes_dir / "recipes.csv")) == len(doc["recipes"])
    for recipe in doc["recipes"]:
        fields = store.schema.makers[recipe["maker"]]
        assert recipe["model_version"] == store.model_version
        assert list(recipe["setting"]["exact"]) == list(fields.settings) == list(recipe["setting"]["centroid"])
        assert list(recipe["window"]["fields"]) == list(fields.production)
        for stats in recipe["window"]["fields"].values():
            if stats["mean"] is not None:
                # quantiles are ordered; the mean lies between min and max (a few high shots can lift
                # it above p95: it is no quantile)
                assert stats["min"] <= stats["p1"] <= stats["p5"] <= stats["p95"] <= stats["p99"] <= stats["max"]
                assert stats["min"] <= stats["mean"] <= stats["max"]
        assert recipe["production"]["rows"] >= doc["config"]["min_rows"]
        # Never worse than the item's own history (beyond the ranking's tolerance), on the credible rate or
        # the estimate: the cluster's, or the exact combination's own when it was chosen on its evidence.
        assert recipe["action"] == "recommend"
        rel, tol = doc["config"]["relative_tolerance"], doc["config"]["absolute_tolerance"]
        if recipe["setting"]["chosen_by"] == "most used":
            assert recipe["defect_rate"]["credible"] <= recipe["history"]["credible"] * (1 + rel) + tol + 1e-6
            assert recipe["defect_rate"]["estimate"] <= recipe["history"]["defect_rate"] * (1 + rel) + tol + 1e-6
        # The published set points lie within the cluster's spread (or are its centre).
        model = store.setting_models[recipe["maker"]]
        point = (np.array([recipe["setting"]["exact"][f] for f in model.fields]) - model.minimum) / model.scale
        distance = float(np.linalg.norm(point - model.centroids[recipe["setting_cluster"]]))
        assert distance <= recipe["setting"]["spread_radius"] + 1e-5 or recipe["setting"]["chosen_by"].startswith("cluster centre")
        # Every recipe that changes what the part ran was shown better than the rest of its history.
        test = recipe["defect_rate"].get("test")
        assert recipe["selection"] == "most produced setting" or test is None or test["better"] is True
    for kept in doc["keep_current_practice"]:
        # Worse than the history (the guard), or not shown better than it (the test); no setting named to run.
        assert kept["action"] == "keep current practice" and "setting" not in kept
        test = kept["considered"].get("test")
        if test is not None:
            assert test["better"] is False and "than the rest of the item's history" in kept["reason"]
        else:
            assert "above the item's own history" in kept["reason"]
            assert (kept["considered"]["credible"] > kept["history"]["credible"]
                    or kept["considered"]["estimate"] > kept["history"]["defect_rate"])
    clusters = pd.read_csv(recipes_dir / "clusters.csv")
    assert clusters.groupby(["facility", "item"])["recommended"].sum().max() == 1
    # Facilities the small store has no group for are skipped, and say so.
    trained = {g.key.facility for g in store.groups}
    skipped = {s["facility"] for s in doc["skipped"] if s["item"] is None}
    assert not skipped & trained
    if skipped:  # (a store with a pooled part model for every facility skips none)
        assert any("no trained group" in w for w in doc["warnings"])
    book = RecipeBook.from_json(recipes_dir / "recipes.json")
    first = doc["recipes"][0]
    assert book.on_recipe(first["facility"], first["item"], first["setting_cluster"], store.model_version) is True


def test_recommended_settings_are_truly_better_than_history(recipes_dir, small_plant):
    """The simulator knows each setting's true defect probability; the recipe never saw it."""
    doc = json.loads((recipes_dir / "recipes.json").read_text())
    truth = small_plant.settings
    labels = small_plant.labels.set_index("record_id")
    records = small_plant.records
    prob = truth.set_index("setting_id")["true_defect_prob"]
    recommended, history, weights = [], [], []
    for recipe in doc["recipes"]:
        fields = list(recipe["setting"]["exact"])
        candidates = truth[(truth["facility"] == recipe["facility"]) & (truth["item"] == recipe["item"])]
        target = np.array([recipe["setting"]["exact"][f] for f in fields], dtype=float)
        match = candidates[np.isclose(candidates[fields].to_numpy(float), target, atol=1e-6).all(axis=1)]
        pair = records[(records["facility"] == recipe["facility"]) & (records["item"] == recipe["item"])]
        if match.empty or pair.empty:  # an operator's one-step nudge of a setting: not a catalogued setting
            continue
        recommended.append(float(match["true_defect_prob"].iloc[0]))
        history.append(float(prob.loc[labels.loc[pair["shot_id"], "setting_id"]].mean()))
        weights.append(len(pair))
    assert len(recommended) >= 0.8 * len(doc["recipes"])
    assert np.average(recommended, weights=weights) < np.average(history, weights=weights)


def _png_pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=float)


def _not_blank(pixels: np.ndarray) -> bool:
    """Some ink on the page: not one flat colour, and a real share of non-white pixels."""
    return pixels.std() > 5 and (pixels < 200).mean() > 0.005


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_plots(recipes_dir, tmp_path):
    report = recipes_dir / "report.html"
    flags = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', dom)
    doc = json.loads((recipes_dir / "recipes.json").read_text())
    expected = 1 + min(len(doc["recipes"]), doc["config"]["report_top"])  # overview + one per drawn facility/item
    assert len(images) == expected, [alt for alt, _ in images]
    for alt, data in images:
        pixels = _png_pixels(base64.b64decode(data))
        assert pixels.shape[0] > 100 and pixels.shape[1] > 300, alt
        assert _not_blank(pixels), f"plot {alt!r} is blank"
    shot = tmp_path / "report.png"
    subprocess.run([*flags, "--window-size=1400,2000", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert _not_blank(_png_pixels(shot.read_bytes()))


# -- MongoDB -------------------------------------------------------------------------------------
def test_upserts_into_mongodb_by_facility_and_item(mongo_server, trained_store, small_plant_files, tmp_path):
    from pymongo import MongoClient

    from model_store.recipe.mongo import load_recipes, publish

    database, collection = f"recipes_{uuid.uuid4().hex[:8]}", "recipes"
    client: MongoClient = MongoClient(mongo_server.uri)
    coll = client[database][collection]
    coll.insert_one({"facility": "OLD", "item": "GONE", "setting_cluster": 0, "model_version": "an-older-store"})
    args = ["--store", str(trained_store), "--records", str(small_plant_files["records"]), "--lots", str(small_plant_files["lots"]),
            "--mongo-uri", mongo_server.uri, "--mongo-db", database, "--mongo-collection", collection, "--set", "report_top=1"]
    try:
        first = run_recipe(*args, "--out", str(tmp_path / "a"))
        assert first.exit_code == 0, first.output
        doc = json.loads((tmp_path / "a" / "recipes.json").read_text())
        stored = load_recipes(coll)
        assert len(stored) == len(doc["recipes"])  # the stale document of another store is gone
        assert {(d["facility"], d["item"]) for d in stored} == {(r["facility"], r["item"]) for r in doc["recipes"]}
        assert {d["model_version"] for d in stored} == {doc["model_version"]}
        again = publish(mongo_server.uri, doc["recipes"], doc["model_version"], database, collection)  # same store again
        assert again["upserted"] == 0 and again["pruned"] == 0  # matched by facility/item: replaced, not inserted
        assert coll.count_documents({}) == len(doc["recipes"])  # updated in place, no duplicates
        book = RecipeBook(load_recipes(coll, model_version=doc["model_version"]))
        files = RecipeBook.from_json(tmp_path / "a" / "recipes.json")
        for recipe in files.recipes():
            assert book.get(recipe["facility"], recipe["item"])["setting_cluster"] == recipe["setting_cluster"]
    finally:
        client.drop_database(database)
        client.close()


def test_unreachable_mongodb_fails_fast_with_no_output(trained_store, small_plant_files, tmp_path, monkeypatch):
    import socket

    monkeypatch.setattr("model_store.recipe.mongo.TIMEOUT_MS", 300)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    result = run_recipe("--store", str(trained_store), "--records", str(small_plant_files["records"]), "--out", str(out),
                        "--mongo-uri", f"mongodb://user:secret@127.0.0.1:{port}/?directConnection=true", "--set", "report_top=0")
    line = fail_line(result)
    assert "127.0.0.1" in line and "secret" not in line
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


# -- bad input -----------------------------------------------------------------------------------
def _no_output(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "a staging directory was left behind"


def test_records_of_another_schema_are_refused(trained_store, small_plant_files, tmp_path):
    other = tmp_path / "kamp.csv"
    pd.DataFrame({"_id": [1, 2], "TimeStamp": ["2026-01-05 06:00:00"] * 2, "EQUIP_CD": ["M1", "M1"], "PART_NAME": ["P", "P"],
                  "Barrel_Temperature_1": [230.0, 231.0]}).to_csv(other, index=False)
    out = tmp_path / "out"
    line = fail_line(run_recipe("--store", str(trained_store), "--records", str(other), "--out", str(out)))
    assert "do not match the store's plant schema" in line and "missing column" in line
    _no_output(out)


def test_a_schema_file_other_than_the_stores_is_refused(trained_store, small_plant_files, tmp_path):
    kamp = Path(__file__).resolve().parents[2] / "model_store" / "schemas" / "kamp.yaml"
    out = tmp_path / "out"
    line = fail_line(run_recipe("--store", str(trained_store), "--records", str(small_plant_files["records"]), "--out", str(out),
                                "--schema", str(kamp)))
    assert "not the one the store" in line
    _no_output(out)


def test_only_facilities_without_trained_groups_is_an_error(trained_store, small_plant_files, small_plant, tmp_path):
    # Every part of the small plant now has a pooled model, so machines the store never saw stand in
    # for facilities without a trained group.
    trained = {g.key.facility for g in open_store(trained_store).groups}
    untrained = small_plant.records.head(2000).copy()
    column = small_plant.schema.facility
    untrained[column] = "NEW-" + untrained[column].astype(str)
    assert not set(untrained[column]) & trained
    path = tmp_path / "untrained.csv"
    untrained.to_csv(path, index=False)
    out = tmp_path / "out"
    line = fail_line(run_recipe("--store", str(trained_store), "--records", str(path), "--out", str(out)))
    assert "has a trained group" in line
    _no_output(out)


def test_empty_history_is_refused(trained_store, small_plant_files, small_plant, tmp_path):
    empty = tmp_path / "empty.csv"
    small_plant.records.head(0).to_csv(empty, index=False)
    out = tmp_path / "out"
    line = fail_line(run_recipe("--store", str(trained_store), "--records", str(empty), "--out", str(out)))
    assert "no rows" in line
    _no_output(out)


def test_an_unrelated_output_directory_is_not_overwritten(trained_store, small_plant_files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = fail_line(run_recipe("--store", str(trained_store), "--records", str(small_plant_files["records"]), "--out", str(out)))
    assert "does not hold recipes" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_bad_settings_are_one_line_errors(trained_store, small_plant_files, tmp_path):
    line = fail_line(run_recipe("--store", str(trained_store), "--records", str(small_plant_files["records"]),
                                "--out", str(tmp_path / "o"), "--set", "confidence=2"))
    assert "confidence" in line
