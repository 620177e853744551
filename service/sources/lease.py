"""One running worker per name: a lease on the worker's checkpoint document.

Two at-least-once workers with the same ``worker_name`` (a copy-paste in a deployment) would both
read the change stream, both publish every verdict and overwrite each other's checkpoint. So the
checkpoint document carries a lease ``{owner, host, pid, expires}``: a worker reads and
checkpoints only while it holds it, renews it every third of ``lease_ttl_s``, and stops when it
finds it lost. A second worker with the same name waits (``/readyz`` says who holds the name and
until when) and takes over when the holder stops renewing.

A restart must not wait out the lease its killed predecessor left: a holder on the same host whose
process is gone (or whose pid is ours: a container restarted with the same pid) was this worker's
previous incarnation, and its lease is taken at once. Across hosts that cannot be known, and the
lease expires (``lease_ttl_s``, 15 s by default). Exactly-once mode needs no lease (the
transactional id fences a twin), nor does the Kafka source (the consumer group splits partitions).
"""
from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError

from service.processes import pid_alive


class LeaseLost(RuntimeError):
    """Another worker with the same name took the lease: this one must stop reading."""


@dataclass(frozen=True)
class Holder:
    owner: str  # one per process start
    host: str
    pid: int
    expires: datetime

    @classmethod
    def of(cls, raw: Any) -> Holder | None:
        if not isinstance(raw, Mapping):
            return None
        expires = raw.get("expires")
        if not isinstance(expires, datetime):
            return None
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        return cls(str(raw.get("owner")), str(raw.get("host")), int(raw.get("pid") or 0), expires)

    def describe(self) -> str:
        return f"{self.host} pid {self.pid} until {self.expires.isoformat(timespec='seconds')}"


def may_take(holder: Holder | None, me: Holder, now: datetime, alive: Callable[[int], bool] = pid_alive) -> bool:
    """Whether ``me`` may take the lease that ``holder`` has (see the module doc)."""
    if holder is None or holder.owner == me.owner or holder.expires <= now:
        return True
    return holder.host == me.host and (holder.pid == me.pid or not alive(holder.pid))


class CheckpointLease:
    """The lease of ``name`` on the checkpoint collection (a PyMongo async collection)."""

    def __init__(self, collection: Any, name: str, ttl_s: float, host: str | None = None, pid: int | None = None) -> None:
        self.collection = collection
        self.name = name
        self.ttl = timedelta(seconds=ttl_s)
        self.owner = uuid.uuid4().hex
        self.host = host or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self.holder: Holder | None = None  # the other holder while waiting

    def me(self, now: datetime) -> Holder:
        return Holder(self.owner, self.host, self.pid, now + self.ttl)

    def fields(self, now: datetime) -> dict[str, Any]:
        me = self.me(now)
        return {"lease": {"owner": me.owner, "host": me.host, "pid": me.pid, "expires": me.expires}}

    async def try_acquire(self) -> bool:
        """Take the lease if it is free, ours, expired or our previous incarnation's."""
        now = datetime.now(UTC)
        document = await self.collection.find_one({"_id": self.name}, {"lease": 1})
        holder = Holder.of(document.get("lease")) if document else None
        if not may_take(holder, self.me(now), now):
            self.holder = holder
            return False
        # Compare-and-set on what we read: of two workers deciding at once, one wins.
        condition: dict[str, Any] = {"_id": self.name}
        condition["lease.owner" if holder is not None else "lease"] = holder.owner if holder is not None else {"$exists": False}
        try:
            result = await self.collection.update_one(condition, {"$set": self.fields(now)}, upsert=document is None)
        except DuplicateKeyError:  # another worker created the document first
            return False
        taken = result.matched_count == 1 or result.upserted_id is not None
        self.holder = None if taken else holder
        return taken

    async def renew(self) -> None:
        """Extend the lease; raises :class:`LeaseLost` when another worker holds it now."""
        now = datetime.now(UTC)
        result = await self.collection.update_one({"_id": self.name, "lease.owner": self.owner},
                                                  {"$set": {"lease.expires": now + self.ttl}})
        if result.matched_count != 1:
            await self.reclaim()

    async def reclaim(self) -> None:
        """Our lease is not on the document: take it again if nobody else holds it (the document
        was deleted, or the server came back empty); raise :class:`LeaseLost` if another does."""
        if not await self.try_acquire():
            raise LeaseLost(self.lost_text())

    async def release(self) -> None:
        """Hand the name over at once (a clean stop): the lease expires now."""
        await self.collection.update_one(self.owned(), {"$set": {"lease.expires": datetime.now(UTC)}})

    def owned(self) -> dict[str, Any]:
        """The filter that makes a checkpoint write conditional on holding the lease."""
        return {"_id": self.name, "lease.owner": self.owner}

    def lost_text(self) -> str:
        return (f"another worker named {self.name!r} took over its checkpoint; this one stops "
                f"(one running worker per worker_name)")

    def waiting_text(self) -> str:
        held = f" by {self.holder.describe()}" if self.holder is not None else ""
        return (f"standby: worker name {self.name!r} is held{held}; this worker takes over when that one stops "
                f"(give each worker its own worker_name to run both)")


__all__ = ["CheckpointLease", "Holder", "LeaseLost", "may_take"]
