"""The worker's lot drift: acknowledged verdicts counted per lot, matched with the daily lots as
they arrive in MongoDB, judged by :mod:`model_store.serving.lot_drift` (pure).

Each acknowledged verdict of a part with a lot reference adds one judged shot (and one alarm when
its score is above the store's own line, 1) to its lot (facility, item, ``lot_date``). A lot is
*closed* once the same part has verdicts of a later lot date. Every ``lots_poll_s`` the closed lots
are looked up in ``lots_collection`` (the plant schema's lot columns); a lot found is judged and
forgotten, one still missing ``lots_wait_days`` after a later lot began is given up and counted.
Memory is bounded: counts of at most ``MAX_OPEN_LOTS`` lots are kept (the oldest dropped first).

    moldwatch_lot_drift{facility,item,detector}        1 while more_than_lots / fewer_than_lots is on
    moldwatch_lot_drift_level{facility,item,detector}  its CUSUM statistic in units of its line
    moldwatch_lot_drift_detections_total{detector}     flags that came on (alert MoldwatchLotDrift)
    moldwatch_lot_drift_lots_total{outcome}            judged / no_lot_row / dropped
    moldwatch_lot_drift_read_failures_total            lots collection reads that failed (retried)
    moldwatch_lot_drift_bad_lot_rows_total             rows that do not read as a lot (skipped)

Readiness is never affected.
"""
from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd
import structlog
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from model_store.canonical import canonical_lots
from model_store.errors import DataError
from model_store.mapping import zone_info
from model_store.schema import PlantSchema
from model_store.serving.lot_drift import LOT_DETECTORS, LotDriftConfig, LotWatch, lot_references_from_manifest
from service.config import WorkerSettings

log = structlog.get_logger("moldwatch.lot_drift")

MAX_OPEN_LOTS = 50_000  # ~ a week of 7,000 parts' daily lots; a stream of made-up parts cannot grow it without end
LotKey = tuple[str, str, str]  # facility, item, lot date (YYYY-MM-DD)
_NO_LOTS = pd.DataFrame(columns=["facility", "item", "lot_date", "good_qty", "bad_qty"])


class LotMonitor(Collector):
    def __init__(self, settings: WorkerSettings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.config = LotDriftConfig(h=settings.lot_drift_h)
        self.model_version: str | None = None
        self.schema: PlantSchema | None = None
        self.watches: dict[tuple[str, str], LotWatch] = {}
        self.open: dict[LotKey, list[int]] = {}  # [judged shots, alarms]
        self.newest: dict[tuple[str, str], str] = {}  # the latest lot date seen per part
        self.detections = Counter("moldwatch_lot_drift_detections", "Lot drift flags that came on, by detector "
                                  "(more_than_lots, fewer_than_lots).", ["detector"], registry=registry)
        for detector in LOT_DETECTORS:
            self.detections.labels(detector)
        self.lots = Counter("moldwatch_lot_drift_lots", "Closed lots by outcome: judged against the lots collection, "
                            "no_lot_row (given up after lots_wait_days), dropped (over the memory bound).",
                            ["outcome"], registry=registry)
        for outcome in ("judged", "no_lot_row", "dropped"):
            self.lots.labels(outcome)
        self.bad_rows = Counter("moldwatch_lot_drift_bad_lot_rows", "Rows of the lots collection that do not read "
                                "as a lot (a count that is no number, a missing column): skipped.", registry=registry)
        self.read_failures = Counter("moldwatch_lot_drift_read_failures", "Reads of the lots collection that failed "
                                     "(retried at the next poll).", registry=registry)
        self._client: Any = None
        registry.register(self)

    # -- the served store ------------------------------------------------------------------------
    def use_store(self, manifest: Any, model_version: str, schema: PlantSchema) -> None:
        """Judge against this store's lot references from now on (every part and lot afresh)."""
        try:
            references = lot_references_from_manifest(manifest.raw.get("drift"))
        except (KeyError, TypeError, ValueError) as exc:
            log.error("lot references of the model store do not read; lot drift is off for this store (retrain to "
                      "repair)", model_version=model_version, error=str(exc)[:300])
            references = {}
        if not references:
            log.warning("the model store has no lot references: lot drift is off for it (stores trained before lot "
                        "drift, or parts with too few lots: retrain)", model_version=model_version)
        self.watches = {part: LotWatch(reference, self.config) for part, reference in references.items()}
        self.open.clear()
        self.newest.clear()
        self.model_version, self.schema = model_version, schema

    # -- verdicts ----------------------------------------------------------------------------------
    def observe(self, verdict: dict[str, Any]) -> None:
        score, lot_date = verdict.get("score"), verdict.get("lot_date")
        if verdict.get("model_version") != self.model_version or not isinstance(lot_date, str) \
                or isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            return
        part = (str(verdict.get("facility")), str(verdict.get("item")))
        if part not in self.watches:
            return
        counts = self.open.get((*part, lot_date))
        if counts is None:
            if len(self.open) >= MAX_OPEN_LOTS:
                oldest = min(self.open, key=lambda key: key[2])
                del self.open[oldest]
                self.lots.labels("dropped").inc()
            counts = self.open[(*part, lot_date)] = [0, 0]
        counts[0] += 1
        counts[1] += int(score > 1.0)  # the store's own line: what the reference was made at
        if lot_date > self.newest.get(part, ""):
            self.newest[part] = lot_date

    def closed(self) -> list[LotKey]:
        """Lots whose part has verdicts of a later lot date."""
        return [key for key in self.open if key[2] < self.newest.get(key[:2], "")]

    # -- lots ------------------------------------------------------------------------------------
    def judge(self, lots: pd.DataFrame) -> list[tuple[LotKey, str]]:
        """Judge the closed lots found in ``lots`` (canonical: facility, item, lot_date, good_qty,
        bad_qty); give up those waiting too long. Returns the flags that came on."""
        rows = {(str(r.facility), str(r.item), str(r.lot_date)): (int(r.good_qty), int(r.bad_qty))
                for r in lots.itertuples(index=False)}
        flags: list[tuple[LotKey, str]] = []
        for key in self.closed():
            judged, alarms = self.open[key]
            row = rows.get(key)
            if row is None:
                newest = date.fromisoformat(self.newest[key[:2]])
                if date.fromisoformat(key[2]) + timedelta(days=self.settings.lots_wait_days) < newest:
                    del self.open[key]
                    self.lots.labels("no_lot_row").inc()
                continue
            good, bad = row
            produced = good + bad
            expected = bad * judged / produced if produced > 0 else 0.0
            del self.open[key]
            self.lots.labels("judged").inc()
            watch = self.watches[key[:2]]
            for detector in watch.observe_lot(alarms, expected):
                self.detections.labels(detector).inc()
                flags.append((key, detector))
                log.warning("lot drift: a part's alarms left what its lots say", facility=key[0], item=key[1],
                            lot_date=key[2], detector=detector, alarms=alarms, expected_bad=round(expected, 2),
                            reference_ratio=round(watch.reference.ratio, 3), model_version=self.model_version)
        return flags

    async def read_lots(self, keys: list[LotKey]) -> pd.DataFrame:
        """The rows of the lots collection that may hold ``keys`` (their facilities, from their
        earliest date on, as text or a date), canonical."""
        from pymongo import AsyncMongoClient

        assert self.schema is not None
        columns = self.schema.lot_columns
        if self._client is None:
            self._client = AsyncMongoClient(self.settings.mongo_uri, **self.settings.mongo_client_kwargs())
        collection = self._client[self.settings.mongo_database][self.settings.lots_collection]
        first = min(key[2] for key in keys)
        query: dict[str, Any] = {columns["facility"]: {"$in": sorted({key[0] for key in keys})}}
        if not getattr(self.schema, "lot_date_format", None):
            # ISO text and BSON dates order by time, so the server can skip older lots; text in the
            # plant's own format (02.03.2026) does not, and is read whole for these machines
            query["$or"] = [{columns["lot_date"]: {"$gte": first}},
                            {columns["lot_date"]: {"$gte": pd.Timestamp(first).to_pydatetime()}}]
        documents = await collection.find(query, {"_id": 0}).to_list(None)
        day = columns["lot_date"]
        zone = zone_info(getattr(self.schema, "timezone", None))
        for document in documents:  # a BSON date -> its day (the plant's day with a timezone), as text lots hold it
            value = document.get(day)
            if isinstance(value, datetime):
                document[day] = (value.astimezone(zone) if zone is not None and value.tzinfo is not None
                                 else value).date().isoformat()
        source = f"lots collection {self.settings.lots_collection}"
        try:
            return canonical_lots(pd.DataFrame(documents), self.schema, source=source) if documents else _NO_LOTS
        except DataError:
            pass
        # One malformed row (a count typed as text, a missing column) must not hide every other
        # lot for ever: keep the rows that read, count and log the others.
        kept = []
        for document in documents:
            try:
                kept.append(canonical_lots(pd.DataFrame([document]), self.schema, source=source))
            except DataError as exc:
                self.bad_rows.inc()
                log.warning("lot row refused; lot drift skips it", error=str(exc)[:300])
        return pd.concat(kept, ignore_index=True) if kept else _NO_LOTS

    async def poll(self) -> list[tuple[LotKey, str]]:
        closed = self.closed()
        if not closed or self.schema is None:
            return []
        try:
            lots = await self.read_lots(closed)
        except Exception as exc:  # noqa: BLE001 - a lots problem never touches the verdicts: log, count, retry
            self.read_failures.inc()
            log.error("lots collection not readable; lot drift waits for the next poll",
                      collection=self.settings.lots_collection, error=f"{type(exc).__name__}: {str(exc)[:200]}")
            return []
        return self.judge(lots)

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            while not stopping.is_set():
                try:
                    await asyncio.wait_for(stopping.wait(), self.settings.lots_poll_s)
                except TimeoutError:
                    await self.poll()
        finally:
            if self._client is not None:
                await self._client.close()
                self._client = None

    # -- metrics ---------------------------------------------------------------------------------
    def collect(self) -> Iterable[Any]:
        flags = GaugeMetricFamily("moldwatch_lot_drift", "1 while a lot drift detector's flag is on for the part "
                                  "(more_than_lots: alarms beyond what the lots' bad counts explain; fewer_than_lots: "
                                  "bad parts no longer flagged).", labels=["facility", "item", "detector"])
        levels = GaugeMetricFamily("moldwatch_lot_drift_level", "A lot drift detector's CUSUM statistic in units of "
                                   "its line (1 = flag).", labels=["facility", "item", "detector"])
        for (facility, item), watch in sorted(self.watches.items()):
            if watch.lots == 0:
                continue
            for name, cusum in watch.detectors.items():
                flags.add_metric([facility, item, name], 1.0 if cusum.on else 0.0)
                levels.add_metric([facility, item, name], cusum.level)
        yield from (flags, levels)


__all__ = ["LotMonitor", "MAX_OPEN_LOTS"]
