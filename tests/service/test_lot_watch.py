"""The worker's lot drift against the real MongoDB-protocol server: closed lots matched with the
lots collection as rows arrive (dates as text or as dates), judged, given up, and a dead server
counted without touching anything else."""
from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient

from service.config import WorkerSettings
from service.lot_watch import LotMonitor
from tests.support.worker_helpers import unique

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]



def monitor(mongo_uri: str, database: str, wait_days: int = 2) -> tuple[LotMonitor, CollectorRegistry]:
    settings = WorkerSettings(_env_file=None, mongo_uri=mongo_uri, mongo_database=database, mongo_timeout_ms=2000,
                              lots_collection="lots", lots_wait_days=wait_days)  # type: ignore[call-arg]
    registry = CollectorRegistry()
    watch = LotMonitor(settings, registry)
    drift = {"parts": [{"facility": "F1", "item": "P1", "lots": {"lots": 30, "ratio": 1.0, "dispersion": 1.0}},
                       {"facility": "F2", "item": "P2"}]}
    watch.use_store(SimpleNamespace(raw={"drift": drift}), "v1", schema_with_lot_columns())
    return watch, registry


def schema_with_lot_columns() -> Any:
    return SimpleNamespace(lot_columns={"facility": "machine", "item": "part", "lot_date": "day", "good_qty": "ok",
                                        "bad_qty": "nok"}, lot_date_format=None)


def verdicts(day: str, shots: int, alarms: int, facility: str = "F1", item: str = "P1") -> list[dict[str, Any]]:
    return [{"model_version": "v1", "facility": facility, "item": item, "lot_date": day,
             "score": 2.0 if k < alarms else 0.2} for k in range(shots)]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels or None)


async def test_closed_lots_are_judged_when_their_rows_arrive(mongo_server) -> None:
    database = unique("lots").replace("-", "_")
    watch, registry = monitor(mongo_server.uri, database, wait_days=7)
    client = AsyncMongoClient(mongo_server.uri)
    lots = client[database]["lots"]
    try:
        for day in ("2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"):
            for verdict in verdicts(day, 100, 20):  # 20 alarms where the lot says 4 of 100 were bad: 5x
                watch.observe(verdict)
        for verdict in verdicts("2026-03-01", 50, 50, "F2", "P2") + [{"model_version": "old", "facility": "F1",
                                                                      "item": "P1", "lot_date": "2026-03-01",
                                                                      "score": 9.0}]:
            watch.observe(verdict)  # a part without a reference, a verdict of another store: not counted
        assert sorted(k[2] for k in watch.closed()) == ["2026-03-01", "2026-03-02", "2026-03-03"]
        assert await watch.poll() == []  # no rows yet: the lots wait
        await lots.insert_many([
            {"machine": "F1", "part": "P1", "day": "2026-03-01", "ok": 96, "nok": 4},
            {"machine": "F1", "part": "P1", "day": datetime(2026, 3, 2), "ok": 96, "nok": 4},  # a date, not text
            {"machine": "F1", "part": "P1", "day": "2026-03-03", "ok": 190, "nok": 8},  # 200 made, 100 judged
            {"machine": "F9", "part": "P9", "day": "2026-03-01", "ok": 1, "nok": 1},  # another machine: not read
            {"machine": "F1", "part": "P1", "day": "2026-03-04", "ok": "many", "nok": 1},  # malformed: skipped
            {"machine": "F1", "part": "P1", "day": "2026-03-05", "nok": 1},  # a column missing: skipped
        ])
        flags = await watch.poll()
        # each lot: 20 alarms against 4 expected, more: 20 ln 2 - 4 = 9.86 >= 6 on the first lot
        assert flags == [(("F1", "P1", "2026-03-01"), "more_than_lots")]
        assert sample(registry, "moldwatch_lot_drift_lots_total", outcome="judged") == 3
        assert sample(registry, "moldwatch_lot_drift", facility="F1", item="P1", detector="more_than_lots") == 1.0
        assert sample(registry, "moldwatch_lot_drift_detections_total", detector="more_than_lots") == 1
        assert watch.closed() == [] and list(watch.open) == [("F1", "P1", "2026-03-04")]  # the open lot stays
        assert sample(registry, "moldwatch_lot_drift_bad_lot_rows_total") == 2  # the other rows still read
    finally:
        await client.close()
        if watch._client is not None:
            await watch._client.close()


async def test_a_lot_whose_row_never_comes_is_given_up_after_the_wait(mongo_server) -> None:
    database = unique("lots-wait").replace("-", "_")
    watch, registry = monitor(mongo_server.uri, database, wait_days=2)
    for day in ("2026-03-01", "2026-03-02", "2026-03-03"):
        watch.observe(verdicts(day, 1, 0)[0])
    await watch.poll()
    assert sample(registry, "moldwatch_lot_drift_lots_total", outcome="no_lot_row") == 0  # within the wait
    watch.observe(verdicts("2026-03-04", 1, 0)[0])  # 03-01 + 2 days < 03-04: given up
    await watch.poll()
    assert sample(registry, "moldwatch_lot_drift_lots_total", outcome="no_lot_row") == 1
    assert sorted(k[2] for k in watch.open) == ["2026-03-02", "2026-03-03", "2026-03-04"]
    if watch._client is not None:
        await watch._client.close()


async def test_a_dead_server_is_counted_and_the_lots_wait() -> None:
    watch, registry = monitor("mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300", "x")
    for day in ("2026-03-01", "2026-03-02"):
        watch.observe(verdicts(day, 5, 1)[0])
    assert await watch.poll() == []
    assert sample(registry, "moldwatch_lot_drift_read_failures_total") == 1 and len(watch.open) == 2
    if watch._client is not None:
        await watch._client.close()


def test_open_lots_are_bounded_oldest_dropped_first(monkeypatch) -> None:
    import service.lot_watch as lot_watch

    monkeypatch.setattr(lot_watch, "MAX_OPEN_LOTS", 2)
    watch, registry = monitor("mongodb://127.0.0.1:9", "x")
    for day in ("2026-03-03", "2026-03-01", "2026-03-02"):
        watch.observe(verdicts(day, 1, 0)[0])
    assert sorted(k[2] for k in watch.open) == ["2026-03-02", "2026-03-03"]
    assert sample(registry, "moldwatch_lot_drift_lots_total", outcome="dropped") == 1


def test_a_new_store_starts_every_part_and_lot_afresh() -> None:
    watch, _ = monitor("mongodb://127.0.0.1:9", "x")
    watch.observe(verdicts("2026-03-01", 1, 1)[0])
    watch.use_store(SimpleNamespace(raw={"drift": None}), "v2", schema_with_lot_columns())
    assert watch.open == {} and watch.watches == {}
    watch.observe({**verdicts("2026-03-02", 1, 1)[0], "model_version": "v2"})  # no reference: nothing counted
    assert watch.open == {}


async def test_lots_dated_in_the_plants_own_format_are_found(mongo_server) -> None:
    # day-first text does not order by time: the server-side date filter would skip every row
    database = unique("lots-format").replace("-", "_")
    watch, registry = monitor(mongo_server.uri, database, wait_days=7)
    watch.use_store(SimpleNamespace(raw={"drift": {"parts": [{"facility": "F1", "item": "P1", "lots": {
        "lots": 30, "ratio": 1.0, "dispersion": 1.0}}]}}), "v1",
        SimpleNamespace(lot_columns=schema_with_lot_columns().lot_columns, lot_date_format="%d.%m.%Y"))
    client = AsyncMongoClient(mongo_server.uri)
    try:
        for day in ("2026-03-01", "2026-03-02"):
            for verdict in verdicts(day, 100, 20):
                watch.observe(verdict)
        await client[database]["lots"].insert_one({"machine": "F1", "part": "P1", "day": "01.03.2026", "ok": 96, "nok": 4})
        assert await watch.poll() == [(("F1", "P1", "2026-03-01"), "more_than_lots")]
        assert sample(registry, "moldwatch_lot_drift_lots_total", outcome="judged") == 1
    finally:
        await client.close()
        if watch._client is not None:
            await watch._client.close()
