"""The few private internals of aiokafka and PyMongo the worker cannot do without, each behind one
named function that says why no public API does the job. Everything else uses public API only.

pyproject.toml caps aiokafka and pymongo below their next minor release, and
``tests/service/test_client_internals.py`` checks every internal used here (that it exists, its
signature, and what the worker relies on it to do): an upgrade that moves one fails there, by name,
instead of silently reordering verdicts or writing an aborted batch. Raising a cap means running
that file first.

The library imports stay inside the functions: :mod:`service.config` uses this module and must
not pull in the Kafka client to check a MongoDB URI.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer
    from aiokafka.conn import AIOKafkaConnection

BATCH_TTL_S = float(365 * 24 * 3600)  # a year: a batch waiting for its partition's leader never expires


# -- aiokafka ----------------------------------------------------------------------------------------
def fail_buffered(producer: AIOKafkaProducer, exc: BaseException) -> None:
    """Fail every record batch ``producer`` still holds (waiting, or sent and not answered) with
    ``exc``; the producer takes nothing more after this.

    Why: a producer being replaced, or one whose transaction is aborted, must not let what it holds
    trickle out later (``stop()`` flushes it): an older verdict would land after its resend, or a
    batch of an aborted transaction outside it. aiokafka has no public call that drops buffered
    records. Private: ``AIOKafkaProducer._message_accumulator.fail_all``."""
    producer._message_accumulator.fail_all(exc)


def keep_batches_until_acked(producer: AIOKafkaProducer) -> None:
    """Never expire a batch of ``producer`` that waits for its partition's leader.

    Why: with idempotence aiokafka retries a batch until it is acknowledged, except a batch whose
    partition has no known leader for longer than the request timeout (a broker restarting): that
    one fails while younger batches of the same partition may still be written after it, which
    reorders a facility's verdicts. The expiry is the request timeout, with no setting of its own.
    Private: ``AIOKafkaProducer._message_accumulator._batch_ttl``, read by each new batch.
    A release without it leaves the producer as it is (the contract test fails instead)."""
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is not None and hasattr(accumulator, "_batch_ttl"):
        accumulator._batch_ttl = BATCH_TTL_S


async def producer_metadata(producer: AIOKafkaProducer) -> None:
    """One metadata request from ``producer`` to the cluster, answered or raised (readiness).

    Why: ``AIOKafkaProducer`` has no public call that always asks a broker (``partitions_for``
    answers from its cache); a consumer has one (``topics()``). Undocumented, not underscored:
    ``AIOKafkaProducer.client.fetch_all_metadata``."""
    await producer.client.fetch_all_metadata()


async def open_connection(host: str, port: int, **kwargs: Any) -> AIOKafkaConnection:
    """One connection to one broker (TLS handshake and SASL included), with the client keyword
    arguments ``kwargs`` (client_id, request_timeout_ms, security settings); the caller closes it.

    Why: a client that cannot start says only "Unable to bootstrap"; a single connection raises
    the SASL or TLS error that names the cause. Undocumented module: ``aiokafka.conn.create_conn``."""
    from aiokafka.conn import create_conn

    return await create_conn(host, port, **kwargs)


# -- PyMongo -----------------------------------------------------------------------------------------
def validate_mongo_uri(uri: str) -> bool:
    """Parse ``uri`` as the driver will, without the network: raises ``InvalidURI``,
    ``ConfigurationError`` or ``ValueError`` when the driver would refuse it; True when parsed,
    False when this PyMongo has no such parser (the driver then reports it at connection time).

    Why: the public ``pymongo.uri_parser.parse_uri`` resolves a mongodb+srv:// host in DNS, and the
    settings are checked before, and without, any connection. Private:
    ``pymongo.uri_parser_shared._validate_uri``."""
    try:
        from pymongo.uri_parser_shared import _validate_uri
    except ImportError:
        return False
    _validate_uri(uri)
    return True


__all__ = ["BATCH_TTL_S", "fail_buffered", "keep_batches_until_acked", "open_connection", "producer_metadata",
           "validate_mongo_uri"]
