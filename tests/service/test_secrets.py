"""Secrets never reach logs, error messages, metrics or probe answers, whatever characters they hold
and whichever form the drivers accept them in (URI userinfo escaped or not, URI options, SASL and
TLS key passwords, environment)."""
from __future__ import annotations

import asyncio
import io
import json
import logging
from urllib.parse import quote_plus

import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

from service.config import WorkerSettings
from service.devservers import free_port
from service.logs import configure_logging
from service.redact import MASK, SCRUB, Scrubber, redact_uri, uri_secrets
from service.run_command import serve
from service.worker import Worker
from tests.support.worker_helpers import wait_for

ODD = ["p#ss/w@rd:1", "a/b/c", "x@y@z", "c:o:l:o:n", "h#sh#", "per%cent", "sp ace+plus", "q?u=e&ry", "ü-ñí©ødé"]


@pytest.mark.parametrize("password", ODD)
def test_uri_userinfo_is_masked_escaped_or_not(password):
    for written in (password, quote_plus(password)):
        uri = f"mongodb://moldwatch:{written}@db1:27017,db2:27018/plant?authSource=admin"
        redacted = redact_uri(uri)
        assert password not in redacted and written not in redacted
        assert redacted.startswith("mongodb://***@") and "db2:27018" in redacted.split("@")[-1]


@pytest.mark.parametrize("option", ["password", "authMechanismProperties", "tlsCertificateKeyFilePassword"])
def test_secret_uri_options_are_masked(option):
    uri = f"mongodb://db1/?authMechanism=MONGODB-AWS&{option}=AWS_SESSION_TOKEN:t0k3n-v4lue&appname=x"
    redacted = redact_uri(uri)
    assert "t0k3n-v4lue" not in redacted and f"{option}={MASK}" in redacted and "appname=x" in redacted
    assert "t0k3n-v4lue" in uri_secrets(uri)


@hsettings(max_examples=200, deadline=None)
@given(password=st.text(min_size=3, max_size=30).filter(lambda p: p.strip() == p and len(set(p)) > 2))
def test_any_registered_secret_is_scrubbed_from_any_text(password):
    scrubber = Scrubber()
    scrubber.register([password])
    for text in (f"auth failed for {password}!", f"uri mongodb://u:{quote_plus(password)}@h/", repr({"pw": password})):
        assert password not in scrubber(text) and quote_plus(password, safe="") not in scrubber(text)


@pytest.mark.parametrize("uri", [
    "mongodb://moldwatch:pa/ss#w0rd@db1/plant",  # '/' cuts the host part: 'Bad database name'
    "mongodb://moldwatch:p@ss#w0rd@db1/plant",  # unescaped '@'
    "mongodb://moldwatch:p:ss#w0rd@db1/plant",  # unescaped ':'
    "mongodb://db1/plant?password=ss#w0rd",  # not an option PyMongo knows
])
def test_an_unparseable_uri_is_a_one_line_error_without_the_password(uri):
    with pytest.raises(ValidationError) as info:
        WorkerSettings(_env_file=None, mongo_uri=uri)  # type: ignore[call-arg]
    assert "ss#w0rd" not in str(info.value) and "cannot be used" in str(info.value)
    from service.cli import app

    result = CliRunner().invoke(app, ["run"], env={"MOLDWATCH_MONGO_URI": uri})
    output = result.output + (result.stderr if result.stderr_bytes else "")
    assert result.exit_code != 0
    assert "ss#w0rd" not in output and "Traceback" not in output
    assert len([line for line in output.splitlines() if line.strip()]) <= 2, output


async def test_no_secret_in_logs_probes_or_metrics_of_a_running_worker(trained_store, monkeypatch):
    mongo_pw, sasl_pw, env_pw = "m#ng/o@pw:1", "s@sl#p/w:2", "e/nv@pw#3"
    dead_mongo, dead_kafka = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("MOLDWATCH_MONGO_TLS_CERTIFICATE_KEY_PASSWORD", env_pw)
    settings = WorkerSettings(  # type: ignore[call-arg]
        _env_file=None, store=trained_store, http_host="127.0.0.1", http_port=0, ready_cache_s=0,
        mongo_uri=f"mongodb://moldwatch:{quote_plus(mongo_pw)}@{dead_mongo}/?directConnection=true&authSource=admin",
        mongo_timeout_ms=300, kafka_bootstrap_servers=dead_kafka, kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="moldwatch", kafka_sasl_password=sasl_pw, kafka_request_timeout_ms=1000)
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    worker = Worker(settings)
    task = asyncio.create_task(serve(worker))
    outputs: list[str] = []
    try:
        await wait_for(lambda: worker.http_port is not None, timeout=60)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.http_port}") as client:
            for path in ("/readyz", "/healthz", "/metrics"):
                outputs.append((await client.get(path)).text)
        logging.getLogger("pymongo").error("driver says %s and %s", mongo_pw, quote_plus(mongo_pw))  # a leaky library
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)
        logging.getLogger().handlers.clear()
        SCRUB.clear()
    outputs.append(stream.getvalue())
    text = "\n".join(outputs)
    assert "worker starting" in text and "mongodb" in json.loads(outputs[0])["reasons"]
    for secret in (mongo_pw, sasl_pw, env_pw):
        assert secret not in text and quote_plus(secret) not in text, secret


def test_a_set_secret_is_masked_and_an_unset_one_is_shown_unset():
    from service.logs import mask_secrets

    event = {"mongo_password": None, "kafka_sasl_password": "plain str by mistake", "token": SecretStr("t0k"),
             "password": "", "store": "/data/store"}
    masked = mask_secrets(None, "info", dict(event))
    assert masked == {"mongo_password": None, "kafka_sasl_password": MASK, "token": MASK, "password": MASK,
                      "store": "/data/store"}
