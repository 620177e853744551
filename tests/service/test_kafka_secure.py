"""The worker against a broker that requires SASL_SSL (SCRAM-SHA-512, a CA made in this run) and
ACLs (StandardAuthorizer, deny by default), as the user ``moldwatch`` holding exactly the ACLs of
service/kafka_acls.py:

- both delivery modes survive SIGKILLs over SASL_SSL: nothing lost, and with exactly-once no
  duplicate for a read_committed reader;
- a wrong password, a certificate the worker does not trust, and an expired one each keep the
  worker not ready with one line naming the broker and the cause, and the password never appears
  in its log or /readyz;
- with one ACL taken away the worker says which topic and permission are missing.

The worker connects only to the SASL_SSL listener; the test reads what it wrote through the
broker's PLAINTEXT listener (a super user).
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from pymongo import AsyncMongoClient

from service.kafka_acls import Acl, worker_acls
from tests.support.kafka_secure import WORKER_USER, create_acls
from tests.support.worker_helpers import plant_documents, unique, worker_settings
from tests.support.worker_process import WorkerProcess, kill_loop, verdict_id, wait_for_ids

pytestmark = [pytest.mark.servers, pytest.mark.slow, pytest.mark.timeout(600)]

RECORDS = 3000
KILLS = 2
ODD_PASSWORD = "p@ss:w/rd%20\"'"  # URI, shell and JSON metacharacters: must never reach a log line


def secure_settings(kafka: Any, mongo: Any, store: Path, name: str, password: str | None = None, **overrides: Any) -> Any:
    """Worker settings for ``name`` that connect as the ``moldwatch`` user over SASL_SSL."""
    return worker_settings(mongo, kafka, store, name, **{**kafka.client_settings(WORKER_USER, password), **overrides})


def password_env(settings: Any) -> dict[str, str]:
    """worker_process.worker_env leaves passwords out of the environment it builds: add this one."""
    return {"MOLDWATCH_KAFKA_SASL_PASSWORD": settings.kafka_sasl_password.get_secret_value()}


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_kill_loop_over_sasl_ssl_with_least_privilege(
    delivery, kafka_secure_server, mongo_server, trained_store, small_plant, tmp_path
):
    name = unique("sasl-" + delivery.split("-")[0])
    settings = secure_settings(kafka_secure_server, mongo_server, trained_store, name, delivery=delivery,
                               kafka_positions_topic=f"{name}.positions", checkpoint_interval_s=0.5)
    await create_acls(kafka_secure_server.bootstrap_servers, f"User:{WORKER_USER}", worker_acls(settings))
    documents = plant_documents(small_plant, RECORDS, name)
    ids = {d[small_plant.schema.record_id] for d in documents}
    client = AsyncMongoClient(mongo_server.uri)
    log = tmp_path / "worker.log"
    began = time.monotonic()
    try:
        verdicts = await kill_loop(settings, client[settings.mongo_database][settings.mongo_collection], documents, ids,
                                   kafka_secure_server.bootstrap_servers, log, KILLS, **password_env(settings))
    finally:
        await client.close()
    assert set(verdicts) == ids  # nothing lost, nothing foreign
    duplicates = sum(n - 1 for n in verdicts.values())
    if delivery == "exactly-once":
        assert duplicates == 0
    text = log.read_text(errors="replace")
    assert settings.kafka_sasl_password.get_secret_value() not in text
    print(f"SASL_SSL {delivery}: {RECORDS} records, {KILLS} SIGKILLs, {duplicates} duplicate verdicts, "
          f"{time.monotonic() - began:.1f} s")


async def test_wrong_password_untrusted_and_expired_certificates_name_the_broker_and_cause(
    kafka_secure_server, mongo_server, trained_store, tmp_path
):
    k = kafka_secure_server
    secure, expired = k.secure_bootstrap_servers, k.expired_bootstrap_servers
    cases: dict[str, tuple[dict[str, Any], str, str]] = {  # case -> (overrides, broker named, cause)
        "wrong password": ({"password": ODD_PASSWORD}, secure,
                           f"SASL authentication failed for user '{WORKER_USER}' (wrong user or password"),
        "another CA": ({"kafka_tls_ca_file": k.other_ca_file}, secure,
                       "TLS certificate verify failed: unable to get local issuer certificate (the broker's "
                       "certificate is not signed by a CA the worker trusts"),
        "no CA given": ({"kafka_tls_ca_file": None}, secure, "TLS certificate verify failed: unable to get local issuer"),
        "expired": ({"kafka_bootstrap_servers": expired}, expired,
                    "TLS certificate verify failed: certificate has expired (renew the broker's certificate)"),
    }
    workers: dict[str, WorkerProcess] = {}
    try:
        for case, (overrides, _, _) in cases.items():  # all at once: each waits on its own broker answer
            name = unique("tlsfail")
            settings = secure_settings(k, mongo_server, trained_store, name, **overrides, kafka_request_timeout_ms=3000)
            workers[case] = WorkerProcess(settings, tmp_path / f"{case.replace(' ', '-')}.log",
                                          **password_env(settings)).start()

        async def named(case: str) -> str:
            worker, (_, broker, cause) = workers[case], cases[case]
            deadline = time.monotonic() + 90
            while True:
                assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
                body = await asyncio.to_thread(_readyz_text, worker)
                if body and cause in body and broker in body:
                    return body
                assert time.monotonic() < deadline, f"{case}: /readyz does not name {broker} and {cause!r}: {body}\n{worker.tail()}"
                await asyncio.sleep(0.3)

        bodies = dict(zip(cases, await asyncio.gather(*(named(c) for c in cases))))
    finally:
        for worker in workers.values():
            worker.kill()
    for case, worker in workers.items():
        _, broker, cause = cases[case]
        readyz = json.loads(bodies[case])
        assert readyz["ready"] is False
        lines = [json.loads(line) for line in worker.log_path.read_text().splitlines() if line.startswith("{")]
        warned = [line for line in lines if line.get("event") == "kafka unreachable, retrying"]
        assert warned, worker.tail()
        assert warned[-1]["error"].startswith(f"kafka {broker}: ") and cause in warned[-1]["error"], warned[-1]
        assert "\n" not in warned[-1]["error"]
    # The password of the wrong-password case, in any form a library might print it, is nowhere.
    text = workers["wrong password"].log_path.read_text(errors="replace") + bodies["wrong password"]
    for form in (ODD_PASSWORD, quote(ODD_PASSWORD, safe=""), quote_plus(ODD_PASSWORD), json.dumps(ODD_PASSWORD)[1:-1]):
        assert form not in text, form


def _readyz_text(worker: WorkerProcess) -> str:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{worker.port}/readyz", timeout=3).text
    except httpx.HTTPError:
        return ""


async def test_with_one_acl_taken_away_the_worker_names_the_topic_and_permission(
    kafka_secure_server, mongo_server, trained_store, small_plant, tmp_path
):
    """Every ACL but WRITE on the verdicts topic: nothing is lost (the verdicts wait, in order), the
    worker turns not ready, and the log and /readyz say which user, topic and permission, and what to do."""
    name = unique("acl")
    settings = secure_settings(kafka_secure_server, mongo_server, trained_store, name, progress_timeout_s=2.0,
                               kafka_request_timeout_ms=3000)
    taken = Acl("TOPIC", settings.kafka_verdicts_topic, "WRITE")
    acls = worker_acls(settings)
    assert taken in acls
    await create_acls(kafka_secure_server.bootstrap_servers, f"User:{WORKER_USER}", [a for a in acls if a != taken])
    client = AsyncMongoClient(mongo_server.uri)
    worker = WorkerProcess(settings, tmp_path / "worker.log", **password_env(settings)).start()
    expected = (f"user '{WORKER_USER}' may not write to topic {settings.kafka_verdicts_topic} "
                f"(TopicAuthorizationFailedError: WRITE and DESCRIBE needed); grant it: python -m service.kafka_acls")
    try:
        await worker.wait_ready()
        documents = plant_documents(small_plant, 5, name)
        await client[settings.mongo_database][settings.mongo_collection].insert_many(documents)
        deadline = time.monotonic() + 60
        while expected not in (body := await asyncio.to_thread(_readyz_text, worker)):
            assert time.monotonic() < deadline, f"/readyz does not name the missing ACL: {body}\n{worker.tail()}"
            await asyncio.sleep(0.3)
        assert json.loads(body)["ready"] is False
        lines = [json.loads(line) for line in worker.log_path.read_text().splitlines() if line.startswith("{")]
        assert any(expected in str(line.get("error", "")) for line in lines), worker.tail()
        # Granted now: the waiting verdicts go out, none lost.
        await create_acls(kafka_secure_server.bootstrap_servers, f"User:{WORKER_USER}", [taken])
        await wait_for_ids(kafka_secure_server.bootstrap_servers, [settings.kafka_verdicts_topic], verdict_id,
                           {d[small_plant.schema.record_id] for d in documents}, timeout=60)
    finally:
        worker.kill()
        await client.close()
