"""The MongoDB role in deploy/README.md is all the worker needs: every command it sends through a
run (backfill, live change stream, checkpoints, lease) is mapped to the privileges it requires
and checked against the documented role. The test server has no authentication, so this checks
what the worker asks for rather than a server refusing it."""
from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from tests.support.worker_helpers import (
    plant_documents,
    read_topic,
    running_worker,
    unique,
    values,
    worker_settings,
)

DEPLOY_README = Path(__file__).resolve().parents[2] / "deploy" / "README.md"
# Commands any authenticated user may run (handshake, liveness, its own sessions and cursors).
NO_PRIVILEGE = {"hello", "ismaster", "isMaster", "ping", "endSessions", "killCursors", "saslStart", "saslContinue",
                "buildInfo", "getMore", "abortTransaction", "commitTransaction"}


def documented_role() -> dict[str, set[str]]:
    """collection -> actions of the role in deploy/README.md's mongo-role block."""
    text = DEPLOY_README.read_text()
    block = text.split("<!-- mongo-role -->", 1)[1].split("```js", 1)[1].split("```", 1)[0]
    role: dict[str, set[str]] = {}
    for collection, actions in re.findall(r'collection:\s*"([^"]+)"\s*}\s*,\s*actions:\s*\[([^\]]*)\]', block):
        role[collection] = set(re.findall(r'"([^"]+)"', actions))
    return role


def required(command_name: str, command: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(collection, action) pairs a command needs, after MongoDB's built-in action model."""
    if command_name in NO_PRIVILEGE:
        return
    collection = command.get(command_name)
    if command_name == "find":
        yield collection, "find"
    elif command_name == "aggregate":
        pipeline = command.get("pipeline", [])
        if pipeline and "$changeStream" in pipeline[0]:
            yield collection, "changeStream"
        yield collection, "find"
    elif command_name == "insert":
        yield collection, "insert"
    elif command_name == "update":
        yield collection, "update"
        if any(u.get("upsert") for u in command.get("updates", [])):
            yield collection, "insert"
    elif command_name == "findAndModify":
        yield collection, "find"
        yield collection, "update"
        if command.get("upsert"):
            yield collection, "insert"
    elif command_name == "delete":
        yield collection, "remove"
    else:
        yield collection or "<database>", f"<unknown command {command_name}>"


class Recorder(monitoring.CommandListener):
    def __init__(self, database: str) -> None:
        self.database = database
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name in (self.database, "admin"):
            with self._lock:
                self.seen.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_the_documented_role_parses():
    assert documented_role() == {"shots": {"find", "changeStream"}, "moldwatch_checkpoints": {"find", "insert", "update"}}


@pytest.mark.servers
@pytest.mark.timeout(300)
async def test_the_worker_needs_nothing_beyond_the_documented_role(mongo_server, kafka_server, trained_store,
                                                                   small_plant):
    name = unique("mongo-role")
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, start_from="beginning",
                               mongo_checkpoint_collection="moldwatch_checkpoints")
    documents = plant_documents(small_plant, 60, name)
    recorder = Recorder(settings.mongo_database)
    async with AsyncMongoClient(mongo_server.uri) as mongo:
        collection = mongo[settings.mongo_database][settings.mongo_collection]
        await collection.insert_many(documents[:30])  # found by the backfill at first start
        monitoring.register(recorder)  # only clients made from here on: the worker's, not this one
        async with running_worker(settings):
            await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 30)
            await collection.insert_many(documents[30:])  # read from the change stream
            verdicts = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 60))
    monitoring._LISTENERS.command_listeners.remove(recorder)  # no public unregister in PyMongo
    assert len({v["record_id"] for v in verdicts}) == 60
    names = {name for name, _ in recorder.seen}
    assert {"find", "aggregate", "update"} <= names, names  # backfill, change stream, checkpoint and lease
    role = documented_role()
    renamed = {settings.mongo_collection: "shots", settings.mongo_checkpoint_collection: "moldwatch_checkpoints"}
    needed = {(renamed.get(str(c), str(c)), action) for name, command in recorder.seen for c, action in required(name, command)}
    beyond = {(c, a) for c, a in needed if a not in role.get(c, set())}
    assert not beyond, f"the worker needs privileges deploy/README.md does not grant: {sorted(beyond)}"
    assert needed == {(c, a) for c, actions in role.items() for a in actions}  # and the role grants nothing unused
