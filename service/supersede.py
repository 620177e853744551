"""Which verdict replaces which: the source position a verdict carries, and a bounded memory of the
record ids this worker has answered.

Every verdict of the stream carries ``source``, where its record was read (built by the source
adapter, :mod:`service.sources`)::

    {"kind": "mongodb", "operation": "insert" | "update" | "replace" | "backfill",
     "cluster_time": {"t": <s>, "i": <n>} | null, "event_id": <resume token _data> | null,
     "document_id": <ObjectId hex, or the plant's own _id>}
    {"kind": "kafka", "topic": ..., "partition": ..., "offset": ..., ["operation": ...]}
    {"kind": "http"}                                  (POST /score: answered, not published)

``cluster_time`` is MongoDB's own ``Timestamp`` split into seconds and increment, not one int:
``t << 32 | i`` is above 2**53, where JavaScript JSON parsers silently round. Positions order as
(t, i) for MongoDB (one replica set's oplog is totally ordered) and by offset within one Kafka
partition (the partition key is the facility, so a shot's records share a partition).

A verdict for a record id this worker already answered from *another* position is marked
``"supersedes": true`` with ``previous_source`` (the earlier verdict's ``source``): an update in
place, a replace, or the same shot id inserted twice. The memory is per process and bounded
(``supersede_memory`` ids, least recently answered forgotten first), so after a restart, or for an
id answered by another worker of the group, ``supersedes`` is false: the durable signals are
``source.operation`` (update/replace) and the position itself; consumers keep, per record id, the
verdict with the greatest position.

Replays are not supersedes: a record read again at the same position (a batch re-scored after
the store broke under it, a partition re-read after a rebalance) gets the same ``supersedes`` and
``previous_source`` as the first time, and one read again at an *older* position than the last
one answered for its id (a Kafka partition re-read from its committed offset) supersedes nothing.
After a crash the memory is empty, so a replay there is never marked either.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

HTTP_SOURCE: Mapping[str, Any] = {"kind": "http"}  # shared and never mutated: one object for every POST /score
MAX_ID_TEXT = 256  # a plant-set _id quoted in document_id is cut here (identifying fields are bounded)


def _rank(source: Mapping[str, Any]) -> tuple[tuple[Any, ...], Any] | None:
    """``(stream, order)``: positions of one stream compare by ``order``; None when the position
    has no order (a backfilled document, read by query rather than from the change stream)."""
    kind = source.get("kind")
    if kind == "mongodb":
        ct = source.get("cluster_time")
        if isinstance(ct, Mapping):
            return ("mongodb",), (ct.get("t", 0), ct.get("i", 0))
        return None
    if kind == "kafka":
        return ("kafka", source.get("topic"), source.get("partition")), source.get("offset", -1)
    return None


def is_older(source: Mapping[str, Any], than: Mapping[str, Any]) -> bool:
    """Whether ``source`` is a position strictly before ``than`` in the same stream."""
    a, b = _rank(source), _rank(than)
    return a is not None and b is not None and a[0] == b[0] and a[1] < b[1]


class AnsweredIds:
    """Record id -> (source of the last verdict for it, the source that verdict superseded).

    An :class:`OrderedDict` used as an LRU: lookup, move-to-end and eviction are O(1). Touched only
    by the scoring thread (one executor thread), never by ``POST /score``.
    """

    def __init__(self, size: int) -> None:
        self.size = max(0, int(size))
        self._seen: OrderedDict[str, tuple[Mapping[str, Any], Mapping[str, Any] | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def answer(self, record_id: str, source: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Remember that ``record_id`` is answered from ``source``; return the earlier verdict's
        source that this one supersedes, or None (first answer, a replay, or an older position)."""
        if not self.size:
            return None
        seen = self._seen
        entry = seen.get(record_id)
        if entry is None:
            seen[record_id] = (source, None)
            if len(seen) > self.size:
                seen.popitem(last=False)
            return None
        seen.move_to_end(record_id)
        last, superseded = entry
        if source == last:
            return superseded  # the same position again: the same answer as the first time
        if is_older(source, last):
            return None  # re-read behind what was answered since: it replaces nothing
        seen[record_id] = (source, last)
        return last


def mongo_document_id(value: Any) -> str | int | None:
    """``document_id`` of a MongoDB source: an ObjectId as hex, a plant-set string or integer id as
    it is (cut to :data:`MAX_ID_TEXT`), anything else as its bounded text."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return value if -(2**53) < value < 2**53 else str(value)
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_ID_TEXT]


def event_id(token: Any) -> str | None:
    """A change event's id: its resume token's ``_data`` (a hex string on current servers)."""
    if token is None:
        return None
    data = token.get("_data") if isinstance(token, Mapping) else token
    if isinstance(data, str):
        return data[:MAX_ID_TEXT * 4]
    if isinstance(data, (bytes, bytearray)):
        return bytes(data).hex()[:MAX_ID_TEXT * 4]
    return str(data)[:MAX_ID_TEXT * 4]


__all__ = ["AnsweredIds", "HTTP_SOURCE", "is_older", "mongo_document_id", "event_id"]
