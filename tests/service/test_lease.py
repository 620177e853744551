"""One running worker per name (service/sources/lease.py): the takeover rule by hand, and two
workers with one name against the real MongoDB-protocol and Kafka servers."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pymongo import AsyncMongoClient

from service.sources.lease import CheckpointLease, Holder, LeaseLost, may_take
from tests.service.test_worker import acknowledged, read_to_end
from tests.support.worker_helpers import metric, plant_documents, running_worker, unique, values, wait_for, worker_settings
from tests.support.worker_process import WorkerProcess

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
ME = Holder("me", "host-a", 100, NOW + timedelta(seconds=15))


def _other(host: str = "host-a", pid: int = 200, expires: datetime = NOW + timedelta(seconds=1), owner: str = "other") -> Holder:
    return Holder(owner, host, pid, expires)


@pytest.mark.parametrize(("holder", "alive", "expected"), [
    (None, True, True),                                           # nobody holds the name
    (_other(owner="me"), True, True),                              # ours already
    (_other(expires=NOW), True, True),                             # expired exactly now
    (_other(expires=NOW + timedelta(microseconds=1)), True, False),  # one microsecond left, alive: wait
    (_other(host="host-b"), False, False),                         # another host: its process cannot be seen, wait
    (_other(), False, True),                                       # this host, process gone: our previous incarnation
    (_other(pid=100), True, True),                                 # this host, our own pid: a restarted container
    (_other(), True, False),                                       # this host, alive: a twin, wait
])
def test_who_may_take_the_lease(holder, alive, expected) -> None:
    assert may_take(holder, ME, NOW, alive=lambda pid: alive) is expected


def test_a_lease_document_reads_naive_dates_as_utc_and_refuses_junk() -> None:
    holder = Holder.of({"owner": "o", "host": "h", "pid": 7, "expires": datetime(2026, 1, 1, 12, 0)})
    assert holder == Holder("o", "h", 7, datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    assert Holder.of(None) is None and Holder.of({"owner": "o", "expires": "tomorrow"}) is None


@pytest.mark.servers
async def test_the_lease_is_taken_once_renewed_and_lost_to_a_takeover(mongo_server) -> None:
    client = AsyncMongoClient(mongo_server.uri)
    collection = client["leases"][unique("checkpoints")]
    try:
        first = CheckpointLease(collection, "w", ttl_s=60, host="host-a", pid=1)
        twin = CheckpointLease(collection, "w", ttl_s=60, host="host-b", pid=2)
        assert await first.try_acquire()
        assert not await twin.try_acquire() and "held by host-a pid 1" in twin.waiting_text()
        await first.renew()
        await first.release()
        assert await twin.try_acquire()  # released: taken at once
        with pytest.raises(LeaseLost, match="another worker named 'w' took over"):
            await first.renew()
        await collection.delete_many({})  # the server came back empty: the holder takes its name again
        await twin.renew()
        assert not await first.try_acquire()
    finally:
        await client.close()


@pytest.mark.servers
@pytest.mark.timeout(300)
async def test_a_second_worker_with_the_same_name_waits_then_takes_over_without_duplicates(
        mongo_server, kafka_server, trained_store, small_plant, tmp_path) -> None:
    name = unique("twin")
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, lease_ttl_s=3.0)
    schema = small_plant.schema
    documents = plant_documents(small_plant, 150, name)
    client = AsyncMongoClient(mongo_server.uri)
    collection = client[settings.mongo_database][settings.mongo_collection]
    twin = WorkerProcess(settings, tmp_path / "twin.log")
    try:
        async with running_worker(settings) as worker:
            twin.start()
            await wait_for(lambda: "standby" in str(_reasons(twin)), timeout=90)
            standby = _reasons(twin)
            assert "is held by" in str(standby), standby
            await collection.insert_many(documents[:100])
            await wait_for(acknowledged(worker, 100), timeout=60)
        # the first one stopped cleanly and released the name: the twin takes over and resumes from its checkpoint
        await wait_for(twin.ready, timeout=60)
        await collection.insert_many(documents[100:])
        await wait_for(lambda: _verdicts(twin) >= 50, timeout=60)
    finally:
        if twin.proc is not None:
            assert twin.terminate() == 0, twin.tail()
        await client.close()
    ids = [v["record_id"] for v in values(await read_to_end(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic))]
    assert sorted(ids) == sorted(d[schema.record_id] for d in documents)  # each once: no twin published
    assert metric(worker, "moldwatch_verdicts_total") == 100


def _reasons(process: WorkerProcess) -> dict:
    try:
        return process.readyz().get("reasons", {})
    except Exception:  # noqa: BLE001 - not listening yet
        return {}


def _verdicts(process: WorkerProcess) -> float:
    try:
        text = process.metrics()
    except Exception:  # noqa: BLE001 - not listening yet
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("moldwatch_verdicts_total{"))


def test_pid_alive_tells_a_running_process_from_a_gone_one() -> None:
    import os
    import subprocess
    import sys

    from service.processes import pid_alive

    assert pid_alive(os.getpid()) and not pid_alive(0) and not pid_alive(-1)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not pid_alive(int(done.stdout))  # exited and reaped
