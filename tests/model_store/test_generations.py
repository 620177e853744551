"""Store generations (model_store.generations): promote, keep, roll back, refuse; on real stores and files."""
from pathlib import Path

import pytest

from model_store.errors import StoreError
from model_store.generations import generations_dir, list_generations, promote, read_log, record_refusal, rollback
from model_store.serving.store import MANIFEST, open_store
from tests.support.plants import versioned_store as versioned


@pytest.fixture()
def served(forest_store: Path, tmp_path: Path) -> Path:
    return versioned(forest_store, tmp_path / "models" / "store", "v1")


def test_promote_serves_the_candidate_and_keeps_the_store_it_replaced(served: Path, forest_store: Path, tmp_path: Path) -> None:
    candidate = versioned(forest_store, tmp_path / "candidate", "v2")
    kept = promote(served, candidate, reason="weekly retrain")
    assert open_store(served).model_version == "v2" and not candidate.exists()
    assert kept is not None and kept.model_version == "v1" and open_store(kept.path).model_version == "v1"
    assert [g.model_version for g in list_generations(served)] == ["v1"]
    [event] = read_log(served)
    assert event["event"] == "promote" and event["model_version"] == "v2" and event["replaced"] == "v1"
    assert event["reason"] == "weekly retrain" and event["by"]


def test_rollback_serves_the_newest_kept_store_and_keeps_the_one_it_replaced(served: Path, forest_store: Path,
                                                                          tmp_path: Path) -> None:
    promote(served, versioned(forest_store, tmp_path / "c2", "v2"))
    promote(served, versioned(forest_store, tmp_path / "c3", "v3"))
    assert [g.model_version for g in list_generations(served)] == ["v2", "v1"]
    assert rollback(served, reason="v3 alarms on everything") == "v2"
    assert open_store(served).model_version == "v2"
    assert sorted(g.model_version for g in list_generations(served)) == ["v1", "v3"]
    assert rollback(served, to="v1") == "v1" and open_store(served).model_version == "v1"
    assert rollback(served, to="v3") == "v3"  # a rolled-back store can be served again
    assert [e["event"] for e in read_log(served)] == ["promote", "promote", "rollback", "rollback", "rollback"]


def test_only_the_newest_kept_stores_stay(served: Path, forest_store: Path, tmp_path: Path) -> None:
    for n in range(2, 6):
        promote(served, versioned(forest_store, tmp_path / f"c{n}", f"v{n}"), keep=2)
    assert [g.model_version for g in list_generations(served)] == ["v4", "v3"]
    assert open_store(served).model_version == "v5"


def test_refusals_leave_the_served_store_untouched(served: Path, forest_store: Path, tmp_path: Path) -> None:
    before = (served / MANIFEST).read_text()
    same = versioned(forest_store, tmp_path / "same", "v1")
    with pytest.raises(StoreError, match="already served"):
        promote(served, same)
    other_plant = versioned(forest_store, tmp_path / "other", "v9", schema_hash="0" * 64)
    with pytest.raises(StoreError, match=r"schema hash mismatch|another plant schema"):
        promote(served, other_plant)
    tampered = versioned(forest_store, tmp_path / "tampered", "v2")
    victim = next(p for p in tampered.rglob("*") if p.is_file() and p.name != MANIFEST)
    victim.write_bytes(victim.read_bytes() + b"x")
    with pytest.raises(StoreError, match="does not match its sha256"):
        promote(served, tampered)
    with pytest.raises(StoreError, match="no kept store to roll back to"):
        rollback(served)
    with pytest.raises(StoreError, match="no kept store with model version v7"):
        rollback(served, to="v7")
    assert (served / MANIFEST).read_text() == before and tampered.exists()
    record_refusal(served, tampered, "v2", ["alarm volume: ...", "lot agreement: ..."])
    assert read_log(served)[-1] == {**read_log(served)[-1], "event": "refuse", "model_version": "v2",
                                    "reason": "alarm volume: ...; lot agreement: ..."}


def test_a_first_store_is_promoted_into_an_empty_place(forest_store: Path, tmp_path: Path) -> None:
    target = tmp_path / "fresh" / "store"
    target.parent.mkdir()
    assert promote(target, versioned(forest_store, tmp_path / "c1", "v1")) is None
    assert open_store(target).model_version == "v1" and list_generations(target) == []
    assert generations_dir(target).is_dir()


def test_a_reader_never_finds_the_store_missing_during_promotions(served: Path, forest_store: Path, tmp_path: Path) -> None:
    import threading

    from model_store.generations import _exchange

    a, b = tmp_path / "probe_a", tmp_path / "probe_b"
    a.mkdir(), b.mkdir()
    if not _exchange(a, b):
        pytest.skip("this filesystem cannot exchange two paths atomically (promotion falls back to two renames)")
    candidates = [versioned(forest_store, tmp_path / f"c{n}", f"v{n}") for n in range(2, 12)]
    missing, done = [], threading.Event()

    def watch() -> None:
        while not done.is_set():
            if not (served / MANIFEST).is_file():
                missing.append(1)

    reader = threading.Thread(target=watch)
    reader.start()
    try:
        for candidate in candidates:
            promote(served, candidate, keep=20)
        for _ in range(5):
            rollback(served)
    finally:
        done.set()
        reader.join()
    assert missing == []
