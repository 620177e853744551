"""The worker's output topics exist before the first verdict is sent.

A topic the producer cannot find makes every send to it wait for metadata until the request
timeout, and because verdicts are handed over in order, one missing topic (the alarms topic: only
anomalies go there) stalls every verdict behind the first anomaly. So the worker checks its topics
at start: missing ones are created where the broker allows it (with the broker's own replication
bounds); where it does not, the worker refuses to start and names the topic and what to do.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from model_store.errors import MoldwatchError
from service.backoff import Backoff
from service.config import WorkerSettings
from service.sink import RETRY_BACKOFF_S

log = structlog.get_logger("moldwatch.topics")


class TopicError(MoldwatchError):
    """An output topic does not exist and cannot be created: the worker does not start."""


def refusals(topic_errors: Sequence[Sequence[object]]) -> list[tuple[str, str]]:
    """``(topic, error name)`` for each topic a CreateTopics answer refused (0 = created,
    TOPIC_ALREADY_EXISTS = another worker created it meanwhile: both are fine)."""
    refused = []
    for entry in topic_errors:
        topic, code = str(entry[0]), int(entry[1])  # type: ignore[call-overload]  # aiokafka's answer entries are untyped: the code is an int
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        message = entry[2] if len(entry) > 2 and entry[2] else ""
        refused.append((topic, f"{for_code(code).__name__}{': ' + str(message) if message else ''}"))
    return refused


async def ensure_topics(settings: WorkerSettings, topics: Sequence[str]) -> list[str]:
    """Create the topics in ``topics`` that the cluster lacks; return the ones created.

    Raises :class:`TopicError` naming each topic the broker refused to create (no CREATE
    permission, a policy, an invalid name), and :class:`KafkaError` when the brokers do not answer.
    """
    wanted = list(dict.fromkeys(topics))
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers,
                                request_timeout_ms=settings.kafka_request_timeout_ms,
                                **settings.kafka_security_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return []
        brokers = len((await admin.describe_cluster()).get("brokers", [])) or 1
        new = [NewTopic(t, num_partitions=settings.kafka_new_topic_partitions, replication_factor=min(3, brokers))
               for t in missing]
        try:
            answer = await admin.create_topics(new)
        except TopicAlreadyExistsError:
            return []
        except KafkaError as exc:
            raise TopicError(_refused_message(settings, [(t, type(exc).__name__) for t in missing])) from exc
        refused = refusals(getattr(answer, "topic_errors", []) or [])
        if refused:
            raise TopicError(_refused_message(settings, refused))
        log.info("kafka topics created", topics=missing, partitions=settings.kafka_new_topic_partitions,
                 replication_factor=min(3, brokers))
        return missing
    finally:
        await admin.close()


async def ensure_output_topics(settings: WorkerSettings, stopping: asyncio.Event,
                               until_stopping: Callable[[Coroutine[Any, Any, Any]], Awaitable[bool]]) -> bool:
    """The worker's output topics exist before its first send: :func:`ensure_topics`, retried while
    the brokers do not answer; False when a stop came first. Raises :class:`TopicError`."""
    s = settings
    topics = (s.kafka_verdicts_topic, s.kafka_alarms_topic, s.kafka_dead_letters_topic,
              *((s.kafka_shadow_topic,) if s.kafka_shadow_topic else ()))
    backoff = Backoff(*RETRY_BACKOFF_S)
    while not stopping.is_set():
        try:
            return await until_stopping(ensure_topics(s, topics))
        except KafkaError as exc:  # the brokers went away between the producer connecting and this check
            pause = backoff.next()
            log.warning("kafka topics not checked, retrying", error=str(exc), retry_in_s=pause)
            await until_stopping(asyncio.sleep(pause))
    return False


def _refused_message(settings: WorkerSettings, refused: list[tuple[str, str]]) -> str:
    named = ", ".join(f"{topic} ({why})" for topic, why in refused)
    return (f"Kafka {settings.kafka_bootstrap_servers}: topic(s) missing and not created: {named}; "
            f"create them, or give the worker's principal CREATE on the cluster")
