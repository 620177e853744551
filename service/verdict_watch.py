"""The watchers that follow the served store and read every acknowledged verdict: drift watch, lot
drift and the feedback lines, as one part of the worker.

Each is optional (its setting), each keeps its own metrics; this part only says when: a store is
served (``use_store``: each starts afresh against it), a verdict was acknowledged by Kafka
(``observe``), the worker starts (``start``: the lines file is read before the first batch, the
lot poller and the lines watcher run as supervised tasks) and stops (``TASKS`` are cancelled).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry

from model_store.serving.drift import DriftConfig
from model_store.serving.line_book import LineBook
from service.config import WorkerSettings
from service.drift_watch import DriftMonitor
from service.line_watch import LineWatch
from service.lot_watch import LotMonitor

Spawn = Callable[[str, Coroutine[Any, Any, Any]], Any]  # Supervisor.spawn


class VerdictWatchers:
    TASKS: tuple[str, ...] = ("lines-watcher", "lot-drift")

    def __init__(self, settings: WorkerSettings, registry: CollectorRegistry,
                 on_lines: Callable[[LineBook], None]) -> None:
        # Drift watch: each part's acknowledged verdicts against the served store's history.
        self.drift = DriftMonitor(DriftConfig(rate_h=settings.drift_rate_h, shift_h=settings.drift_shift_h),
                                  registry) if settings.drift_watch else None
        # Lot drift: alarms against the daily lots' bad counts, as the lots arrive in MongoDB.
        self.lot_drift = LotMonitor(settings, registry) if settings.lots_collection else None
        # Feedback lines: the line book `moldwatch lines` writes, reloaded like the recipes.
        self.lines = LineWatch(settings.lines, settings.store_poll_s, registry, on_lines) \
            if settings.lines is not None else None

    def use_store(self, engine: Any) -> None:
        """Follow this store from now on (every part afresh)."""
        if self.drift is not None:
            self.drift.use_store(engine.manifest, engine.model_version)
        if self.lot_drift is not None:
            self.lot_drift.use_store(engine.manifest, engine.model_version, engine.schema)
        if self.lines is not None:
            self.lines.use_store(engine.model_version)

    async def start(self, spawn: Spawn, stopping: asyncio.Event) -> None:
        if self.lines is not None:
            await self.lines.reloader.load(force=True)  # a broken book: logged, every part at its trained line
            spawn("lines-watcher", self.lines.reloader.watch())
        if self.lot_drift is not None:
            spawn("lot-drift", self.lot_drift.run(stopping))

    def observe(self, verdict: dict[str, Any]) -> None:
        """One verdict Kafka acknowledged (what alarm consumers saw)."""
        if self.drift is not None:
            self.drift.observe(verdict)
        if self.lines is not None:
            self.lines.observe(verdict)
        if self.lot_drift is not None:
            self.lot_drift.observe(verdict)


__all__ = ["VerdictWatchers"]
