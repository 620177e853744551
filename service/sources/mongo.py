"""MongoDB change-stream source (PyMongo's native async API) with resume-token checkpoints.

Reads the production collection with ``watch(full_document="updateLookup")``; inserts, updates
and replaces all yield the full record, deletes and other events only advance the position.

Checkpoint (one document per worker in ``mongo_checkpoint_collection``)::

    {_id: worker_name, source: "mongo", database, collection, resume_token,
     last_timestamp, last_record_id, updated_at}

written only through :meth:`MongoSource.commit`, which the worker calls after Kafka acknowledged
every earlier verdict. ``last_timestamp`` is the record's timestamp field exactly as stored
(BSON date or string), so a backfill query compares like with like.

Lost history: when the server cannot resume from the token (ChangeStreamHistoryLost, an invalid
or missing token) the source counts it, logs an error and backfills from the last processed
record, never silently starting from "now". The backfill follows **insertion order** where it can:
documents with MongoDB's default ``ObjectId`` ``_id`` are read from the highest ``_id`` answered
(``last_oid`` in the checkpoint, less ``backfill_id_margin_s`` for inserting clients whose clocks
differ), so a late record (inserted now with an old timestamp: a buffered machine, a re-sent
batch) is found whatever its timestamp. A collection whose ``_id`` the plant sets itself is
backfilled by timestamp (``backfill_margin_s`` before the last processed record). A new stream is opened *before* the
backfill query, so records inserted during the backfill come through the stream: at-least-once,
nothing missed. While backfilling, checkpoints carry no token, so a crash mid-backfill backfills
again from the last acknowledged record.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import ItemsView, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import bson
import structlog
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError

from model_store.driver_errors import mongo_cause
from model_store.errors import MoldwatchError
from model_store.schema import PlantSchema
from service.backoff import Backoff
from service.config import WorkerSettings
from service.kafka_ping import tcp_diagnosis
from service.metrics import WorkerMetrics
from service.pipeline import SourceMessage
from service.redact import one_line
from service.sources import CheckpointUnavailable, Emit, PositionStore
from service.sources.lease import CheckpointLease, LeaseLost
from service.supersede import event_id, mongo_document_id

if TYPE_CHECKING:
    from aiokafka import TopicPartition  # the rebalance surface of the Source protocol only

log = structlog.get_logger("moldwatch.source.mongo")

RECORD_EVENTS = frozenset({"insert", "update", "replace"})
POSITION_FIELDS = frozenset({"resume_token", "last_timestamp", "start_at_operation_time", "last_oid"})
# Server codes that say "this resume token cannot be resumed from": ChangeStreamHistoryLost,
# ChangeStreamFatalError, InvalidResumeToken.
HISTORY_LOST_CODES = frozenset({286, 280, 260})
# Failures that are about access or the server's state, not about the token: retry as they are.
NOT_ABOUT_THE_TOKEN = frozenset({
    13, 18,  # Unauthorized, AuthenticationFailed
    6, 7, 89, 91, 189, 262, 9001,  # host unreachable / not found, network timeout, shutdown, primary stepped down...
    10107, 11600, 11602, 13435, 13436,  # not primary / interrupted at shutdown / interrupted due to repl state change
})
# How documents are decoded: whatever BSON a server accepts must decode. Dates beyond Python's
# datetime (valid in MongoDB) become DatetimeMS instead of raising; invalid UTF-8 is replaced
# (U+FFFD) instead of raising; everything else has a Python type in the bson package.
RECORD_CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, tzinfo=UTC, datetime_conversion=DatetimeConversion.DATETIME_AUTO,
                            unicode_decode_error_handler="replace")


class ChangeEvent(RawBSONDocument):
    """A change event (or getMore reply) read raw and decoded on first access in one pass of the C
    decoder with :data:`RECORD_CODEC`. Only bytes that do not decode that way are inflated field by
    field (the raw document's own way), their sub-documents staying raw: the one document that
    fails is then isolated, and becomes one dead letter while its event still gives the position.
    (The field-by-field inflation of every event was ~20 % of the worker's event-loop CPU.)

    Built on the raw document's public surface only: ``raw``, and the ``Mapping`` methods it
    inflates through, overridden here (every other ``Mapping`` method goes through these)."""

    __slots__ = ("_fields",)

    def __init__(self, bson_bytes: bytes | memoryview, codec_options: CodecOptions[Any] | None = None) -> None:
        super().__init__(bson_bytes, codec_options)
        self._fields: Mapping[str, Any] | None = None

    def _decoded(self) -> Mapping[str, Any]:
        fields = self._fields
        if fields is None:
            try:
                fields = bson.decode(self.raw, codec_options=RECORD_CODEC)
            except Exception:  # noqa: BLE001 - whatever the decoder trips on, inflate raw and isolate it
                fields = dict(RawBSONDocument.items(self))
            self._fields = fields
        return fields

    def __getitem__(self, key: str) -> Any:
        return self._decoded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())

    def items(self) -> ItemsView[str, Any]:
        return self._decoded().items()


# Change events are read raw: a document that still fails to decode is then one dead letter with
# its event's resume token, not an exception that kills the whole getMore batch (and the reader).
_RAW_CODEC = CodecOptions(document_class=ChangeEvent, tz_aware=True, tzinfo=UTC,
                          datetime_conversion=DatetimeConversion.DATETIME_AUTO, unicode_decode_error_handler="replace")
MAX_RAW_QUOTE = 64 * 1024  # bytes of an undecodable document quoted (hex) in its dead letter
MAX_AWAIT_MS = 500  # an idle getMore waits this long server-side: bounds how long a stop waits for a read
RETRY_BACKOFF_S = (0.2, 10.0)


def token_unusable(exc: BaseException, had_token: bool) -> bool:
    """Whether ``exc`` means the server will not resume from our token (so backfill is needed)."""
    if not isinstance(exc, OperationFailure) or not had_token:
        return False
    if exc.code in HISTORY_LOST_CODES:
        return True
    if exc.has_error_label("ResumableChangeStreamError") or exc.code in NOT_ABOUT_THE_TOKEN:  # noqa: SIM103 - each rule on its own, the last with its why
        return False
    # Refused for a reason of the server's own (older servers and other implementations report
    # bad tokens without these codes): a backfill costs duplicates, a silent restart loses data.
    return True


@dataclass(frozen=True)
class MongoPosition:
    """Where the stream stands after one message: its resume token (None while backfilling) and,
    for a record, the record's raw timestamp and id."""

    token: Mapping[str, Any] | None
    timestamp: Any = None
    record_id: Any = None
    has_record: bool = False
    start_at: Any = None  # cluster time the stream started at (servers that give no initial token)
    oid: ObjectId | None = None  # the document's ObjectId _id (insertion order), None when the plant sets _id


def object_id(document: Mapping[str, Any]) -> ObjectId | None:
    value = document.get("_id")
    return value if isinstance(value, ObjectId) else None


class MongoSettingsError(MoldwatchError):
    """The MongoDB client cannot even be built from the settings (one line, exit 2 at start)."""


def mongo_settings_cause(settings: WorkerSettings, exc: Exception) -> str:
    text = one_line(exc, 300)
    if settings.mongo_tls_certificate_key_file is not None and ("Private key" in text or "PEM" in text):
        return (f"mongo_tls_certificate_key_file {settings.mongo_tls_certificate_key_file}: {text} (expected one PEM "
                "file holding the client key and its certificate; an encrypted key needs "
                "MOLDWATCH_MONGO_TLS_CERTIFICATE_KEY_PASSWORD)")
    if settings.mongo_tls_ca_file is not None and ("CA" in text or "certificate" in text.lower()):
        return f"mongo_tls_ca_file {settings.mongo_tls_ca_file}: {text} (expected a PEM CA bundle)"
    return text


class MongoSource:
    name = "mongo"

    def __init__(self, settings: WorkerSettings, schema: PlantSchema, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.timestamp_field = schema.timestamp
        self.id_field = schema.record_id
        try:
            self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri,
                                                                              **settings.mongo_client_kwargs())
        except ConfigurationError as exc:  # read at construction: TLS files, their password, URI options
            raise MongoSettingsError(f"mongodb: {mongo_settings_cause(settings, exc)}") from None
        database = self.client[settings.mongo_database]
        self.collection = database[settings.mongo_collection].with_options(codec_options=RECORD_CODEC)
        self._raw_collection = database[settings.mongo_collection].with_options(codec_options=_RAW_CODEC)
        self.checkpoints = database[settings.mongo_checkpoint_collection]
        # Exactly-once mode replaces the checkpoint store (the resume token lives in Kafka then).
        self.position_store: PositionStore | None = None
        self.listening = asyncio.Event()
        self._token: Mapping[str, Any] | None = None  # of the last message emitted
        self._last: MongoPosition | None = None  # last record emitted (or the checkpoint's)
        self._after_invalidate = False
        self._start_at: Any = None  # cluster time to open the stream at while there is no token
        self._max_oid: ObjectId | None = None  # highest ObjectId _id emitted (the checkpoint's last_oid)
        # One running worker per name (at-least-once; exactly-once fences twins by transactional id).
        self.lease = CheckpointLease(self.checkpoints, settings.worker_name, settings.lease_ttl_s)
        self._leased = False
        self.standby: str | None = None  # why this worker waits (another holds its name), for readiness

    # -- checkpoint --------------------------------------------------------------------------------
    async def load_checkpoint(self) -> dict[str, Any] | None:
        if self.position_store is not None:
            return await self.position_store.load()
        document = await self.checkpoints.find_one({"_id": self.settings.worker_name})
        if document is not None and not POSITION_FIELDS & document.keys():
            return None  # only the lease (this worker just took its name): no position yet
        return document

    def checkpoint_fields(self, position: MongoPosition) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "source": "mongo",
            "database": self.settings.mongo_database,
            "collection": self.settings.mongo_collection,
            "resume_token": position.token,
            "updated_at": datetime.now(UTC),
        }
        if position.has_record:
            fields["last_timestamp"] = position.timestamp
            fields["last_record_id"] = position.record_id
        if position.oid is not None:
            fields["last_oid"] = position.oid
        if position.start_at is not None:
            fields["start_at_operation_time"] = position.start_at
        return fields

    async def commit(self, positions: list[Any]) -> None:
        if not positions:
            return
        (position,) = self.compact(positions)
        fields = self.checkpoint_fields(position)
        if self.position_store is not None:
            await self.position_store.save(fields)
            return
        if self._leased:  # only while this worker holds its name: a twin's checkpoint is never overwritten
            result = await self.checkpoints.update_one(self.lease.owned(), {"$set": fields})
            if result.matched_count != 1:
                await self.lease.reclaim()  # LeaseLost when a twin holds the name now
                await self.checkpoints.update_one(self.lease.owned(), {"$set": fields})
            return
        await self.checkpoints.update_one({"_id": self.settings.worker_name}, {"$set": fields}, upsert=True)

    def compact(self, positions: list[Any]) -> list[Any]:
        """One position: the newest token, with the newest record's timestamp and id, and the
        highest ObjectId among them (clients' clocks differ: the newest is not always the highest)."""
        last = positions[-1]
        record = next((p for p in reversed(positions) if p.has_record), None)
        oids = [p.oid for p in positions if p.oid is not None]
        oid = max(oids) if oids else None
        if record is None:
            return [last]
        if record is last and oid == last.oid:
            return [last]
        return [MongoPosition(last.token, record.timestamp, record.record_id, True, oid=oid)]

    # A change stream has no consumer offsets and no partitions: the transaction carries the
    # checkpoint as a message (checkpoint_fields), and a rebalance never concerns this source.
    def offsets(self, positions: list[Any]) -> dict[TopicPartition, int]:
        """``{}``: no consumer offsets (exactly-once commits :meth:`checkpoint_fields` instead)."""
        return {}

    def drop(self, positions: list[Any], partitions: set[TopicPartition]) -> list[Any]:
        """``positions`` unchanged: nothing of a change stream is ever revoked."""
        return positions

    async def wait_materialized(self, offsets: dict[tuple[str, int], int], timeout_s: float) -> list[tuple[str, int]]:
        """``[]`` at once: no partitions are handed to another member."""
        return []

    # -- readiness ---------------------------------------------------------------------------------
    async def ping(self) -> str | None:
        if self.standby:
            return self.standby
        try:
            await asyncio.wait_for(self.client.admin.command("ping"), self.settings.ready_timeout_s)
        except TimeoutError:
            cause = f"no ping answer within {self.settings.ready_timeout_s} s"
            # The driver's monitor already knows why it cannot use the server (a TLS certificate it
            # refuses, a connection the server closes) when that failed faster than this ping's
            # timeout: say that rather than guess from a bare TCP connect.
            known = self._server_errors()
            if known:
                return f"mongodb {known}"
            # the driver waits for a server either way: say whether the address refuses, does not
            # resolve, or accepts and stays silent
            diagnosis = "" if self.settings.mongo_uri.startswith("mongodb+srv") else await tcp_diagnosis(
                self.endpoint, min(self.settings.ready_timeout_s, 2.0), 27017,
                "accepts connections but does not answer (server hung, or not a MongoDB server)" if not self.settings.mongo_tls
                else "accepts connections but does not answer (server hung, not a MongoDB server, or no TLS on this "
                     "port while mongo_tls is on)")
            return f"mongodb: {diagnosis} ({cause})" if diagnosis else f"mongodb {self.endpoint}: {cause}"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which
            return f"mongodb {self.endpoint}: {_cause(exc)}"
        return None

    def _server_errors(self) -> str:
        """``host:port: cause`` of each server the driver last failed to reach, ``; ``-joined ('' if none)."""
        try:
            servers = self.client.topology_description.server_descriptions()
        except Exception:  # noqa: BLE001 - no topology yet (client not opened): nothing known
            return ""
        return "; ".join(f"{host}:{port}: {_cause(sd.error)}" for (host, port), sd in servers.items()
                         if sd.error is not None)

    @property
    def endpoint(self) -> str:
        """The server(s) of the URI, ``host:port`` (credentials never included)."""
        return mongo_hosts(self.settings.mongo_uri)

    async def close(self) -> None:
        if self._leased:  # after the last checkpoint (the worker closes the source last): a twin may go on now
            self._leased = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.lease.release(), 2)
        await self.client.close()

    # -- reading -----------------------------------------------------------------------------------
    async def run(self, emit: Emit) -> None:
        if self.position_store is not None:
            await self._read(emit)
            return
        await self._acquire_lease()
        tasks = {asyncio.ensure_future(self._keep_lease()), asyncio.ensure_future(self._read(emit))}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # LeaseLost, or what reading raised
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _acquire_lease(self) -> None:
        told = False
        while not await self._retry("take the worker's lease", self.lease.try_acquire):
            self.standby = self.lease.waiting_text()
            if not told:
                log.warning("another worker holds this worker's name; waiting", worker=self.settings.worker_name,
                            holder=self.lease.holder.describe() if self.lease.holder else None)
                told = True
            await asyncio.sleep(self.lease.ttl.total_seconds() / 3)
        self.standby = None
        self._leased = True
        if told:
            log.info("took over this worker's name", worker=self.settings.worker_name)

    async def _keep_lease(self) -> None:
        every = self.lease.ttl.total_seconds() / 3
        while True:
            await asyncio.sleep(every)
            try:
                await self.lease.renew()
            except LeaseLost:
                log.error("lease lost: another worker took this worker's name; stopping", worker=self.settings.worker_name)
                raise
            except PyMongoError as exc:  # renewed at the next turn; if the outage outlasts the lease, a twin may take it
                log.warning("lease not renewed", error=_one_line(exc))

    async def _read(self, emit: Emit) -> None:
        checkpoint = await self._retry("read checkpoint", self.load_checkpoint)
        backfill = self._plan(checkpoint)
        backoff = Backoff(*RETRY_BACKOFF_S)
        first_start = True
        if checkpoint is None and not backfill:
            # The server's clock before the stream opens: if the stream gives no initial token
            # (some servers only give one with the first event), this is the position to persist.
            self._start_at = await self._retry("read the cluster time", self._operation_time)
        while True:
            if backfill:
                self._token = None  # resume from the backfill's new stream, never from a refused token
            had_token = self._token is not None
            try:
                # After an invalidate event only startAfter may pass it (resumeAfter is refused).
                after_invalidate, self._after_invalidate = self._after_invalidate, False
                stream = await self._raw_collection.watch(
                    full_document="updateLookup",
                    resume_after=self._token if had_token and not after_invalidate else None,
                    start_after=self._token if had_token and after_invalidate else None,
                    start_at_operation_time=self._start_at if not had_token and not backfill else None,
                    max_await_time_ms=MAX_AWAIT_MS,
                    batch_size=self.settings.batch_size,
                )
                async with stream:
                    if self._token is None:
                        # The stream's start (a real server's post-batch token): reconnecting from
                        # here after a network error loses nothing even before the first event.
                        self._token = _plain(stream.resume_token)
                    if first_start and checkpoint is None and not backfill and (self._token or self._start_at):
                        # No gap before the first checkpoint: the starting position is persisted
                        # before the worker reports ready, so a crash right after start resumes
                        # here instead of at the end of the stream (losing what came meanwhile).
                        start = MongoPosition(self._token, start_at=None if self._token else self._start_at)
                        await self._retry("write the starting checkpoint", partial(self.commit, [start]))
                        log.info("starting position checkpointed", worker=self.settings.worker_name,
                                 by="resume token" if self._token else "cluster time")
                    first_start = False
                    self.listening.set()
                    if backfill:
                        # Stream first, then the query: whatever is inserted meanwhile is in the
                        # stream. Backfilled positions carry no token (see the module doc).
                        await self._backfill(emit)
                        backfill = False
                    backoff.reset()
                    await self._follow(stream, emit)
            except PyMongoError as exc:
                if token_unusable(exc, had_token):
                    self.metrics.history_lost.inc()
                    log.error("change stream cannot resume from the checkpointed token; backfilling by timestamp",
                              error=_one_line(exc), code=getattr(exc, "code", None), since=_text(self._since()))
                    backfill = True
                    self._token = None
                    continue
                self.metrics.source_errors.labels(self.name).inc()
                pause = backoff.next()
                log.warning("change stream interrupted, reconnecting", error=_one_line(exc), retry_in_s=pause)
                if self._token is None and self._last is not None:
                    backfill = True  # no token to resume from (server gave none): the timestamp is our position
                await asyncio.sleep(pause)

    def _plan(self, checkpoint: Mapping[str, Any] | None) -> bool:
        """Restore the position; return whether a backfill is needed before following the stream."""
        if checkpoint is None:
            if self.settings.start_from == "beginning":
                log.info("no checkpoint: reading the whole collection first", collection=self.settings.mongo_collection)
                return True
            log.info("no checkpoint: starting at the current end of the change stream",
                     collection=self.settings.mongo_collection, worker=self.settings.worker_name)
            return False
        self._token = checkpoint.get("resume_token")
        if self._token is None and checkpoint.get("start_at_operation_time") is not None and "last_timestamp" not in checkpoint:
            self._start_at = checkpoint["start_at_operation_time"]
            log.info("resuming change stream from the checkpointed start time", updated_at=_text(checkpoint.get("updated_at")))
            return False
        if "last_timestamp" in checkpoint:
            self._last = MongoPosition(self._token, checkpoint.get("last_timestamp"), checkpoint.get("last_record_id"), True)
        if isinstance(checkpoint.get("last_oid"), ObjectId):
            self._max_oid = checkpoint["last_oid"]
        if self._token is None:
            self.metrics.history_lost.inc()
            log.error("checkpoint has no resume token; backfilling from the last processed record",
                      by="insertion order (_id)" if self._max_oid is not None else "timestamp", since=_text(self._since()))
            return True
        log.info("resuming change stream from checkpoint", updated_at=_text(checkpoint.get("updated_at")))
        return False

    async def _operation_time(self) -> Any:
        reply = await self.client.admin.command("ping")
        return reply.get("operationTime") if isinstance(reply, Mapping) else None

    def _since(self) -> Any:
        return self._last.timestamp if self._last is not None else None

    async def _backfill(self, emit: Emit) -> None:
        if self._max_oid is not None:
            await self._backfill_by_insertion(emit, self._max_oid)
            return
        since = self._since()
        query: dict[str, Any] = {}
        if since is not None:
            start = since
            margin = self.settings.backfill_margin_s
            if margin and isinstance(since, datetime):
                start = since - timedelta(seconds=margin)
            query = {self.timestamp_field: {"$gte": start}}
        skip_id = self._last.record_id if self._last is not None else None
        count = 0
        started = time.monotonic()
        cursor = self.collection.find(query).sort([(self.timestamp_field, ASCENDING), ("_id", ASCENDING)])
        async for document in cursor.batch_size(self.settings.batch_size):
            ts, record_id = document.get(self.timestamp_field), document.get(self.id_field)
            if since is not None and ts == since and record_id == skip_id:
                continue  # the last record already processed
            position = MongoPosition(None, ts, record_id, True, oid=object_id(document))
            self._remember(position)
            await emit(SourceMessage(document, position, source=backfill_source(document)))
            count += 1
        self.metrics.backfilled.inc(count)
        log.info("backfill finished", records=count, seconds=round(time.monotonic() - started, 3), since=_text(since))

    async def _backfill_by_insertion(self, emit: Emit, last_oid: ObjectId) -> None:
        """Every document inserted after ``last_oid`` (less the clock margin), in ``_id`` order,
        whatever its timestamp; the one answered last is skipped."""
        margin = timedelta(seconds=self.settings.backfill_id_margin_s)
        start = ObjectId.from_datetime(last_oid.generation_time - margin) if margin else last_oid
        count = 0
        started = time.monotonic()
        cursor = self.collection.find({"_id": {"$gte": start}}).sort([("_id", ASCENDING)])
        async for document in cursor.batch_size(self.settings.batch_size):
            oid = object_id(document)
            if oid == last_oid:
                continue  # answered last
            position = MongoPosition(None, document.get(self.timestamp_field), document.get(self.id_field), True, oid=oid)
            self._remember(position)
            await emit(SourceMessage(document, position, source=backfill_source(document)))
            count += 1
        self.metrics.backfilled.inc(count)
        log.info("backfill finished", records=count, seconds=round(time.monotonic() - started, 3), by="insertion order",
                 since_oid=str(start))

    def _remember(self, position: MongoPosition) -> None:
        self._last = position
        if position.oid is not None and (self._max_oid is None or position.oid > self._max_oid):
            self._max_oid = position.oid

    async def _follow(self, stream: Any, emit: Emit) -> None:
        idle_marker_at = time.monotonic()
        while stream.alive:
            change = await stream.try_next()
            if change is None:
                self.metrics.stream_lag.labels(self.name).set(0.0)  # caught up: nothing is waiting
                # Idle: the post-batch resume token moves on even without events; checkpointing
                # it keeps the token inside the oplog window of a quiet collection.
                token = _plain(stream.resume_token)
                if token is not None and token != self._token and self._last_emit_due(idle_marker_at):
                    idle_marker_at = time.monotonic()
                    self._token = token
                    await emit(SourceMessage(None, MongoPosition(token), marker=True))
                continue
            self._token = _plain(change["_id"])
            event_time = _event_time(change)
            if event_time is not None:
                self.metrics.child(self.metrics.stream_lag, self.name).set(max(0.0, time.time() - event_time))
            document, error = decode_document(change.get("fullDocument"))
            if error is not None:
                # Undecodable even with the lenient codec: one dead letter, the stream moves on.
                position = MongoPosition(self._token)
                await emit(SourceMessage(document, position, event_time=event_time, error=error,
                                         source=change_source(change, self._token, None)))
            elif change.get("operationType") in RECORD_EVENTS and isinstance(document, Mapping):
                position = MongoPosition(self._token, document.get(self.timestamp_field), document.get(self.id_field), True,
                                         oid=object_id(document))
                self._remember(position)
                await emit(SourceMessage(document, position, event_time=event_time,
                                         source=change_source(change, self._token, document)))
            else:
                # Deletes, drops, or an update whose document is gone by lookup time: no record, but
                # the position moves.
                await emit(SourceMessage(None, MongoPosition(self._token), marker=True))
            if change.get("operationType") == "invalidate":
                log.warning("change stream invalidated (collection dropped or renamed); reopening after it")
                self._after_invalidate = True
                return

    def _last_emit_due(self, since: float) -> bool:
        return time.monotonic() - since >= max(self.settings.checkpoint_interval_s, 1.0)

    async def _retry(self, what: str, call: Any) -> Any:
        backoff = Backoff(*RETRY_BACKOFF_S)
        while True:
            try:
                return await call()
            except (PyMongoError, CheckpointUnavailable, OSError) as exc:
                self.metrics.source_errors.labels(self.name).inc()
                pause = backoff.next()
                log.warning(f"mongodb: cannot {what}, retrying", server=self.endpoint, error=_cause(exc), retry_in_s=pause)  # noqa: G004 - structlog renders the event once: no deferred %-formatting to keep
                await asyncio.sleep(pause)


def decode_document(raw: Any) -> tuple[Any, str | None]:
    """``(document, None)``, or ``(quote, error)`` when the raw BSON does not decode: the quote
    holds the document's size and its first bytes (hex) for the dead letter."""
    if not isinstance(raw, RawBSONDocument):
        return raw, None
    try:
        return bson.decode(raw.raw, codec_options=RECORD_CODEC), None
    except Exception as exc:  # noqa: BLE001 - whatever the decoder trips on, the stream must move on
        data = bytes(raw.raw)
        quote = {"$undecodable_bson_size": len(data), "$undecodable_bson_hex": data[:MAX_RAW_QUOTE].hex()}
        return quote, f"BSON document does not decode: {type(exc).__name__}: {str(exc)[:200]}"


def _plain(token: Any) -> Any:
    """A resume token as a plain dict (it is stored in checkpoints and compared)."""
    if isinstance(token, RawBSONDocument):
        return bson.decode(token.raw, codec_options=RECORD_CODEC)
    return token


def mongo_hosts(uri: str) -> str:
    """``host:port[,host:port]`` of a MongoDB URI, without credentials, path or options."""
    _, sep, rest = uri.partition("://")
    if not sep:
        return "?"
    rest = rest[rest.rfind("@") + 1:]
    hosts = rest.split("/", 1)[0].split("?", 1)[0]
    return ",".join(h if (":" in h and not h.endswith("]")) or uri.startswith("mongodb+srv") else f"{h}:27017"
                    for h in hosts.split(",") if h) or "?"


def _cause(exc: BaseException) -> str:
    """A driver error as its cause first (connection refused, ...), then its first line without
    the topology dump, credentials scrubbed (readiness reasons)."""
    return mongo_cause(one_line(exc, 400))


def _event_time(change: Mapping[str, Any]) -> float | None:
    # wallTime first (MongoDB 6.0+, milliseconds): the cluster time counts whole seconds, too
    # coarse for an end-to-end latency measured against a 100 ms objective.
    wall = change.get("wallTime")
    if isinstance(wall, datetime):
        return (wall if wall.tzinfo else wall.replace(tzinfo=UTC)).timestamp()
    cluster = change.get("clusterTime")
    if isinstance(cluster, Timestamp):
        return float(cluster.time)
    return None


def change_source(change: Mapping[str, Any], token: Any, document: Mapping[str, Any] | None) -> dict[str, Any]:
    """A change event's position as a verdict's ``source`` (service/supersede.py).

    The document id is the full document's ``_id`` (the ``documentKey`` of an update is not
    always the plain ``{_id: ...}`` on every server), else the event's ``documentKey._id``.
    """
    cluster = change.get("clusterTime")
    doc_id = document.get("_id") if isinstance(document, Mapping) else None
    if doc_id is None:
        with contextlib.suppress(Exception):  # an odd key never costs the record its verdict
            key = change.get("documentKey")
            doc_id = key.get("_id") if isinstance(key, Mapping) else None
    return {
        "kind": "mongodb",
        "operation": str(change.get("operationType")),
        "cluster_time": {"t": cluster.time, "i": cluster.inc} if isinstance(cluster, Timestamp) else None,
        "event_id": event_id(token),
        "document_id": mongo_document_id(doc_id),
    }


def backfill_source(document: Mapping[str, Any]) -> dict[str, Any]:
    """A backfilled document's ``source``: read by query after lost history, so it has no change
    event: no cluster time, no event id (consumers order it by ``scored_at``)."""
    return {"kind": "mongodb", "operation": "backfill", "cluster_time": None, "event_id": None,
            "document_id": mongo_document_id(document.get("_id"))}


def _one_line(exc: BaseException) -> str:
    return one_line(exc)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


__all__ = ["MongoSource", "MongoPosition", "token_unusable"]
