"""The Kafka ACLs the worker needs, and nothing more: one list for the docs, the operator and the tests.

What each client of the worker does on the broker (service/sink.py, exactly_once.py, topics.py,
sources/kafka.py), hence each permission:

- the producer writes verdicts, alarms and dead letters: WRITE + DESCRIBE on those topics. An
  idempotent producer needs no IdempotentWrite on the cluster since Kafka 3.0 (KIP-679: WRITE on a
  topic implies it), so none is granted.
- at start it creates the output topics that are missing (service/topics.py): CREATE on exactly
  those topic names (literal), not on the cluster. Leave it out when the topics are made beforehand.
- exactly-once: the transactional id ``<client_id>-<worker_name>`` (WRITE + DESCRIBE); with the
  MongoDB source the positions topic is written in each transaction and read back at start (READ,
  WRITE, DESCRIBE, CREATE: it is created compacted when missing).
- ``--source kafka``: READ + DESCRIBE on the records topic, READ on the consumer group (join,
  commit; in exactly-once mode the offsets go through the transaction, which needs the same).

``python -m service.kafka_acls`` prints the ``kafka-acls.sh`` commands for the MOLDWATCH_* settings
in effect (``--principal User:NAME``, ``--all`` for every mode at once); deploy/README.md quotes
them for the default names and tests/deploy checks that it does.
"""
from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from typing import Literal

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from service.config import WorkerSettings

ResourceType = Literal["TOPIC", "GROUP", "TRANSACTIONAL_ID"]
Operation = Literal["READ", "WRITE", "DESCRIBE", "CREATE"]

# kafka-acls.sh spelling of each resource type and operation.
_RESOURCE_FLAG = {"TOPIC": "--topic", "GROUP": "--group", "TRANSACTIONAL_ID": "--transactional-id"}
_OPERATION_NAME = {"READ": "Read", "WRITE": "Write", "DESCRIBE": "Describe", "CREATE": "Create"}


def transactional_id(settings: WorkerSettings) -> str:
    """The exactly-once producer's transactional id: one per worker name (a twin would fence it)."""
    return f"{settings.kafka_client_id}-{settings.worker_name}"


@dataclass(frozen=True, order=True)
class Acl:
    """ALLOW ``operation`` on the literal resource ``resource_type:name`` (any host)."""

    resource_type: ResourceType
    name: str
    operation: Operation


def worker_acls(settings: WorkerSettings, *, every_mode: bool = False) -> list[Acl]:
    """The ACLs of a worker run with ``settings`` (``every_mode``: for both sources and both deliveries)."""
    s = settings
    exactly_once = every_mode or s.delivery == "exactly-once"
    kafka_source = every_mode or s.source == "kafka"
    acls = [Acl("TOPIC", topic, op) for topic in (s.kafka_verdicts_topic, s.kafka_alarms_topic, s.kafka_dead_letters_topic)
            for op in ("WRITE", "DESCRIBE", "CREATE")]
    if exactly_once:
        acls += [Acl("TRANSACTIONAL_ID", transactional_id(s), op) for op in ("WRITE", "DESCRIBE")]
    if exactly_once and (every_mode or s.source == "mongo"):
        acls += [Acl("TOPIC", s.kafka_positions_topic, op) for op in ("READ", "WRITE", "DESCRIBE", "CREATE")]
    if s.kafka_feedback_topic:  # operator feedback kept by the worker's own producer
        acls += [Acl("TOPIC", s.kafka_feedback_topic, op) for op in ("WRITE", "DESCRIBE", "CREATE")]
    if s.kafka_feedback_in_topic:  # operator answers arriving on Kafka
        acls += [Acl("TOPIC", s.kafka_feedback_in_topic, op) for op in ("READ", "DESCRIBE")]
        acls.append(Acl("GROUP", f"{s.kafka_group_id}-feedback", "READ"))
    if kafka_source:
        acls += [Acl("TOPIC", s.kafka_records_topic, op) for op in ("READ", "DESCRIBE")]
        acls.append(Acl("GROUP", s.kafka_group_id, "READ"))
    return sorted(set(acls))


GRANT_HINT = "grant it: python -m service.kafka_acls prints the worker's ACLs (deploy/README.md, Least privilege)"


def denied(exc: BaseException, settings: WorkerSettings) -> str | None:
    """One line for a refusal by the broker's authorizer: the principal, the resource, the missing
    permission and what to do; None for any other error."""
    who = f"kafka {settings.kafka_bootstrap_servers}: user {settings.kafka_sasl_username or 'ANONYMOUS'!r}"
    if isinstance(exc, TopicAuthorizationFailedError):
        # aiokafka puts the refused topic(s) after the last colon: "[Error 29] TopicAuthorizationFailedError: t"
        topics = str(exc).rsplit(": ", 1)[-1].strip() or "?"
        return f"{who} may not write to topic {topics} (TopicAuthorizationFailedError: WRITE and DESCRIBE needed); {GRANT_HINT}"
    if isinstance(exc, GroupAuthorizationFailedError):
        return f"{who} may not use consumer group {settings.kafka_group_id} (GroupAuthorizationFailedError: READ needed); {GRANT_HINT}"
    if isinstance(exc, TransactionalIdAuthorizationFailed):
        return (f"{who} may not use transactional id {transactional_id(settings)} (TransactionalIdAuthorizationFailed: "
                f"WRITE and DESCRIBE needed); {GRANT_HINT}")
    if isinstance(exc, ClusterAuthorizationFailedError):
        return (f"{who} refused a cluster operation (ClusterAuthorizationFailedError: a broker before Kafka 3.0 needs "
                f"IdempotentWrite on the cluster for an idempotent producer); {GRANT_HINT}")
    return None


def kafka_acls_commands(acls: list[Acl], principal: str, bootstrap: str = "$BOOTSTRAP",
                        command_config: str = "$ADMIN_CONFIG") -> list[str]:
    """One ``kafka-acls.sh --add`` per resource, its operations together (what an operator runs)."""
    by_resource: dict[tuple[str, str], list[str]] = {}
    for acl in acls:
        by_resource.setdefault((acl.resource_type, acl.name), []).append(_OPERATION_NAME[acl.operation])
    lines = []
    for (kind, name), operations in by_resource.items():
        ops = " ".join(f"--operation {op}" for op in operations)
        lines.append(f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config {command_config} --add "
                     f"--allow-principal {shlex.quote(principal)} {ops} {_RESOURCE_FLAG[kind]} {shlex.quote(name)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.kafka_acls",
                                     description="Print the kafka-acls.sh commands that grant the worker exactly "
                                                 "what its MOLDWATCH_* settings need.")
    parser.add_argument("--principal", default=None,
                        help="the worker's Kafka principal (default: User:<MOLDWATCH_KAFKA_SASL_USERNAME>, else User:moldwatch)")
    parser.add_argument("--all", action="store_true", help="every mode: both sources, both delivery modes")
    args = parser.parse_args(argv)
    # The ACLs depend on names and modes only: no password is needed to print them.
    settings = WorkerSettings(kafka_sasl_mechanism=None)  # type: ignore[call-arg]  # the other fields come from defaults and MOLDWATCH_*
    principal = args.principal or f"User:{settings.kafka_sasl_username or 'moldwatch'}"
    for line in kafka_acls_commands(worker_acls(settings, every_mode=args.all), principal):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
