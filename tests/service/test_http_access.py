"""Hostile clients against the real HTTP server: every scoped endpoint refuses what it should, the
probes stay open, tokens rotate without a restart, and a burst of bad attempts neither gets in nor
stops the verdict stream."""
from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import httpx
import pytest
from pymongo import AsyncMongoClient
from typer.testing import CliRunner

from service.cli import app
from service.http_auth import token_line
from service.run_command import serve
from service.token_command import revoke
from service.worker import Worker
from tests.service.test_http import jsonable, serving_offline
from tests.support.raw_http import post_score
from tests.support.worker_helpers import (
    metric,
    plant_documents,
    read_topic,
    running_worker,
    unique,
    values,
    wait_for,
    worker_settings,
)

OPERATOR = "mw_operator-" + "o" * 34
SCRAPER = "mw_scraper-" + "s" * 35
READER = "mw_reader-" + "r" * 36


def write_tokens(path: Path, *lines: str) -> Path:
    staged = path.with_name(path.name + ".new")
    staged.write_text("\n".join(lines) + "\n")
    staged.replace(path)  # atomic, as `moldwatch token` writes it
    return path


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    return write_tokens(tmp_path / "tokens.txt", token_line("operator", ["score", "recipes"], OPERATOR),
                        token_line("scraper", ["metrics"], SCRAPER), token_line("reader", ["recipes"], READER))


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_each_hostile_request_is_refused_with_one_line_and_the_probes_stay_open(trained_store, small_plant,
                                                                                     tokens_file):
    document = jsonable(plant_documents(small_plant, 1, "http-auth", offset=2000)[0])
    async with (
        serving_offline(trained_store, http_tokens_file=tokens_file, http_auth_burst=1000) as worker,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.http_port}", timeout=10) as client,
    ):
        answers = {
            "no token": await client.post("/score", json=document),
            "wrong token": await client.post("/score", json=document, headers=auth(OPERATOR[:-1] + "x")),
            "basic auth": await client.post("/score", json=document, headers={"authorization": "Basic b3A6cA=="}),
            "oversized": await client.post("/score", json=document, headers=auth("x" * 4_000)),
            "no scope": await client.post("/score", json=document, headers=auth(READER)),
            "metrics no token": await client.get("/metrics"),
            "metrics wrong scope": await client.get("/metrics", headers=auth(OPERATOR)),
            "recipes no token": await client.get("/recipes/F01/ITM-001"),
            "recipes wrong scope": await client.get("/recipes/F01/ITM-001", headers=auth(SCRAPER)),
            "feedback no scope": await client.post("/feedback", json={}, headers=auth(OPERATOR)),
            "unknown path": await client.get("/admin"),
            "docs": await client.get("/docs"),
            "openapi": await client.get("/openapi.json"),
        }
        try:  # beyond the HTTP parser's own header limit (16 KiB): the connection is dropped unanswered
            huge = (await client.post("/score", json=document, headers=auth("x" * 100_000))).status_code
        except (httpx.ReadError, httpx.RemoteProtocolError):
            huge = None
        allowed = {
            "score": await client.post("/score", json=document, headers=auth(OPERATOR)),
            "recipes": await client.get("/recipes/F01/ITM-001", headers=auth(READER)),
            "metrics": await client.get("/metrics", headers=auth(SCRAPER)),
            "unknown path, valid token": await client.get("/admin", headers=auth(SCRAPER)),
            "docs, valid token": await client.get("/docs", headers=auth(SCRAPER)),
            "healthz": await client.get("/healthz"),
            "readyz": await client.get("/readyz"),  # 503: offline, but answered without a token
        }
    statuses = {case: response.status_code for case, response in answers.items()}
    assert statuses == {"no token": 401, "wrong token": 401, "basic auth": 401, "oversized": 401, "no scope": 403,
                        "metrics no token": 401, "metrics wrong scope": 403, "recipes no token": 401,
                        "recipes wrong scope": 403, "feedback no scope": 403, "unknown path": 401, "docs": 401,
                        "openapi": 401}
    for case, response in answers.items():
        body = response.json()
        assert set(body) == {"reason", "error"} and "\n" not in body["error"], case
        for secret_or_name in (OPERATOR, SCRAPER, READER, "operator", "scraper", "reader", "sha256"):
            assert secret_or_name not in response.text, (case, secret_or_name)  # never who exists
        if response.status_code == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert answers["oversized"].json()["reason"] == "oversized"
    assert huge is None or 400 <= huge < 500
    assert answers["no scope"].json()["error"] == "this token does not carry the 'score' scope"
    assert {case: r.status_code for case, r in allowed.items()} == {
        "score": 200, "recipes": 404, "metrics": 200, "unknown path, valid token": 404, "docs, valid token": 404,
        "healthz": 200, "readyz": 503}
    assert allowed["score"].json()["record_id"] == document[small_plant.schema.record_id]
    assert allowed["recipes"].json()["reason"] == "recipes_not_configured"  # past the gate: the app's own answer
    exposition = allowed["metrics"].text
    assert 'moldwatch_http_auth_failures_total{reason="missing_token"} 6.0' in exposition
    assert 'moldwatch_http_auth_failures_total{reason="missing_scope"} 4.0' in exposition
    assert 'moldwatch_http_auth_failures_total{reason="invalid_token"} 1.0' in exposition
    assert f'moldwatch_http_auth_failures_total{{reason="oversized"}} {1.0 + (huge is not None)}' in exposition
    assert 'moldwatch_http_auth_failures_total{reason="bad_scheme"} 1.0' in exposition
    assert "moldwatch_http_tokens 3.0" in exposition


async def test_tokens_rotate_without_a_restart_and_a_refused_file_keeps_the_last_good_tokens(trained_store,
                                                                                                tokens_file):
    async with (
        serving_offline(trained_store, http_tokens_file=tokens_file, store_poll_s=0.05) as worker,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.http_port}", timeout=10) as client,
    ):
        async def status(token: str) -> int:
            return (await client.get("/metrics", headers=auth(token))).status_code

        assert await status(SCRAPER) == 200
        revoke("scraper", tokens_file)  # the CLI's own rewrite
        await wait_for(lambda: status(SCRAPER), timeout=10)  # still reachable while it settles
        await wait_for(lambda: _is(status(SCRAPER), 401), timeout=10)
        new = "mw_rotated-" + "n" * 35
        write_tokens(tokens_file, token_line("scraper2", ["metrics"], new))
        await wait_for(lambda: _is(status(new), 200), timeout=10)
        assert await status(SCRAPER) == 401  # a revoked token replayed stays out
        tokens_file.write_text("scraper3 metrics " + new + "\n")  # a token in clear: refused
        await wait_for(lambda: metric(worker, "moldwatch_http_tokens_rejected") == 1, timeout=10)
        assert await status(new) == 200  # the last good table still holds
        ready = (await client.get("/readyz")).json()
        assert "token in clear" in ready["warnings"]["http_tokens"] and new not in json.dumps(ready)
        write_tokens(tokens_file, token_line("scraper3", ["metrics"], new))
        await wait_for(lambda: metric(worker, "moldwatch_http_tokens_rejected") == 0, timeout=10)
        assert "warnings" not in (await client.get("/readyz")).json()


async def _is(status: object, expected: int) -> bool:
    return await status == expected  # type: ignore[misc]


@pytest.mark.servers
@pytest.mark.timeout(300)
async def test_a_burst_of_bad_attempts_gets_nothing_and_does_not_stop_the_verdict_stream(
        mongo_server, kafka_server, trained_store, small_plant, tokens_file):
    """10,000 requests with wrong, missing and scope-less credentials while 300 records stream in:
    0 accepted, all verdicts delivered; the client is answered 429 once its budget is used."""
    name = unique("http-flood")
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, http_tokens_file=tokens_file)
    documents = plant_documents(small_plant, 300, name)
    async with running_worker(settings) as worker, AsyncMongoClient(mongo_server.uri) as mongo:
        collection = mongo[settings.mongo_database][settings.mongo_collection]
        headers = [auth("mw_guess-" + str(i)) for i in range(10)] + [{}, auth(READER), {"authorization": "x" * 600}]
        inserting = asyncio.create_task(_insert_slowly(collection, documents))
        parts = await asyncio.gather(*(_attack(worker.http_port, range(s, 10_000, 16), headers) for s in range(16)))
        codes = [code for part in parts for code in part]
        await inserting
        verdicts = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 300,
                                           timeout=120))
    assert len(codes) == 10_000
    assert set(codes) <= {401, 403, 429} and codes.count(429) >= 9_900  # the budget (20) is spent at once
    assert metric(worker, "moldwatch_http_auth_failures_total") == 10_000
    assert sorted(v["record_id"] for v in verdicts) == sorted(d[small_plant.schema.record_id] for d in documents)


async def _attack(port: int, indices: range, headers: list[dict[str, str]]) -> list[int]:
    """POST /score on one kept-alive connection, one request after another, as a raw socket client
    (an HTTP library would spend more time on itself than the server spends refusing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    codes = []
    try:
        for i in indices:
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers[i % len(headers)].items())
            codes.append(await post_score(reader, writer, extra))
    finally:
        writer.close()
    return codes


async def _insert_slowly(collection, documents) -> None:
    for start in range(0, len(documents), 20):
        await collection.insert_many(documents[start:start + 20])
        await asyncio.sleep(0.05)  # a stream, not one batch: verdicts flow while the attack runs


def test_run_refuses_open_scoped_endpoints_on_the_network(tmp_path):
    result = CliRunner().invoke(app, ["run", "--http-host", "0.0.0.0", "--store", str(tmp_path / "none"),
                                      "--env-file", str(_empty(tmp_path))])
    assert result.exit_code == 2
    assert result.output.count("\n") <= 3 and "would serve /score, /recipes and /metrics to anyone" in result.output
    assert "--http-allow-open" in result.output


@pytest.mark.parametrize("content, expected", [
    (None, "tokens file not found"),
    ("op score mw_clear-token-pasted\n", "tokens.txt:1: expected sha256:<64 lowercase hex digits> (this looks like a token in clear"),
    (b"\xff\xfe", "not UTF-8 text"),
])
def test_run_refuses_a_tokens_file_it_cannot_read_naming_the_line(tmp_path, content, expected):
    path = tmp_path / "tokens.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    result = CliRunner().invoke(app, ["run", "--http-tokens-file", str(path), "--store", str(tmp_path / "none"),
                                      "--env-file", str(_empty(tmp_path))])
    assert result.exit_code == 2 and expected in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.env"
    path.write_text("")
    return path


async def test_https_with_mutual_tls_serves_only_clients_with_a_certificate(trained_store, tmp_path, tokens_file):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("plant-dashboard")
    server.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    async with serving_offline(trained_store, http_tokens_file=tokens_file, http_tls_cert_file=tmp_path / "server.pem",
                               http_tls_key_file=tmp_path / "server.pem",
                               http_tls_client_ca_file=tmp_path / "ca.pem") as worker:
        url = f"https://127.0.0.1:{worker.http_port}"
        trusted = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with_cert.load_cert_chain(str(tmp_path / "client.pem"))
        async with httpx.AsyncClient(verify=with_cert, timeout=10) as client:
            assert (await client.get(url + "/metrics", headers=auth(SCRAPER))).status_code == 200
            assert (await client.get(url + "/metrics")).status_code == 401  # a certificate is not a token
        async with httpx.AsyncClient(verify=trusted, timeout=10) as client:
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                await client.get(url + "/healthz")  # no client certificate: the handshake fails
        async with httpx.AsyncClient(timeout=10) as client:  # plain HTTP to the HTTPS port
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
                await client.get(f"http://127.0.0.1:{worker.http_port}/healthz")


async def test_https_certificate_problems_are_one_line_naming_the_file(trained_store, tmp_path):
    (tmp_path / "cert.pem").write_text("not a certificate")
    worker = Worker(_offline_settings(trained_store, http_tls_cert_file=tmp_path / "cert.pem",
                                      http_tls_key_file=tmp_path / "cert.pem"))
    with pytest.raises(OSError, match=r"HTTPS: .*cert.pem / .*cert.pem: not a usable certificate and key"):
        await serve(worker)
    worker = Worker(_offline_settings(trained_store, http_tls_cert_file=tmp_path / "missing.pem",
                                      http_tls_key_file=tmp_path / "missing.pem"))
    with pytest.raises(OSError, match=r"HTTPS: .*missing.pem: file not found"):
        await serve(worker)


def _offline_settings(store: Path, **overrides):
    from service.config import WorkerSettings
    from service.devservers import free_port

    dead = f"127.0.0.1:{free_port()}"
    return WorkerSettings(_env_file=None, store=store, http_host="127.0.0.1", http_port=0,  # type: ignore[call-arg]
                          kafka_bootstrap_servers=dead, mongo_uri=f"mongodb://{dead}/?directConnection=true",
                          mongo_timeout_ms=300, **overrides)
