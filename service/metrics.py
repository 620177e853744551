"""Prometheus metrics of one worker, in a registry of its own.

A registry per worker (not the global default) so that tests, the demo and the benchmark can run
several workers in one process. Label sets are bounded: facility and item label values are the
pairs the served store has history for (any other pair is counted under "other", and in
``moldwatch_unknown_part_verdicts_total``); dead-letter reasons and resolution paths are fixed
vocabularies.

Labelled counters whose label values are known at start (the configured source, the three output
topics, dead-letter reasons, ...) are created at 0, so that rate()/increase() see the first event
(a series born at 1 has no increase).

Dashboards (PromQL):
    anomaly rate per facility/item  rate(moldwatch_anomalies_total[5m]) / rate(moldwatch_verdicts_total[5m])
    p99 processing latency          histogram_quantile(0.99, rate(moldwatch_processing_seconds_bucket[5m]))
      (the alerted objective)
    p99 end-to-end latency          histogram_quantile(0.99, rate(moldwatch_end_to_end_seconds_bucket[5m]))
    share of shots over 15 min late 1 - rate(moldwatch_event_time_lag_seconds_bucket{le="900"}[5m])
                                      / rate(moldwatch_event_time_lag_seconds_count[5m])

Latency, three clocks (issue 17 item 8: late records are the plant's, not the worker's):
    processing     read by the worker -> verdict acknowledged by Kafka (one clock, the worker's):
                   what the worker controls; the latency alert's objective
    end_to_end     the source took the record in (change event wallTime, else cluster time, whole
                   seconds; the Kafka message timestamp) -> acknowledged; read time when the source
                   gives none (a backfill): adds waiting in the source (catching up)
    event_time_lag the record's own timestamp -> acknowledged: how late the plant's data is
                   (buffered machines, re-sent batches, a gateway clock behind); buckets to a week
    share of production on recipe   sum by (facility) (rate(moldwatch_recipe_checks_total{on_recipe="true"}[5m]))
      per facility                    / sum by (facility) (rate(moldwatch_recipe_checks_total[5m]))
    share the recipes can judge     1 - sum(rate(moldwatch_recipe_checks_total{on_recipe="unknown"}[5m]))
      (low: recipes are stale)        / sum(rate(moldwatch_recipe_checks_total[5m]))

``on_recipe`` is "true" / "false" / "unknown" (no recipe for the facility/item, unknown setting
cluster, or recipes made with another store version: rebuild them after a new store). The recipe
counters exist only when the worker has a recipes file (``MOLDWATCH_RECIPES``).
"""
from __future__ import annotations

import collections
import time
from array import array
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from model_store.serving.verdict import VerdictColumns

# Scoring a batch takes ~1-100 ms; end-to-end spans a few ms (live) to minutes (catching up).
SCORING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# A record's own timestamp can be hours or days old (a machine buffered over a weekend): buckets to a week.
EVENT_LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 7 * 86400.0)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
# Kept for the benchmark's exact p50/p99 (histograms only give bucket-interpolated quantiles).
LATENCY_WINDOW = 200_000

NONE_LABEL = "none"  # label value for a missing item/maker: Prometheus labels cannot be null
ON_RECIPE = {True: "true", False: "false", None: "unknown"}


def label(value: Any) -> str:
    return NONE_LABEL if value is None or value == "" else str(value)


OTHER_LABEL = "other"  # facility/item label of a pair the store does not know
MAX_PAIRS_WITHOUT_STORE = 1000  # before any store is served, label pairs as they come, up to this many


def store_parts(manifest: Any) -> frozenset[tuple[str, str]]:
    """(facility, item) pairs a store has history for: the label values the per-part counters may take."""
    raw = getattr(manifest, "raw", manifest)
    rows = raw.get("group_table", ()) if isinstance(raw, Mapping) else ()
    return frozenset((label(row["key"].get("facility")), label(row["key"].get("item")))
                     for row in rows if isinstance(row, Mapping) and isinstance(row.get("key"), Mapping))


class LatencyWindow:
    """The most recent record-timestamp-to-ack latencies (seconds), for exact quantiles in benchmarks
    (which stamp records as they insert them) and the demo.

    A ring of C doubles allocated whole at start (8 bytes a value, 1.6 MB for the default window),
    not a deque of float objects: that cost ~32 bytes a value more and grew the worker's RSS by
    ~6.5 MB over its first 200,000 verdicts (minutes at 1,000 records/s, hours at a plant's pace),
    a climb no one can tell from a leak on a memory dashboard. Written by the event loop only.
    """

    def __init__(self, maxlen: int = LATENCY_WINDOW) -> None:
        self.maxlen = max(1, int(maxlen))
        self._ring = array("d", bytes(8 * self.maxlen))  # every page written now: RSS is flat after
        self._next = 0  # where the next value goes
        self._count = 0  # values held (<= maxlen)

    def __len__(self) -> int:
        return self._count

    @property
    def values(self) -> list[float]:
        """The values held, oldest first (a copy)."""
        if self._count < self.maxlen:
            return self._ring[:self._count].tolist()
        return self._ring[self._next:].tolist() + self._ring[:self._next].tolist()

    def add(self, seconds: float) -> None:
        self._ring[self._next] = seconds
        self._next = (self._next + 1) % self.maxlen
        if self._count < self.maxlen:
            self._count += 1

    def clear(self) -> None:
        self._next = self._count = 0

    def quantiles(self, qs: Sequence[float] = (0.5, 0.99)) -> dict[float, float]:
        data = sorted(self.values)
        if not data:
            return {q: float("nan") for q in qs}
        return {q: data[min(len(data) - 1, int(q * len(data)))] for q in qs}


class CacheStatsCollector(Collector):
    """Model-cache counters read at scrape time from the live engine's ``cache.stats``.

    The engine's counters restart when a hot reload swaps in a new engine; the totals of retired
    engines are folded into ``_base`` so the exported counters stay monotone.
    """

    FIELDS = ("hits", "misses", "loads", "evictions")

    def __init__(self) -> None:
        self._engine: Any = None
        self._base = dict.fromkeys(self.FIELDS, 0)

    def track(self, engine: Any) -> None:
        if self._engine is not None:
            for name in self.FIELDS:
                self._base[name] += int(getattr(self._engine.cache.stats, name))
        self._engine = engine

    def totals(self) -> dict[str, int]:
        stats = self._engine.cache.stats if self._engine is not None else None
        return {name: self._base[name] + (int(getattr(stats, name)) if stats else 0) for name in self.FIELDS}

    def collect(self) -> Iterable[Any]:
        for name, value in self.totals().items():
            yield CounterMetricFamily(f"moldwatch_model_cache_{name}", f"Model cache {name} (per-group models).", value=value)
        size = len(self._engine.cache) if self._engine is not None else 0
        yield GaugeMetricFamily("moldwatch_model_cache_models", "Group models held in the LRU cache.", value=size)


class WorkerMetrics:
    """Every metric of one worker. Adapters call the ``observe_*`` helpers, not the raw metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records_in = Counter("moldwatch_records_in", "Raw records read from the source.", ["source"], registry=r)
        self.verdicts = Counter("moldwatch_verdicts", "Verdicts acknowledged by Kafka.", ["facility", "item"], registry=r)
        self.anomalies = Counter("moldwatch_anomalies", "Anomalous verdicts acknowledged by Kafka.", ["facility", "item"], registry=r)
        self.dead_letters = Counter("moldwatch_dead_letters", "Records sent to the dead-letter topic.", ["reason"], registry=r)
        self.resolutions = Counter("moldwatch_resolutions", "Verdicts by resolution path.", ["path"], registry=r)
        self.imputed = Counter("moldwatch_imputed_fields", "Fields filled by imputation.", ["field"], registry=r)
        self.batches = Counter("moldwatch_batches", "Micro-batches scored.", registry=r)
        self.batch_fallbacks = Counter(
            "moldwatch_batch_fallbacks", "Batches whose vectorised scoring failed and were scored record by record.", registry=r)
        self.batch_size = Histogram("moldwatch_batch_size", "Records per micro-batch.", buckets=BATCH_BUCKETS, registry=r)
        self.scoring_seconds = Histogram(
            "moldwatch_scoring_seconds", "Time to decode and score one micro-batch (off the event loop).",
            buckets=SCORING_BUCKETS, registry=r)
        self.end_to_end = Histogram(
            "moldwatch_end_to_end_seconds", "Source took the record in (change event time, Kafka message timestamp; "
            "read time when none) to Kafka acknowledgement of its verdict.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.event_time_lag = Histogram(
            "moldwatch_event_time_lag_seconds", "Record's own timestamp to Kafka acknowledgement of its verdict (how late "
            "the plant's records are; not the worker's latency).", buckets=EVENT_LAG_BUCKETS, registry=r)
        self.processing = Histogram(
            "moldwatch_processing_seconds", "Record read from the source to Kafka acknowledgement of its verdict.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.stream_lag = Gauge(
            "moldwatch_change_stream_lag_seconds",
            "Now minus the time of the last event read (cluster time, else the record timestamp).", ["source"], registry=r)
        self.history_lost = Counter(
            "moldwatch_change_stream_history_lost", "Resume tokens the source could not resume from (backfilled).", registry=r)
        self.backfilled = Counter("moldwatch_backfilled_records", "Records re-read by timestamp after lost history.", registry=r)
        self.reloads = Counter("moldwatch_model_reloads", "Model store hot reloads.", ["outcome"], registry=r)
        self.kafka_send_errors = Counter("moldwatch_kafka_send_errors", "Kafka sends that failed (then retried).", ["topic"], registry=r)
        self.checkpoints = Counter("moldwatch_checkpoints", "Checkpoints written (resume token / offsets).", registry=r)
        self.stalled = Gauge("moldwatch_stalled_seconds", "Seconds that read records have waited with nothing "
                             "acknowledged by Kafka (0 while idle or making progress).", registry=r)
        self.checkpoint_failures = Counter("moldwatch_checkpoint_failures",
                                           "Checkpoint writes that failed (retried with the next one).", registry=r)
        self.source_errors = Counter("moldwatch_source_errors", "Source read errors (the source reconnects).", ["source"], registry=r)
        self.loop_lag = Gauge("moldwatch_event_loop_lag_seconds", "How late the event loop ran a 0.5 s timer.", registry=r)
        self.ready = Gauge("moldwatch_ready", "1 when the last readiness check (/readyz) passed, else 0.", registry=r)
        self.recipe_checks = Counter(
            "moldwatch_recipe_checks", "Verdicts acknowledged by Kafka, by whether their setting is the recommended one "
            "(on_recipe: true, false, unknown).", ["facility", "on_recipe"], registry=r)
        self.recipe_loads = Counter("moldwatch_recipe_loads", "Recipe file loads (start-up and changes).", ["outcome"], registry=r)
        self.recipes = Gauge("moldwatch_recipes", "Recipes (facility/item pairs) being served; 0 when none are loaded.",
                             registry=r)
        self.store = Info("moldwatch_store", "The model store being served.", registry=r)
        self.broken_groups = Gauge(
            "moldwatch_broken_groups", "Setting groups of the served store whose model file cannot be loaded "
            "(their records are unscorable, cause broken_model).", registry=r)
        self.store_rejected = Gauge(
            "moldwatch_store_rejected", "1 while the store on disk was rejected and the last good one serves.", registry=r)
        self.shadow_active = Gauge("moldwatch_shadow_active", "1 while a candidate store judges every record in the "
                                   "shadow (candidate_store; its verdicts on kafka_shadow_topic only).", registry=r)
        self.shadow_verdicts = Counter("moldwatch_shadow_verdicts", "The candidate store's verdicts (shadow canary), "
                                       "acknowledged with their batch.", ["facility", "item"], registry=r)
        self.shadow_anomalies = Counter("moldwatch_shadow_anomalies", "The candidate store's anomalous verdicts (shadow "
                                        "canary; never sent to the alarms topic).", ["facility", "item"], registry=r)
        self.shadow_failed_batches = Counter(
            "moldwatch_shadow_failed_batches", "Batches the candidate store raised on (shadow canary): its verdicts of "
            "them are missing from the shadow topic, the served verdicts are not touched.", registry=r)
        self.cache = CacheStatsCollector()
        r.register(self.cache)
        self.latencies = LatencyWindow()
        self._per_item: dict[tuple[str, str], tuple[Any, Any]] = {}
        # Label values are bounded by what the store knows: a buggy or hostile source sending 10^5
        # new facility names must not grow /metrics (and the Prometheus behind it) without end.
        self.known_parts: frozenset[tuple[str, str]] | None = None
        self.unknown_parts = Counter(
            "moldwatch_unknown_part_verdicts", "Verdicts for a facility/item pair the store has no history for, counted "
            "under facility=item=\"other\" in the per-part counters.", registry=r)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._last_checkpoint: float | None = None
        self._started = time.time()
        self.checkpoint_age = Gauge(
            "moldwatch_checkpoint_age_seconds", "Seconds since the last checkpoint (since start if none yet).", registry=r)
        self.checkpoint_age.set_function(self._checkpoint_age)
        from service.decode import REASONS

        for reason in REASONS:
            self.dead_letters.labels(reason)  # present at 0 so rate() works before the first bad record
        from model_store.serving.conditional import CONDITIONAL
        from model_store.serving.resolution import PATHS, UNSCORABLE
        from model_store.serving.scoring import UNSCORABLE_CAUSES

        for path in (*PATHS, CONDITIONAL, UNSCORABLE):
            self.resolutions.labels(path)
        self.unscorable = Counter(
            "moldwatch_unscorable", "Records no model could judge, by cause (insufficient_evidence: too many "
            "production values missing).", ["cause"], registry=r)
        self._causes = frozenset(UNSCORABLE_CAUSES)
        for cause in (*UNSCORABLE_CAUSES, "other"):
            self.unscorable.labels(cause)
        for outcome in ("ok", "failed"):
            self.reloads.labels(outcome)
            self.recipe_loads.labels(outcome)
        # Process memory, CPU, open files and start time (process_*), for this worker's registry.
        ProcessCollector(registry=r)

    # -- gauges computed at scrape time --------------------------------------------------------
    def _checkpoint_age(self) -> float:
        return time.time() - (self._last_checkpoint or self._started)

    def watch_progress(self, stalled: Callable[[], float]) -> None:
        """``moldwatch_stalled_seconds``: how long work has waited without any acknowledgement
        (0 while idle or moving). Readiness fails past ``progress_timeout_s``; the
        MoldwatchNoProgress alert fires on it."""
        self.stalled.set_function(stalled)

    def watch_queue(self, depth: Callable[[], float], in_flight: Callable[[], float]) -> None:
        queue = Gauge("moldwatch_queue_records", "Records read and waiting to be scored.", registry=self.registry)
        queue.set_function(depth)
        flight = Gauge("moldwatch_in_flight_batches", "Scored batches waiting for Kafka acks.", registry=self.registry)
        flight.set_function(in_flight)

    # -- helpers the worker calls --------------------------------------------------------------
    def expect(self, source: str, topics: Iterable[str]) -> None:
        """Create the source's and the output topics' labelled counters at 0 (see the module doc)."""
        self.records_in.labels(source)
        self.source_errors.labels(source)
        for topic in topics:
            self.kafka_send_errors.labels(topic)

    def set_recipes(self, book: Any) -> None:
        """A recipe book is served: its size, and its facilities' check counters at 0."""
        self.recipes.set(len(book))
        for facility in sorted({str(r["facility"]) for r in book.recipes()}):
            for value in ON_RECIPE.values():
                self.recipe_checks.labels(facility, value)

    def set_store(self, engine: Any, path: str) -> None:
        self.store.info({"model_version": str(engine.model_version), "path": str(path),
                         "groups": str(len(engine.manifest.groups))})
        self.cache.track(engine)
        known = store_parts(engine.manifest)
        if known or self.known_parts is not None:
            self.known_parts = known

    def part_labels(self, facility: Any, item: Any, verdicts: int = 1) -> tuple[str, str]:
        """The (facility, item) label values of ``verdicts`` verdicts of one pair: its own when the
        store knows the pair, else ("other", "other") (counted)."""
        pair = (label(facility), label(item))
        if pair in self._per_item or (self.known_parts is not None and pair in self.known_parts):
            return pair
        if self.known_parts is None and len(self._per_item) < MAX_PAIRS_WITHOUT_STORE:
            return pair
        self.unknown_parts.inc(verdicts)
        return OTHER_LABEL, OTHER_LABEL

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, resolved once: ``labels()`` takes a lock and hashes a tuple on
        every call, a cost the per-record paths (one read, one verdict) should not pay each time."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def checkpointed(self) -> None:
        self._last_checkpoint = time.time()
        self.checkpoints.inc()

    def observe_verdict(self, verdict: Mapping[str, Any]) -> None:
        """One verdict that exists only as an object (see :meth:`observe_batch`)."""
        from model_store.serving.verdict import VerdictColumns

        self.observe_batch(VerdictColumns.of_verdicts([verdict]))

    def observe_batch(self, columns: VerdictColumns, skip: Collection[int] = ()) -> None:
        """Count a batch's verdicts from its columns, but those at the positions in ``skip``
        (dead-lettered by the sink, counted there): one increment per label set, not per verdict."""
        keep = [i for i in range(len(columns)) if i not in skip] if skip else None

        def column(values: list[Any]) -> list[Any]:
            return values if keep is None else [values[i] for i in keep]

        facility, item, anomaly = column(columns.facility), column(columns.item), column(columns.anomaly)
        pairs = collections.Counter(zip(facility, item))
        alarms = collections.Counter(pair for pair, alarm in zip(zip(facility, item), anomaly) if alarm)
        labelled: dict[tuple[Any, Any], tuple[str, str]] = {}
        for pair, count in pairs.items():
            labels = labelled[pair] = self.part_labels(*pair, verdicts=count)
            children = self._per_item.get(labels)
            if children is None:  # labels() costs a lock and a tuple hash per call: resolve once per pair
                children = self._per_item[labels] = (self.verdicts.labels(*labels), self.anomalies.labels(*labels))
            children[0].inc(count)
            if alarms[pair]:
                children[1].inc(alarms[pair])
        for resolution, count in collections.Counter(column(columns.resolution)).items():
            self.child(self.resolutions, resolution).inc(count)
        for cause, count in collections.Counter(c for c in column(columns.cause) if c is not None).items():
            self.child(self.unscorable, cause if cause in self._causes else "other").inc(count)
        for name, count in collections.Counter(n for names in column(columns.imputed) for n in names).items():
            self.child(self.imputed, str(name)).inc(count)
        if columns.on_recipe is not None:  # None: the worker has no recipes file
            checks = collections.Counter((labelled[pair][0], ON_RECIPE.get(flag, "unknown"))
                             for pair, flag in zip(zip(facility, item), column(columns.on_recipe)))
            for (facility_label, answer), count in checks.items():
                self.child(self.recipe_checks, facility_label, answer).inc(count)

    def observe_shadow(self, verdict: dict[str, Any]) -> None:
        facility, item = self.part_labels(verdict.get("facility"), verdict.get("item"))
        self.child(self.shadow_verdicts, facility, item).inc()
        if verdict.get("anomaly"):
            self.child(self.shadow_anomalies, facility, item).inc()

    def observe_latency(self, record_time: float | None, received_at: float, acked_at: float,
                        event_time: float | None = None) -> None:
        processing = max(0.0, acked_at - received_at)
        self.processing.observe(processing)
        # Never shorter than processing: a source clock ahead of ours would make it so.
        self.end_to_end.observe(max(processing, acked_at - event_time) if event_time is not None else processing)
        if record_time is not None:
            # A plant clock ahead of ours gives a negative span; zero is the honest floor.
            seconds = max(0.0, acked_at - record_time)
            self.event_time_lag.observe(seconds)
            self.latencies.add(seconds)


__all__ = ["WorkerMetrics", "LatencyWindow", "CacheStatsCollector", "label", "store_parts", "OTHER_LABEL"]
