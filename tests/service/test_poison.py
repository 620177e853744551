"""No record can stop the stream: every document a MongoDB server accepts becomes exactly one verdict
or one bounded dead letter, and the records after it keep flowing.

Pure parts (decoder bounds, bounded dead letters, the sink's permanent/retriable split, order under
failed sends) run without servers; the poison suite runs the worker against the real Kafka broker
and MongoDB-protocol server with hypothesis-generated documents plus the named cases.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC
from typing import Any

import bson
import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from bson import Binary, Code, Decimal128, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.codec_options import CodecOptions
from bson.datetime_ms import DatetimeMS
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pymongo import AsyncMongoClient

from service.config import WorkerSettings
from service.decode import MAX_NAME_LENGTH, DeadLetter, RecordDecoder
from service.metrics import WorkerMetrics
from service.pipeline import BatchResult, ScoredRecord, SourceMessage
from service.sink import MAX_QUOTED_DOCUMENT, KafkaSink, dead_letter_value
from service.sources.mongo import _RAW_CODEC, ChangeEvent, _plain, decode_document
from tests.support.fake_producer import FakeProducer
from tests.support.worker_helpers import plant_documents, read_topic, running_worker, unique, values, worker_settings

MB = 1024 * 1024


def settings(**overrides: Any) -> WorkerSettings:
    return WorkerSettings(_env_file=None, **overrides)  # type: ignore[call-arg]


# -- generated BSON ------------------------------------------------------------------------------
_text = st.text(max_size=40)
_cstring = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12)
_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=10)
BSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), _text,
    st.binary(max_size=16).map(lambda b: Binary(b, 0)),
    st.integers(-(2**62), 2**62).map(DatetimeMS),  # most of these are outside Python's datetime
    st.datetimes(timezones=st.just(UTC)),
    st.builds(ObjectId),
    st.sampled_from([Decimal128("1.5"), Decimal128("NaN"), Decimal128("-Infinity"), Decimal128("1E+6000"), Decimal128("-0")]),
    st.just(MinKey()), st.just(MaxKey()), st.builds(Regex, _cstring), st.builds(Code, _text),
    st.builds(Timestamp, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
    st.integers(-(2**63), 2**63 - 1).map(Int64),
    st.integers(1, 3).map(lambda n: "x" * (n * 400)),  # over the identifying-field bound
)
BSON_VALUES = st.recursive(BSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
                           max_leaves=8)


def overrides(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Some of the plant's own fields replaced by arbitrary BSON, plus a few unknown fields."""
    return st.fixed_dictionaries({}, optional=dict.fromkeys(fields, BSON_VALUES)).flatmap(
        lambda known: st.dictionaries(_keys.map(lambda k: "x_" + k), BSON_VALUES, max_size=3).map(lambda extra: {**known, **extra}))


def as_read(document: dict[str, Any]) -> Any:
    """The document as the worker reads it from MongoDB (BSON round trip, lenient codec)."""
    return decode_document(RawBSONDocument(bson.encode(document)))[0]


# -- decoder bounds --------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["record_id", "facility", "item", "maker_column"])
def test_identifying_fields_over_the_bound_are_dead_letters_naming_their_length(role, small_plant):
    schema = small_plant.schema
    document = plant_documents(small_plant, 1, "bound")[0]
    decoder = RecordDecoder(schema)
    document[getattr(schema, role)] = "x" * MAX_NAME_LENGTH
    assert not isinstance(decoder.decode(document), DeadLetter) or role == "maker_column"  # at the bound: fine
    document[getattr(schema, role)] = "x" * MB
    letter = decoder.decode(document)
    assert isinstance(letter, DeadLetter) and letter.reason == "invalid_field"
    assert f"{MB} characters long" in letter.error and len(letter.error) < 400


def test_dates_beyond_pythons_range_decode_and_only_matter_where_used(small_plant):
    schema = small_plant.schema
    decoder = RecordDecoder(schema)
    document = plant_documents(small_plant, 1, "dates")[0]
    unused = as_read({**document, "x_far": DatetimeMS(2**62), "x_past": DatetimeMS(-(2**62))})
    assert isinstance(unused["x_far"], DatetimeMS)
    assert not isinstance(decoder.decode(unused), DeadLetter)
    used = decoder.decode(as_read({**document, schema.timestamp: DatetimeMS(2**62)}))
    assert isinstance(used, DeadLetter) and used.reason == "invalid_field" and "outside the supported range" in used.error


def test_invalid_utf8_decodes_with_replacement_characters():
    raw = bson.encode({"_id": "u", "s": "MARK"}).replace(b"MARK", b"\xff\xfeAB")
    with pytest.raises(bson.errors.InvalidBSON):
        bson.decode(raw)  # the strict default: what used to crash the reader
    document, error = decode_document(RawBSONDocument(raw, CodecOptions(document_class=RawBSONDocument)))
    assert error is None and document["s"] == "\ufffd\ufffdAB"


def _undecodable(document: dict[str, Any]) -> bytes:
    """``document`` as BSON with its field ``bad`` given an element type that does not exist."""
    raw = bytearray(bson.encode(document))
    at = raw.find(b"\x01bad\x00")
    raw[at] = 0x7E
    return bytes(raw)


def test_a_getmore_batch_decodes_in_one_pass_and_an_undecodable_document_is_isolated():
    good = {"_id": {"_data": "t1"}, "operationType": "insert", "fullDocument": {"_id": 1, "s": "ok", "v": 1.5}}
    bad_event = _undecodable({"_id": {"_data": "t2"}, "operationType": "insert",
                              "fullDocument": {"_id": 2, "bad": 2.5, "s": "x"}})
    # A getMore reply as the server sends it: cursor.nextBatch holds the events, one of them bad.
    batch = bson.encode({"cursor": {"nextBatch": [good, RawBSONDocument(bad_event)], "id": 0}, "ok": 1.0})
    events = ChangeEvent(batch, _RAW_CODEC)["cursor"]["nextBatch"]
    assert len(events) == 2
    first, second = events
    assert first["_id"] == {"_data": "t1"} and decode_document(first["fullDocument"]) == (good["fullDocument"], None)
    assert _plain(second["_id"]) == {"_data": "t2"} and second["operationType"] == "insert"  # the position survives
    quote, error = decode_document(second["fullDocument"])
    assert error is not None and error.startswith("BSON document does not decode") and quote["$undecodable_bson_size"] > 0
    # a whole event that decodes is plain data at once: no raw sub-documents left to inflate
    assert type(ChangeEvent(bson.encode(good), _RAW_CODEC)["fullDocument"]) is dict


# -- bounded dead letters ----------------------------------------------------------------------------
@hsettings(max_examples=60, deadline=None)
@given(size=st.integers(0, 3 * MB), width=st.integers(1, 5000))
def test_dead_letters_are_bounded_and_identify_the_original(size, width):
    document = {"_id": "d", "blob": "y" * size, "many": ["z" * width] * 3}
    value = dead_letter_value(DeadLetter("invalid_field", "e" * 10_000, document), "w", "v")
    letter = json.loads(value)
    assert len(value) <= MAX_QUOTED_DOCUMENT + 4096
    full = bson.json_util.dumps(document, json_options=bson.json_util.RELAXED_JSON_OPTIONS).encode()
    assert letter["original_size"] == len(full) and letter["original_sha256"] == hashlib.sha256(full).hexdigest()
    assert letter["truncated"] is (len(full) > MAX_QUOTED_DOCUMENT)
    assert letter["document"]["_id"] == "d" or "$text" in letter["document"]
    assert len(letter["error"]) <= 2000


# -- the pipeline: one outcome per generated document -------------------------------------------------
@hsettings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_generated_document_gets_exactly_one_verdict_or_dead_letter(data, trained_store, small_plant):
    from model_store.serving.scoring import ScoringEngine
    from model_store.serving.store import open_store
    from service.pipeline import Pipeline

    global _PIPELINE
    if "_PIPELINE" not in globals():
        _PIPELINE = Pipeline(ScoringEngine(open_store(trained_store)))
    schema = small_plant.schema
    base = plant_documents(small_plant, 5, "gen")
    fields = [schema.record_id, schema.timestamp, schema.facility, schema.item, schema.maker_column, schema.lot_date,
              *schema.numeric_fields[:6]]
    documents = [as_read({**doc, **data.draw(overrides(fields))}) for doc in base]
    result = _PIPELINE.run_batch([SourceMessage(d) for d in documents])
    assert len(result.scored) + len(result.failed) == len(documents)
    for scored in result.scored:
        assert len(scored.payload) < 64 * 1024  # identifying fields are bounded: verdicts stay small


# -- the sink: permanent errors become dead letters, retriable ones keep order ------------------------
def _batch(verdicts: list[dict[str, Any]]) -> BatchResult:
    return BatchResult([ScoredRecord(v, 0.0, 0.0) for v in verdicts], [], "v1")


class RecordingProducer(FakeProducer):
    """A producer that refuses a batch holding a record in ``refuse`` (permanent: too large) and
    stalls a batch holding one in ``stall`` (retriable, once)."""

    def __init__(self, refuse: set[str] = frozenset(), stall: set[str] = frozenset()) -> None:
        self.refuse, self.stall = set(refuse), set(stall)
        self.written: list[tuple[str, bytes]] = []
        self.batches: list[int] = []  # size of every batch handed over

    async def deliver(self, topic: str, messages: list[tuple[bytes | None, bytes]]) -> asyncio.Future[Any]:
        records = {json.loads(value).get("record_id") for _, value in messages} if topic.endswith("verdicts") else set()
        if records & self.refuse:
            raise MessageSizeTooLargeError()
        if records & self.stall:
            self.stall -= records
            raise KafkaTimeoutError()  # e.g. a hung broker: the batch never entered the producer
        self.batches.append(len(messages))
        self.written.extend((topic, value) for _, value in messages)
        return self.settled()


async def test_a_verdict_over_the_message_limit_is_dead_lettered_not_retried():
    sink = KafkaSink(settings(kafka_max_message_bytes=20_000), WorkerMetrics())
    producer = sink.producer = RecordingProducer()  # type: ignore[assignment]
    verdicts = [{"record_id": "a", "facility": "F1", "anomaly": True, "blob": "b" * 50_000},
                {"record_id": "b", "facility": "F1", "anomaly": False}]
    delivery = await sink.add_batch(_batch(verdicts))
    await asyncio.wait_for(sink.flush(delivery), 5)
    topics = [t for t, _ in producer.written]
    assert topics == ["moldwatch.dead-letters", "moldwatch.verdicts"]  # no alarm copy of the refused verdict
    letter = json.loads(producer.written[0][1])
    assert letter["reason"] == "message_too_large" and "exceeds the Kafka message limit of 20000" in letter["error"]
    assert letter["document"]["record_id"] == "a" and letter["truncated"] is False
    assert delivery.dead_lettered == {0: "message_too_large"}


async def test_a_message_the_producer_refuses_permanently_becomes_a_dead_letter_and_the_rest_flows():
    sink = KafkaSink(settings(), WorkerMetrics())
    producer = sink.producer = RecordingProducer(refuse={"r2"})  # type: ignore[assignment]
    delivery = await sink.add_batch(_batch([{"record_id": f"r{i}", "facility": "F", "anomaly": False} for i in range(5)]))
    await asyncio.wait_for(sink.flush(delivery), 5)
    verdicts = [json.loads(v)["record_id"] for t, v in producer.written if t.endswith("verdicts")]
    letters = [json.loads(v) for t, v in producer.written if t.endswith("dead-letters")]
    assert verdicts == ["r0", "r1", "r3", "r4"]
    assert [(d["reason"], d["document"]["record_id"]) for d in letters] == [("message_too_large", "r2")]


@hsettings(max_examples=40, deadline=None)
@given(stalled=st.sets(st.integers(0, 29), max_size=6))
async def test_a_send_that_timed_out_is_never_overtaken_by_newer_verdicts(stalled):
    sink = KafkaSink(settings(), WorkerMetrics())
    producer = sink.producer = RecordingProducer(stall={f"r{i}" for i in stalled})  # type: ignore[assignment]
    sink.new_producer = lambda: producer
    deliveries = []
    for start in range(0, 30, 10):  # three batches in flight, like the worker's committer sees them
        deliveries.append(await sink.add_batch(_batch([{"record_id": f"r{i}", "facility": "F", "anomaly": False}
                                                       for i in range(start, start + 10)])))
    for delivery in deliveries:
        await asyncio.wait_for(sink.flush(delivery, timeout_s=30), 30)
    assert [json.loads(v)["record_id"] for _, v in producer.written] == [f"r{i}" for i in range(30)]


# -- the real broker refuses an oversized message: dead letter, order kept -----------------------------
@pytest.mark.servers
async def test_the_broker_refusing_a_message_dead_letters_it_and_later_verdicts_follow(kafka_server):
    name = unique("refused")
    # A limit above the broker's own (~1 MB): the producer lets the message through, the broker refuses it.
    config = settings(kafka_bootstrap_servers=kafka_server.bootstrap_servers, kafka_verdicts_topic=f"{name}.v",
                      kafka_alarms_topic=f"{name}.a", kafka_dead_letters_topic=f"{name}.d", kafka_max_message_bytes=3 * MB)
    sink = KafkaSink(config, WorkerMetrics())
    await sink.setup()
    try:
        verdicts = [{"record_id": f"r{i}", "facility": "F1", "anomaly": False} for i in range(6)]
        verdicts[2]["blob"] = "z" * (2 * MB)
        delivery = await sink.add_batch(_batch(verdicts))
        await asyncio.wait_for(sink.flush(delivery), 60)
    finally:
        await sink.close()
    out = values(await read_topic(kafka_server.bootstrap_servers, f"{name}.v", 5))
    assert [v["record_id"] for v in out] == ["r0", "r1", "r3", "r4", "r5"]
    (letter,) = values(await read_topic(kafka_server.bootstrap_servers, f"{name}.d", 1))
    assert letter["reason"] == "message_too_large" and letter["truncated"] is True
    assert letter["original_size"] > 2 * MB and len(letter["original_sha256"]) == 64


# -- the poison suite against the real servers -------------------------------------------------------
def _named_cases(schema: Any, base: list[dict[str, Any]], tag: str) -> list[tuple[str, Any]]:
    """(case, document to insert): the failures that used to stop the stream, and exotic BSON."""
    numeric = schema.numeric_fields[0]

    def doc(i: int, **fields: Any) -> dict[str, Any]:
        return {**base[i], "_id": f"{tag}-n{i}", schema.record_id: f"{tag}-n{i}", **fields}

    utf8 = bson.encode(doc(8, x_note="MARKER")).replace(b"MARKER", b"\xff\xfe\xfdABC")
    lenient = CodecOptions(document_class=RawBSONDocument, unicode_decode_error_handler="replace")
    deep: Any = "bottom"
    for _ in range(40):
        deep = {"d": deep}
    return [
        ("1 MB record id", doc(0, **{schema.record_id: "r" * MB})),
        ("1 MB facility", doc(1, **{schema.facility: "f" * MB})),
        ("1 MB item", doc(2, **{schema.item: "i" * MB})),
        ("1 MB maker", doc(3, **{schema.maker_column: "m" * MB})),
        ("timestamp beyond year 9999", doc(4, **{schema.timestamp: DatetimeMS(2**62)})),
        ("unused date before year 1", doc(5, x_when=DatetimeMS(-(2**62)))),
        ("unused date in year ~11000", doc(6, x_when=DatetimeMS(300_000_000_000_000))),
        ("1 MB numeric string", doc(7, **{numeric: "9" * MB})),
        ("invalid UTF-8", RawBSONDocument(utf8, lenient)),
        ("2 MB unused field", doc(9, x_blob="b" * (2 * MB))),
        ("Decimal128 beyond float", doc(10, **{numeric: Decimal128("1E+6000")})),
        ("exotic types in a numeric field", doc(11, **{numeric: Regex("a.*", "i")})),
        ("code, keys, timestamps", doc(12, x_code=Code("x = 1"), x_min=MinKey(), x_max=MaxKey(), x_ts=Timestamp(5, 1))),
        ("deeply nested", doc(13, x_deep=deep)),
        ("Int64 and ObjectId", doc(14, **{numeric: Int64(7)}, x_oid=ObjectId())),
    ]


@pytest.mark.servers
@pytest.mark.slow
@pytest.mark.timeout(600)  # the first test of a session also trains the shared store
@hsettings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck), database=None,
           phases=[Phase.generate])  # one generated set per run; shrinking would re-run the worker many times
@given(data=st.data())
async def test_poison_suite_every_document_gets_one_outcome_and_the_stream_keeps_moving(
    data, mongo_server, kafka_server, trained_store, small_plant
):
    name = unique("poison")
    schema = small_plant.schema
    settings_ = worker_settings(mongo_server, kafka_server, trained_store, name)
    base = plant_documents(small_plant, 200, name)
    # The record id stays unique (outcomes are matched by it); the named cases cover a bad one.
    fields = [schema.timestamp, schema.facility, schema.item, schema.maker_column, schema.lot_date, *schema.numeric_fields[:6]]
    cases = _named_cases(schema, base, name)
    generated = []
    for i in range(40):
        document = {**base[20 + i], **data.draw(overrides(fields))}
        document["_id"] = document[schema.record_id] = f"{name}-g{i}"
        generated.append(document)
    good = base[100:]
    client = AsyncMongoClient(mongo_server.uri)
    try:
        async with running_worker(settings_) as worker:
            collection = client[settings_.mongo_database][settings_.mongo_collection]
            await collection.insert_many(good[:20])
            for _, document in cases:
                await collection.insert_one(document)
            for document in generated:
                await collection.insert_one(document)
            await collection.insert_many(good[20:])
            expected = len(good) + len(cases) + len(generated)
            verdicts = await read_topic(kafka_server.bootstrap_servers, settings_.kafka_verdicts_topic, len(good))
            letters: list[Any] = []

            async def outcomes() -> int:
                nonlocal verdicts, letters
                verdicts = await read_topic(kafka_server.bootstrap_servers, settings_.kafka_verdicts_topic, 0, timeout=2)
                letters = await read_topic(kafka_server.bootstrap_servers, settings_.kafka_dead_letters_topic, 0, timeout=2)
                return len(verdicts) + len(letters)

            deadline = asyncio.get_running_loop().time() + 90
            while await outcomes() < expected and asyncio.get_running_loop().time() < deadline:
                pass
            assert worker.liveness()[0]
    finally:
        await client.close()
    limit = settings_.kafka_max_message_bytes
    assert all(len(m.value) <= limit for m in verdicts + letters)
    keys = [v["record_id"] for v in values(verdicts)] + [d["document"].get("_id") for d in values(letters)]
    ids = [d[schema.record_id] for d in good] + [f"{name}-n{i}" for i in range(len(cases))] + [d["_id"] for d in generated]
    assert sorted(map(str, keys)) == sorted(ids)  # exactly one outcome each, none for anything else
    reasons = {d["document"].get("_id"): d["reason"] for d in values(letters)}
    for i in (0, 1, 2, 3, 4, 7):
        assert reasons[f"{name}-n{i}"] == "invalid_field", cases[i][0]
    for i in (5, 6, 8, 9, 12, 13, 14):
        assert f"{name}-n{i}" not in reasons, cases[i][0]  # exotic but valid: a verdict
