"""Worker settings, `moldwatch run --help`, logs (secrets never printed) and metrics plumbing."""
from __future__ import annotations

import io
import json
import logging
import math

import pytest
import structlog
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

from service.cli import app
from service.config import WorkerSettings, env_name, redact_uri
from service.logs import configure_logging
from service.metrics import CacheStatsCollector, LatencyWindow, WorkerMetrics


def test_settings_come_from_prefixed_env_and_dotenv(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("MOLDWATCH_BATCH_SIZE=123\nMOLDWATCH_MONGO_PASSWORD=s3cret\nMOLDWATCH_MONGO_USERNAME=svc\n")
    monkeypatch.setenv("MOLDWATCH_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("MOLDWATCH_BATCH_SIZE", "77")  # the environment wins over .env
    settings = WorkerSettings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.batch_size == 77 and settings.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert isinstance(settings.mongo_password, SecretStr)
    assert "s3cret" not in repr(settings) and "s3cret" not in json.dumps(settings.safe_summary(), default=str)
    assert settings.mongo_client_kwargs()["password"] == "s3cret"  # only the client sees it


def test_invalid_combinations_are_refused_with_a_reason():
    with pytest.raises(ValidationError, match="kafka_sasl_username"):
        WorkerSettings(_env_file=None, kafka_sasl_mechanism="SCRAM-SHA-512")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="go together"):
        WorkerSettings(_env_file=None, kafka_tls_cert_file="c.pem")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        WorkerSettings(_env_file=None, source="postgres")  # type: ignore[call-arg]


def test_kafka_security_protocol_follows_tls_and_sasl():
    scram = WorkerSettings(_env_file=None, kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username="u",  # type: ignore[call-arg]
                           kafka_sasl_password="p", kafka_tls=True)
    kwargs = scram.kafka_security_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-256"
    assert kwargs["sasl_plain_password"] == "p" and kwargs["ssl_context"] is not None
    assert WorkerSettings(_env_file=None).kafka_security_kwargs() == {"security_protocol": "PLAINTEXT"}  # type: ignore[call-arg]
    mongo = WorkerSettings(_env_file=None, mongo_tls=True, mongo_auth_mechanism="SCRAM-SHA-256",  # type: ignore[call-arg]
                           mongo_username="u", mongo_password="p", mongo_tls_ca_file="/etc/ca.pem")
    kwargs = mongo.mongo_client_kwargs()
    assert kwargs["tls"] is True and kwargs["tlsCAFile"] == "/etc/ca.pem" and kwargs["authMechanism"] == "SCRAM-SHA-256"


def test_uris_lose_their_credentials_in_summaries():
    assert redact_uri("mongodb://user:pw@db1:27017,db2/plant?tls=true") == "mongodb://***@db1:27017,db2/plant?tls=true"
    assert redact_uri("mongodb://db1") == "mongodb://db1"


def test_run_help_lists_every_setting_and_its_environment_variable():
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert result.exit_code == 0, result.output
    for name, field in WorkerSettings.model_fields.items():
        assert env_name(name) in result.output, name
        if not (field.json_schema_extra or {}).get("secret"):
            assert "--" + name.replace("_", "-") in result.output, name
    assert "--mongo-password" not in result.output  # secrets: environment or .env only


def test_run_refuses_a_bad_setting_with_one_line(tmp_path):
    result = CliRunner().invoke(app, ["run", "--batch-size", "0", "--env-file", str(tmp_path / "missing.env")])
    assert result.exit_code == 2 and "env file not found" in result.output
    (tmp_path / "empty.env").write_text("")
    result = CliRunner().invoke(app, ["run", "--batch-size", "0", "--env-file", str(tmp_path / "empty.env")])
    assert result.exit_code == 2 and "--batch-size / MOLDWATCH_BATCH_SIZE" in result.output
    result = CliRunner().invoke(app, ["run", "--mongo-uri", "http://x", "--env-file", str(tmp_path / "empty.env")])
    assert result.exit_code == 2
    assert "--mongo-uri / MOLDWATCH_MONGO_URI: MongoDB URI http://x cannot be used" in " ".join(result.output.split())
    assert "Value error" not in result.output  # pydantic's wrapping is no part of the reason


def test_json_logs_when_not_a_terminal_and_secrets_masked():
    stream = io.StringIO()
    try:
        configure_logging("info", "auto", stream=stream)
        structlog.get_logger("t").info("hello", password="pw-plain", token=SecretStr("pw-secret"), n=1)
        logging.getLogger("some.library").warning("stdlib too")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "hello" and lines[0]["level"] == "info" and lines[0]["n"] == 1 and "timestamp" in lines[0]
    assert lines[1]["event"] == "stdlib too" and lines[1]["level"] == "warning"
    assert "pw-plain" not in stream.getvalue() and "pw-secret" not in stream.getvalue()


def test_console_logs_are_key_value():
    stream = io.StringIO()
    try:
        configure_logging("info", "console", stream=stream)
        structlog.get_logger("t").info("hello", facility="F01")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert "hello" in stream.getvalue() and "facility=F01" in stream.getvalue()


def test_each_worker_has_its_own_registry_and_counters_survive_engine_swaps():
    a, b = WorkerMetrics(), WorkerMetrics()
    a.observe_verdict({"facility": "F1", "item": None, "anomaly": True, "resolution": "exact", "imputed": ["item"]})
    assert a.registry is not b.registry
    assert a.registry.get_sample_value("moldwatch_anomalies_total", {"facility": "F1", "item": "none"}) == 1
    assert b.registry.get_sample_value("moldwatch_anomalies_total", {"facility": "F1", "item": "none"}) is None
    assert a.registry.get_sample_value("moldwatch_imputed_fields_total", {"field": "item"}) == 1

    class Stats:
        hits, misses, loads, evictions = 5, 2, 2, 0

    class Engine:
        def __init__(self):
            self.cache = type("Cache", (), {"stats": Stats(), "__len__": lambda self: 2})()

    collector = CacheStatsCollector()
    collector.track(Engine())
    collector.track(Engine())  # a hot reload: the old engine's counts are kept
    assert collector.totals() == {"hits": 10, "misses": 4, "loads": 4, "evictions": 0}


def test_latency_window_quantiles():
    window = LatencyWindow(maxlen=1000)
    for i in range(1, 101):
        window.add(i / 1000)
    q = window.quantiles((0.5, 0.99))
    assert q[0.5] == pytest.approx(0.051) and q[0.99] == pytest.approx(0.1)


def test_latency_window_keeps_the_newest_in_order_and_clears():
    window = LatencyWindow(maxlen=4)
    assert len(window) == 0 and window.values == [] and math.isnan(window.quantiles((0.5,))[0.5])
    for i in range(1, 4):
        window.add(float(i))
    assert len(window) == 3 and window.values == [1.0, 2.0, 3.0]
    for i in range(4, 11):
        window.add(float(i))
    assert len(window) == 4 and window.values == [7.0, 8.0, 9.0, 10.0]  # oldest first, the oldest gone
    window.clear()
    assert len(window) == 0 and window.values == []
    window.add(0.5)
    assert window.values == [0.5] and window.quantiles((0.99,)) == {0.99: 0.5}


def test_latency_window_allocates_nothing_while_it_fills():
    """Its memory is taken whole at start: filling it (and refilling after a clear) must not grow
    the process (a deque of floats grew ~6.5 MB over the first 200,000 verdicts)."""
    import inspect
    import tracemalloc

    # Only what the window's own code allocates: threads other tests left running in this process
    # (a Kafka client, a Dask cluster's heartbeats) allocate meanwhile too.
    mine = [tracemalloc.Filter(True, inspect.getsourcefile(LatencyWindow) or "")]
    window = LatencyWindow(maxlen=50_000)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(mine)
        for i in range(120_000):
            window.add(i * 1e-4)
            if i == 60_000:
                window.clear()
        after = tracemalloc.take_snapshot().filter_traces(mine)
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(window) == 50_000
    assert grown < 10_000, grown
