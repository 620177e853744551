"""MongoDB adapter: publish recipes into a collection, one document per (facility, item).

Upsert keyed by facility and item (the document carries the store's ``model_version``); after
the upsert, documents of other store versions are removed so the collection is exactly the
current recipe book. Kept thin: the documents are :meth:`RecipeResult.to_json`'s recipes.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from model_store.driver_errors import mongo_cause
from model_store.errors import MoldwatchError

DEFAULT_DB = "moldwatch"
DEFAULT_COLLECTION = "recipes"
TIMEOUT_MS = 10_000  # fail a CLI run within seconds when the server is unreachable


class MongoPublishError(MoldwatchError):
    """The recipes could not be written to MongoDB."""


def _redact(uri: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", uri)


def _reason(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return _redact(mongo_cause(lines[0] if lines else type(exc).__name__))[:300]


def upsert_recipes(collection: Any, recipes: Iterable[dict[str, Any]], model_version: str, prune: bool = True) -> dict[str, int]:
    """Upsert into a PyMongo collection; returns counts (upserted, modified, pruned)."""
    from pymongo import ReplaceOne

    now = datetime.now(UTC).isoformat(timespec="seconds")  # a string: documents stay JSON-ready
    operations = [
        ReplaceOne(
            {"facility": r["facility"], "item": r["item"]},
            {**r, "model_version": model_version, "published_at": now},
            upsert=True,
        )
        for r in recipes
    ]
    counts = {"upserted": 0, "modified": 0, "pruned": 0}
    if operations:
        result = collection.bulk_write(operations, ordered=True)
        counts["upserted"], counts["modified"] = result.upserted_count, result.modified_count
    if prune:
        counts["pruned"] = collection.delete_many({"model_version": {"$ne": model_version}}).deleted_count
    return counts


def check_reachable(uri: str) -> None:
    """Ping the server: a CLI run fails in seconds, before minutes of scoring, when it is unreachable."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    try:
        client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=TIMEOUT_MS, connectTimeoutMS=TIMEOUT_MS)
        try:
            client.admin.command("ping")
        finally:
            client.close()
    except (PyMongoError, ValueError) as exc:
        raise MongoPublishError(f"{_redact(uri)}: {_reason(exc)}") from None


def publish(uri: str, recipes: list[dict[str, Any]], model_version: str, database: str = DEFAULT_DB,
            collection: str = DEFAULT_COLLECTION) -> dict[str, int]:
    """Connect, upsert, disconnect. Raises :class:`MongoPublishError` with a one-line reason."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    try:
        client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=TIMEOUT_MS, connectTimeoutMS=TIMEOUT_MS)
    except (PyMongoError, ValueError) as exc:
        raise MongoPublishError(f"{_redact(uri)}: {_reason(exc)}") from None
    try:
        coll = client[database][collection]
        try:
            coll.create_index([("facility", 1), ("item", 1)], unique=True, name="facility_item")
        except PyMongoError:
            pass  # an index is a nicety; some MongoDB-compatible servers refuse it
        return upsert_recipes(coll, recipes, model_version)
    except PyMongoError as exc:
        raise MongoPublishError(f"{_redact(uri)} {database}.{collection}: {_reason(exc)}") from None
    finally:
        client.close()


def load_recipes(collection: Any, model_version: str | None = None) -> list[dict[str, Any]]:
    """Read a recipe collection (optionally one store version) for :class:`RecipeBook`."""
    query = {} if model_version is None else {"model_version": model_version}
    return list(collection.find(query, {"_id": 0}))
