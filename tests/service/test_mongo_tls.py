"""The worker against a MongoDB-protocol server that serves TLS only (tests/support/servers.py
``mongo_tls_server``: mongo-java-server behind netty's SslHandler, a CA made in this run):

- records inserted are read over TLS (server certificate verified against mongo_tls_ca_file) and
  over mutual TLS (a client certificate with a password-protected key), scored, and their verdicts
  reach Kafka;
- a server certificate from another CA, an expired one, TLS off against the TLS-only server, no
  client certificate where one is required, and TLS on against a plain server each keep the worker
  not ready with one /readyz line and a log line naming the MongoDB host:port and the cause.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from structlog.testing import capture_logs

from service.devservers import MongoServer
from service.run_command import serve
from service.worker import Worker
from tests.support.worker_helpers import get, plant_documents, read_topic, running_worker, unique, values, worker_settings

pytestmark = [pytest.mark.servers, pytest.mark.timeout(180)]

RECORDS = 40
LEASE_RETRY = "mongodb: cannot take the worker's lease, retrying"  # the worker's first MongoDB call


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
async def test_records_read_over_tls_are_scored_end_to_end(
    mutual: bool, mongo_tls_server: MongoServer, kafka_server: Any, trained_store: Path, small_plant: Any
) -> None:
    server = mongo_tls_server
    name = unique("mtls" if mutual else "tls")
    port = server.mtls_port if mutual else server.port
    settings = worker_settings(server, kafka_server, trained_store, name,
                               **server.client_settings(port, client_certificate=mutual))
    assert settings.mongo_client_kwargs()["tls"] is True  # the options the worker hands PyMongo
    documents = plant_documents(small_plant, RECORDS, name)
    # The harness writes through the main TLS port; the listeners share one backend.
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.uri, **server.client_kwargs())
    try:
        with capture_logs() as logs:
            async with running_worker(settings) as worker:
                assert (await get(worker, "/readyz")).json()["ready"] is True
                await client[settings.mongo_database][settings.mongo_collection].insert_many(documents)
                verdicts = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, RECORDS))
    finally:
        await client.close()
    assert sorted(v["record_id"] for v in verdicts) == sorted(d[small_plant.schema.record_id] for d in documents)
    if mutual:  # the client key's password reaches PyMongo, never the log
        assert server.pki.client_key_password not in json.dumps(logs, default=str)


async def test_tls_failures_keep_the_worker_not_ready_naming_the_server_and_cause(
    mongo_tls_server: MongoServer, mongo_server: MongoServer, kafka_server: Any, trained_store: Path
) -> None:
    tls = mongo_tls_server
    main, expired, mtls = (f"127.0.0.1:{p}" for p in (tls.port, tls.expired_port, tls.mtls_port))
    plain = f"127.0.0.1:{mongo_server.port}"
    cases: dict[str, tuple[dict[str, Any], str, str]] = {  # case -> (settings, server named, cause)
        "another CA": ({**tls.client_settings(), "mongo_tls_ca_file": tls.pki.other_ca_file}, main,
                       "TLS certificate verify failed: unable to get local issuer certificate (the server's "
                       "certificate is not signed by a CA the worker trusts: set mongo_tls_ca_file"),
        "expired": (tls.client_settings(tls.expired_port), expired,
                    "TLS certificate verify failed: certificate has expired (renew the MongoDB server's certificate)"),
        "TLS off": ({"mongo_uri": tls.uri}, main,
                    "connection closed by the server without a reply (if the server requires TLS: set mongo_tls"),
        "no client certificate": (tls.client_settings(tls.mtls_port), mtls,
                                  "TLS handshake refused by the server: it wants a client certificate"),
        # mongo-java-server leaves a TLS hello unanswered (a real mongod hangs up): no driver error
        # to name, so readiness says what a TCP connect shows, and that TLS may be the reason.
        "TLS on, plain server": ({"mongo_uri": mongo_server.uri, "mongo_tls": True}, plain,
                                 "accepts connections but does not answer (server hung, not a MongoDB server, or no "
                                 "TLS on this port while mongo_tls is on)"),
    }
    workers: dict[str, Worker] = {}
    tasks: list[asyncio.Task[int]] = []
    with capture_logs() as logs:
        try:
            for case, (overrides, _, _) in cases.items():  # all at once: each waits on its own timeouts
                # ready_timeout_s: production's default, shorter than the driver's server selection,
                # so /readyz must take the cause from the driver's monitor, not from its own ping error.
                settings = worker_settings(tls, kafka_server, trained_store, unique("tlsfail"), **overrides,
                                           ready_timeout_s=0.5)
                workers[case] = Worker(settings)
                tasks.append(asyncio.create_task(serve(workers[case])))

            async def named(case: str) -> dict[str, Any]:
                worker, (_, where, cause) = workers[case], cases[case]
                deadline = time.monotonic() + 60
                body: dict[str, Any] = {}
                while True:
                    assert not any(t.done() for t in tasks), [t.result() for t in tasks if t.done()]
                    if worker.http_port is not None:
                        body = (await get(worker, "/readyz")).json()
                        # Kafka connects meanwhile (a plain broker): then MongoDB is the only reason.
                        reasons = body.get("reasons", {})
                        if list(reasons) == ["mongodb"] and where in reasons["mongodb"] and cause in reasons["mongodb"]:
                            return body
                    assert time.monotonic() < deadline, f"{case}: /readyz does not name {where} and {cause!r}: {body}"
                    await asyncio.sleep(0.2)

            bodies = dict(zip(cases, await asyncio.gather(*(named(c) for c in cases))))

            def logged(case: str) -> bool:
                """The worker's lease retry line names the server, and the cause first in its error."""
                _, where, cause = cases[case]
                if case == "TLS on, plain server":  # the driver has no error to name (see above): the server only
                    return any(e["event"] == LEASE_RETRY and e.get("server") == where for e in logs)
                return any(e["event"] == LEASE_RETRY and e.get("server") == where and where in e["error"]
                           and e["error"].startswith(cause.split(" (")[0]) and "\n" not in e["error"] for e in logs)

            # Each worker's first lease attempt fails within mongo_timeout_ms; wait for it, no fixed pause.
            deadline = time.monotonic() + 30
            while missing := [c for c in cases if not logged(c)]:
                assert time.monotonic() < deadline, f"no log line naming the server and cause: {missing}"
                await asyncio.sleep(0.2)
        finally:
            for worker in workers.values():
                worker.stop()
            codes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    assert all(code == 0 for code in codes), codes
    for case, (_, where, cause) in cases.items():
        body = bodies[case]
        assert body["ready"] is False
        reason = body["reasons"]["mongodb"]
        assert "\n" not in reason
        print(f"{case}: {reason}")  # what an operator sees (pytest -s)
        if case == "TLS on, plain server":
            assert reason.startswith(f"mongodb: {where}: {cause}"), reason
        else:
            assert reason.startswith(f"mongodb {where}: {cause}"), reason


@pytest.mark.parametrize("wrong", ["not a key", "wrong password"])
def test_an_unusable_client_key_stops_the_start_with_one_line(trained_store, tmp_path, wrong):
    """PyMongo reads the client key when the client is built: a bad file or password is a
    settings error (exit 2, one line naming the file), not a traceback."""
    from typer.testing import CliRunner

    from service.cli import app
    from service.devservers import free_port
    from service.devservers.tls import make_pki

    pki = make_pki(tmp_path / "pki", "127.0.0.1")
    key_file = pki.client_pem if wrong == "wrong password" else tmp_path / "junk.pem"
    if wrong == "not a key":
        key_file.write_text("junk")
    (tmp_path / "empty.env").write_text("")
    dead = f"127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, [
        "run", "--store", str(trained_store), "--env-file", str(tmp_path / "empty.env"), "--http-port", "0",
        "--mongo-uri", f"mongodb://{dead}/?directConnection=true", "--kafka-bootstrap-servers", dead,
        "--mongo-tls", "--mongo-tls-ca-file", str(pki.ca_file), "--mongo-tls-certificate-key-file", str(key_file)],
        env={"MOLDWATCH_MONGO_TLS_CERTIFICATE_KEY_PASSWORD": "not-the-password"})
    assert result.exit_code == 2, result.output
    line = [text for text in result.output.splitlines() if text.startswith("error:")]
    assert len(line) == 1 and f"mongo_tls_certificate_key_file {key_file}" in " ".join(result.output.split())
    assert "not-the-password" not in result.output and "Traceback" not in result.output
