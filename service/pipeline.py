"""One micro-batch: raw source messages -> verdicts and dead letters.

Pure apart from the facility memory (last known item and settings per facility, carried across
batches so that a record with a gap is imputed from its machine's recent state). All CPU work —
decoding, the canonical frame, the vectorised scoring core — runs in :meth:`Pipeline.run_batch`,
which the worker calls on a single-thread executor so the event loop only moves data.

Recipe check: with a :class:`~model_store.recipe.RecipeBook` in ``Pipeline.recipes`` every verdict
gets ``on_recipe`` (True / False / None = can't tell: no recipe for its facility/item, unknown
setting cluster, or a recipe made with another store version). Without one (no recipes file
configured) verdicts carry no ``on_recipe`` at all: "not checked" is not "can't tell".

Failure policy: a batch that raises is re-scored record by record and only the records that
still raise become dead letters. A :class:`~model_store.errors.StoreError` is different: the
store changed or broke on disk under a lazily loading engine, which says nothing about the
records, so it propagates and the worker reloads the store and retries the batch.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import orjson
import pandas as pd
import structlog

from model_store.errors import StoreError
from model_store.serving.columns import RecordColumns
from model_store.serving.imputation import FacilityMemory
from model_store.serving.line_book import LineBook, judge_with_book
from model_store.serving.recipe_book import RecipeBook
from model_store.serving.scoring import ScoringEngine
from model_store.serving.verdict import VerdictColumns, to_verdicts_and_columns
from service.decode import SCORING_FAILED, UNDECODABLE, DeadLetter, RecordDecoder, UnknownFields, short_repr, unknown_field_text
from service.supersede import HTTP_SOURCE, AnsweredIds

log = structlog.get_logger("moldwatch.pipeline")


@dataclass(frozen=True)
class SourceMessage:
    """What a source hands the pipeline.

    ``position`` is opaque here (a resume token, a Kafka offset); the worker checkpoints it once
    this message and every earlier one are acknowledged by Kafka. A ``marker`` carries only a
    position (e.g. an idle change stream's post-batch resume token) and no record.
    """

    document: Any
    position: Any = None
    received_at: float = field(default_factory=time.time)
    event_time: float | None = None  # when the source saw it (change event time, Kafka timestamp): end-to-end latency
    error: str | None = None  # the source could not parse it; ``document`` holds the raw text
    marker: bool = False
    # Where the record was read, as the verdict's ``source`` (service/supersede.py): built by the
    # source once per record; None (tests, benches) leaves the verdict without it.
    source: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ScoredRecord:
    verdict: dict[str, Any]
    record_time: float  # record timestamp, epoch seconds (event-time lag)
    received_at: float  # when the worker read it (processing time)
    payload: bytes = b""  # the verdict as JSON, serialised in the executor: the loop only moves bytes
    event_time: float | None = None  # when the source took it in (end-to-end latency); None: read time


@dataclass(frozen=True)
class FailedRecord:
    dead_letter: DeadLetter
    received_at: float
    source: Mapping[str, Any] | None = None  # the dead letter's ``source``, as a verdict's


@dataclass
class BatchResult:
    scored: list[ScoredRecord]
    failed: list[FailedRecord]
    model_version: str
    seconds: float = 0.0
    fallback: bool = False
    # The candidate store's verdicts of the same records (shadow canary), as JSON; empty without one.
    shadow: list[tuple[dict[str, Any], bytes]] = field(default_factory=list)
    shadow_failed: bool = False  # the candidate store raised on this batch: no shadow verdicts of it
    # What the sink and the metrics read of ``scored``, as columns (same order); None for a result
    # built from verdict objects alone (then read from them: see :meth:`verdict_columns`).
    columns: VerdictColumns | None = None

    @property
    def verdicts(self) -> list[dict[str, Any]]:
        return [s.verdict for s in self.scored]

    @property
    def dead_letters(self) -> list[DeadLetter]:
        return [f.dead_letter for f in self.failed]

    def verdict_columns(self) -> VerdictColumns:
        if self.columns is None or len(self.columns) != len(self.scored):
            return VerdictColumns.of_verdicts(self.verdicts)
        return self.columns


class Pipeline:
    """Decode -> canonical frame -> :class:`ScoringEngine` -> verdicts, for one worker."""

    def __init__(self, engine: ScoringEngine, executor: Executor | None = None,
                 answered: AnsweredIds | None = None) -> None:
        self._engine = engine
        # Record ids this worker answered (``supersedes``); read and written by run_batch only, on
        # the one scoring thread. None: verdicts carry ``source`` but never ``supersedes``.
        self.answered = answered
        self._decoder = RecordDecoder(engine.schema)
        self._unknown = UnknownFields(engine.schema)
        self.executor = executor
        self.memory: FacilityMemory = {}
        # Replaced whole by the worker (never mutated); a batch reads it once, so one batch is
        # judged by one book even when a reload lands mid-batch.
        self.recipes: RecipeBook | None = None
        # The feedback lines (model_store.serving.line_book), replaced whole the same way.
        self.lines: LineBook | None = None
        # Shadow canary: a candidate store judging the same records; its own facility memory (its
        # baselines are its own). A failure there never touches the served verdicts.
        self.shadow: ScoringEngine | None = None
        self.shadow_memory: FacilityMemory = {}

    @property
    def engine(self) -> ScoringEngine:
        return self._engine

    @property
    def decoder(self) -> RecordDecoder:
        return self._decoder

    def swap(self, engine: ScoringEngine) -> None:
        """Serve a new store from the next batch on. Facility memory is kept: it is about the
        machines, not the models. Call between batches (the worker does)."""
        if engine.schema.hash() != self._engine.schema.hash():
            self._decoder, self._unknown = RecordDecoder(engine.schema), UnknownFields(engine.schema)
        self._engine = engine

    async def process(self, messages: Sequence[SourceMessage]) -> BatchResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.run_batch, messages)

    def run_batch(self, messages: Sequence[SourceMessage], memory: FacilityMemory | None = None,
                  track: bool = True) -> BatchResult:
        """Score a batch synchronously. ``memory`` defaults to the worker's facility memory;
        ``track=False`` (POST /score) leaves the answered-ids memory alone."""
        started = time.perf_counter()
        engine, decoder, recipes, shadow, lines = self._engine, self._decoder, self.recipes, self.shadow, self.lines
        memory = self.memory if memory is None else memory
        answered = self.answered if track else None
        documents: list[Any] = []
        positions: list[int] = []
        received: list[float] = []
        messages_of: list[SourceMessage] = []  # the message of each document (source, event time)
        failed: list[tuple[int, FailedRecord]] = []  # (position in the batch, letter): kept in batch order
        for position, message in enumerate(messages):
            if message.marker:
                continue
            if message.error is not None:
                failed.append((position, FailedRecord(DeadLetter(UNDECODABLE, message.error, message.document),
                                                      message.received_at, message.source)))
                continue
            documents.append(message.document)
            positions.append(position)
            received.append(message.received_at)
            messages_of.append(message)
        for name, resembles in self._unknown.observe(documents):
            log.warning("record field not in the plant schema", field=name, did_you_mean=resembles,
                        detail=unknown_field_text(name, resembles))
        decoded = decoder.decode_batch(documents)
        for k, letter in decoded.dead_letters.items():
            failed.append((positions[k], FailedRecord(letter, received[k], messages_of[k].source)))
        failed.sort(key=lambda pair: pair[0])
        result = BatchResult([], [f for _, f in failed], engine.model_version)
        if decoded.rows:
            times = [received[k] for k in decoded.rows]
            originals = [documents[k] for k in decoded.rows]  # what a scoring-failure dead letter quotes
            sources = [messages_of[k].source for k in decoded.rows]
            events = [messages_of[k].event_time for k in decoded.rows]
            try:
                verdicts, columns = score_columns(engine, decoded.records, memory, recipes, lines)
                # Before serialising (the payload is what Kafka gets), and after scoring succeeded:
                # a batch that raises StoreError is retried whole and finds the same positions,
                # which the answered-ids memory treats as replays.
                for verdict, source in zip(verdicts, sources):
                    if source is not None:
                        mark(verdict, source, answered)
                payloads = dumps_many(verdicts)
                result.scored = [ScoredRecord(v, r, t, p, e) for v, r, t, p, e
                                 in zip(verdicts, decoded.record_time, times, payloads, events)]
                result.columns = columns
                if shadow is not None and track:
                    judged = self._shadow(shadow, decoded.records, sources)
                    result.shadow, result.shadow_failed = judged or [], judged is None
            except StoreError:
                raise
            except Exception:  # noqa: BLE001 - isolate the offending records instead of losing the batch
                result.fallback = True
                self._score_one_by_one(engine, decoded.records, decoded.record_time, originals, times, memory, result,
                                       recipes, sources, events, answered, lines)
        result.seconds = time.perf_counter() - started
        return result

    def _shadow(self, engine: ScoringEngine, records: Any, sources: list[Any]) -> list[tuple[dict[str, Any], bytes]] | None:
        """The candidate's verdicts of a batch the served store judged; None when it fails."""
        try:
            verdicts = score_frame(engine, records, self.shadow_memory)
            for verdict, source in zip(verdicts, sources):
                if source is not None:
                    mark(verdict, source, None)
            return list(zip(verdicts, dumps_many(verdicts)))
        except Exception as exc:  # noqa: BLE001 - the candidate is on trial; the served verdicts go on
            log.warning("candidate store failed a batch; its shadow verdicts of it are skipped",
                        model_version=engine.model_version, error=f"{type(exc).__name__}: {str(exc)[:200]}")
            return None

    def _score_one_by_one(
        self,
        engine: ScoringEngine,
        records: RecordColumns,
        record_times: list[float],
        originals: list[Any],
        received: list[float],
        memory: FacilityMemory,
        result: BatchResult,
        recipes: RecipeBook | None,
        sources: list[Mapping[str, Any] | None],
        events: list[float | None],
        answered: AnsweredIds | None,
        lines: LineBook | None = None,
    ) -> None:
        parts: list[VerdictColumns] = []
        for j, (record_time, original, at) in enumerate(zip(record_times, originals, received)):
            try:
                (verdict,), columns = score_columns(engine, records.take([j]), memory, recipes, lines)
            except StoreError:
                raise
            except Exception as exc:  # noqa: BLE001 - this record is the offender
                error = f"scoring raised {type(exc).__name__}: {short_repr(str(exc))}"
                result.failed.append(FailedRecord(DeadLetter(SCORING_FAILED, error, original), at, sources[j]))
            else:
                source = sources[j]
                if source is not None:
                    mark(verdict, source, answered)
                result.scored.append(ScoredRecord(verdict, record_time, at, dumps(verdict), events[j]))
                parts.append(columns)
        result.columns = VerdictColumns.concat(parts)

    def score_document(self, document: Any) -> dict[str, Any] | DeadLetter:
        """Score one document synchronously (``POST /score``) without touching the stream's state.

        Reads a copy of the facility memory, so a record with gaps is imputed from the stream's
        recent history, but an ad-hoc request never changes what the stream believes.
        """
        memory = {facility: dict(state) for facility, state in self.memory.items()}
        result = self.run_batch([SourceMessage(document, source=HTTP_SOURCE)], memory=memory, track=False)
        if result.failed:
            return result.failed[0].dead_letter
        return result.scored[0].verdict


def mark(verdict: dict[str, Any], source: Mapping[str, Any], answered: AnsweredIds | None) -> None:
    """Add ``source`` and, for the stream (``answered`` set), ``supersedes`` (and the superseded
    verdict's ``previous_source``) to a verdict; see service/supersede.py."""
    verdict["source"] = source
    if answered is None:
        return
    previous = answered.answer(verdict["record_id"], source)
    verdict["supersedes"] = previous is not None
    if previous is not None:
        verdict["previous_source"] = previous


# Verdict JSON: orjson measured fastest on the worker's verdicts (bench/results/stream_hot_path.json,
# scoring_core.serialisation: orjson, msgspec and json.dumps interleaved in the same run); it writes
# NaN/Infinity as null like the fallback below, and refuses non-string keys (then the fallback).
_encode = orjson.dumps


def dumps(value: Any) -> bytes:
    """Compact JSON. NaN/Infinity are not JSON: they become null rather than an unreadable message.

    The fast encoder (see :data:`_encode`) takes plain JSON types; anything else it refuses (NumPy
    scalars, non-string keys) goes through the standard library's rules as before.
    """
    try:
        return _encode(value)
    except (TypeError, ValueError, OverflowError):
        pass
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(value), separators=(",", ":"), allow_nan=False).encode()


def dumps_many(values: Sequence[Any]) -> list[bytes]:
    """:func:`dumps` of each value; ``b""`` for one that cannot be serialised (the sink then
    dead-letters it as ``serialization_failed`` instead of losing the batch)."""
    out: list[bytes] = []
    for value in values:
        try:
            out.append(_encode(value))
        except (TypeError, ValueError, OverflowError):
            try:
                out.append(dumps(value))
            except (TypeError, ValueError, OverflowError, RecursionError):
                out.append(b"")
    return out


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def score_frame(
    engine: ScoringEngine,
    frame: pd.DataFrame | RecordColumns,
    memory: FacilityMemory,
    recipes: RecipeBook | None = None,
    lines: LineBook | None = None,
) -> list[dict[str, Any]]:
    """Run the shared scoring core on canonical records (online: no backward fill); with
    ``recipes``, add ``on_recipe`` judged against the serving store's version; with ``lines``,
    judge each part at its feedback line."""
    return score_columns(engine, frame, memory, recipes, lines)[0]


def score_columns(
    engine: ScoringEngine,
    frame: pd.DataFrame | RecordColumns,
    memory: FacilityMemory,
    recipes: RecipeBook | None = None,
    lines: LineBook | None = None,
) -> tuple[list[dict[str, Any]], VerdictColumns]:
    """:func:`score_frame`, with the verdicts' columns (what the sink and the metrics read)."""
    batch = engine.score(frame, memory=memory, backward=False)
    judge_with_book(batch, lines, engine.model_version)
    verdicts, columns = to_verdicts_and_columns(frame, batch, engine.model_version)
    if recipes is not None:
        flags = recipes.on_recipe_batch(batch.facility, batch.item, batch.cluster, model_version=engine.model_version)
        for verdict, flag in zip(verdicts, flags):
            verdict["on_recipe"] = flag
        columns = columns.with_recipes(flags.tolist())
    return verdicts, columns


__all__ = ["Pipeline", "SourceMessage", "BatchResult", "ScoredRecord", "FailedRecord", "score_frame", "score_columns",
           "dumps", "dumps_many"]
