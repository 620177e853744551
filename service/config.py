"""Worker settings: one flat pydantic-settings model, read from ``MOLDWATCH_*`` variables and ``.env``.

Flat on purpose: every field is one environment variable (``MOLDWATCH_KAFKA_BOOTSTRAP_SERVERS``)
and one ``moldwatch run`` option (``--kafka-bootstrap-servers``), so an SRE can map a Helm value, an
env var and a flag onto each other without reading code. Secrets are ``SecretStr``: they print as
``**********`` everywhere (repr, logs, ``safe_summary``) and are only read where a client needs them.
"""
from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.redact import one_line, redact_uri, uri_secrets

ENV_PREFIX = "MOLDWATCH_"

# Help panels of ``moldwatch run --help``: each setting names its panel in json_schema_extra.
SOURCE, MONGO, KAFKA, STORE, FLOW, HTTP, LOGS = "Source", "MongoDB", "Kafka", "Model store", "Batching & flow", "HTTP", "Logs"


def _panel(panel: str, **extra: Any) -> dict[str, Any]:
    return {"panel": panel, **extra}


class WorkerSettings(BaseSettings):
    """Everything the streaming worker reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",  # a shared .env may hold other tools' variables
        validate_default=True,
        hide_input_in_errors=True,  # a rejected value may be a URI with a password in it
    )

    # -- source ----------------------------------------------------------------------------------
    source: Literal["mongo", "kafka"] = Field(
        "mongo", description="Where raw records come from: the MongoDB change stream, or a Kafka topic (scale-out).",
        json_schema_extra=_panel(SOURCE))
    worker_name: str = Field(
        "moldwatch", min_length=1,
        description="Name of this worker's stream: the checkpoint document id (one per watched collection).",
        json_schema_extra=_panel(SOURCE))
    start_from: Literal["now", "beginning"] = Field(
        "now", description="Without any checkpoint: start at the stream's current end, or backfill the whole collection first.",
        json_schema_extra=_panel(SOURCE))
    delivery: Literal["at-least-once", "exactly-once"] = Field(
        "at-least-once", description="at-least-once: checkpoint after Kafka acks (a crash re-scores the records after the "
        "last checkpoint). exactly-once: verdicts, alarms, dead letters and the source position in one Kafka "
        "transaction per batch (consumers must read with isolation.level=read_committed).",
        json_schema_extra=_panel(SOURCE))
    lease_ttl_s: float = Field(
        15.0, gt=0, description="One running worker per worker_name (MongoDB source, at-least-once): the checkpoint "
        "document's lease lasts this long and is renewed every third of it; a second worker with the same name waits "
        "(not ready) and takes over when the first stops renewing (at once when it was this host's previous process).",
        json_schema_extra=_panel(SOURCE))
    backfill_id_margin_s: float = Field(
        2.0, ge=0, description="On lost change-stream history, backfill by insertion order (ObjectId _id) from this many "
        "seconds before the highest _id answered: covers inserting clients whose clocks differ by up to this much "
        "(costs re-scoring what was inserted in that window).", json_schema_extra=_panel(SOURCE))
    backfill_margin_s: float = Field(
        0.0, ge=0, description="On lost change-stream history, backfill from this many seconds before the last "
        "processed record (catches late-arriving records; costs duplicates).", json_schema_extra=_panel(SOURCE))

    # -- MongoDB ---------------------------------------------------------------------------------
    mongo_uri: str = Field("mongodb://localhost:27017", description="MongoDB connection URI (credentials belong in "
                           "MOLDWATCH_MONGO_PASSWORD, not here).", json_schema_extra=_panel(MONGO))
    mongo_database: str = Field("moldwatch", min_length=1, description="Database of the production collection.",
                                json_schema_extra=_panel(MONGO))
    mongo_collection: str = Field("shots", min_length=1, description="Production collection to watch (one document per shot).",
                                  json_schema_extra=_panel(MONGO))
    mongo_checkpoint_collection: str = Field("moldwatch_checkpoints", min_length=1,
                                             description="Collection (same database) holding resume-token checkpoints.",
                                             json_schema_extra=_panel(MONGO))
    mongo_tls: bool = Field(False, description="Connect to MongoDB over TLS.", json_schema_extra=_panel(MONGO))
    mongo_tls_ca_file: Path | None = Field(None, description="CA bundle (PEM) that signed the MongoDB server certificate.",
                                           json_schema_extra=_panel(MONGO))
    mongo_tls_certificate_key_file: Path | None = Field(
        None, description="Client certificate and private key in one PEM file (X.509 / mutual TLS).",
        json_schema_extra=_panel(MONGO))
    mongo_tls_certificate_key_password: SecretStr | None = Field(
        None, description="Password of the client key, if encrypted.", json_schema_extra=_panel(MONGO, secret=True))
    mongo_auth_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-1", "MONGODB-X509"] | None = Field(
        None, description="Authentication mechanism (default: none, or the URI's).", json_schema_extra=_panel(MONGO))
    mongo_username: str | None = Field(None, description="MongoDB user.", json_schema_extra=_panel(MONGO))
    mongo_password: SecretStr | None = Field(None, description="MongoDB password.", json_schema_extra=_panel(MONGO, secret=True))
    mongo_auth_source: str | None = Field(None, description="Database that holds the user (MongoDB's default: admin).",
                                          json_schema_extra=_panel(MONGO))
    mongo_timeout_ms: int = Field(5000, gt=0, description="Server selection / connect timeout for MongoDB calls.",
                                  json_schema_extra=_panel(MONGO))

    # -- Kafka -----------------------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field("localhost:9092", description="Comma-separated host:port list.",
                                         json_schema_extra=_panel(KAFKA))
    kafka_verdicts_topic: str = Field("moldwatch.verdicts", min_length=1, description="One verdict per record.",
                                      json_schema_extra=_panel(KAFKA))
    kafka_alarms_topic: str = Field("moldwatch.alarms", min_length=1, description="Verdicts that are anomalies.",
                                    json_schema_extra=_panel(KAFKA))
    kafka_dead_letters_topic: str = Field("moldwatch.dead-letters", min_length=1,
                                          description="Undecodable or invalid records, with the reason and the original.",
                                          json_schema_extra=_panel(KAFKA))
    kafka_records_topic: str = Field("moldwatch.records", min_length=1,
                                     description="Raw records (source=kafka), e.g. from the MongoDB Kafka source connector.",
                                     json_schema_extra=_panel(KAFKA))
    kafka_new_topic_partitions: int = Field(
        1, ge=1, description="Partitions of an output topic (verdicts, alarms, dead letters) the worker creates at start "
        "because it is missing (the broker's own default for auto-created topics is 1). Existing topics are never changed.",
        json_schema_extra=_panel(KAFKA))
    kafka_group_id: str = Field("moldwatch-workers", min_length=1, description="Consumer group of the workers (source=kafka).",
                                json_schema_extra=_panel(KAFKA))
    kafka_client_id: str = Field("moldwatch", description="Client id shown in broker logs and quotas.",
                                 json_schema_extra=_panel(KAFKA))
    kafka_linger_ms: int = Field(5, ge=0, description="Producer linger: a few ms lets verdicts share a request.",
                                 json_schema_extra=_panel(KAFKA))
    kafka_batch_bytes: int = Field(
        256 * 1024, ge=1024, description="Largest record batch the producer builds for one partition: verdicts go to "
        "Kafka in batches of up to this many bytes (one request carries many verdicts). Capped at "
        "kafka_max_message_bytes: the brokers' message.max.bytes limits a whole record batch.", json_schema_extra=_panel(KAFKA))
    kafka_max_message_bytes: int = Field(
        1_000_000, ge=10_000, description="Largest message the brokers accept (their message.max.bytes, ~1 MB by default); "
        "a verdict above it is dead-lettered instead of retried forever.", json_schema_extra=_panel(KAFKA))
    kafka_positions_topic: str = Field(
        "moldwatch.positions", min_length=1, description="Compacted topic holding the change-stream resume token "
        "(delivery=exactly-once, source=mongo), written in the same transaction as the verdicts.",
        json_schema_extra=_panel(KAFKA))
    kafka_transaction_timeout_ms: int = Field(
        15000, gt=0, description="Transaction timeout (delivery=exactly-once). An open transaction of a crashed worker "
        "holds back every read_committed reader of the partitions it wrote to until the broker aborts it: after this, "
        "plus the broker's transaction.abort.timed.out.transaction.cleanup.interval.ms (10 s by default); a restart of "
        "the same worker aborts it at once. Shorter frees readers sooner; each batch must be scored and committed "
        "within it (milliseconds to seconds).", json_schema_extra=_panel(KAFKA))
    kafka_request_timeout_ms: int = Field(10000, gt=0, description="Producer/consumer request timeout; an unacked "
                                          "message is retried after it.", json_schema_extra=_panel(KAFKA))
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = Field(
        None, description="Default: derived from kafka_tls and kafka_sasl_mechanism.", json_schema_extra=_panel(KAFKA))
    kafka_tls: bool = Field(False, description="Connect to Kafka over TLS.", json_schema_extra=_panel(KAFKA))
    kafka_tls_ca_file: Path | None = Field(None, description="CA bundle (PEM) for the brokers' certificates.",
                                           json_schema_extra=_panel(KAFKA))
    kafka_tls_cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.",
                                             json_schema_extra=_panel(KAFKA))
    kafka_tls_key_file: Path | None = Field(None, description="Client private key (PEM) for mutual TLS.",
                                            json_schema_extra=_panel(KAFKA))
    kafka_tls_key_password: SecretStr | None = Field(None, description="Password of the client key, if encrypted.",
                                                     json_schema_extra=_panel(KAFKA, secret=True))
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] | None = Field(
        None, description="SASL mechanism (default: no SASL).", json_schema_extra=_panel(KAFKA))
    kafka_sasl_username: str | None = Field(None, description="SASL user.", json_schema_extra=_panel(KAFKA))
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password.", json_schema_extra=_panel(KAFKA, secret=True))

    # -- model store -----------------------------------------------------------------------------
    store: Path = Field(Path("store"), description="Model store directory (from 'moldwatch train').",
                        json_schema_extra=_panel(STORE))
    store_poll_s: float = Field(2.0, gt=0, description="How often the store's manifest is checked for a new version "
                                "(hot reload).", json_schema_extra=_panel(STORE))
    cache_size: int = Field(2048, ge=1, description="Group models kept in memory (LRU by count).",
                            json_schema_extra=_panel(STORE))
    recipes: Path | None = Field(
        None, description="Recipe guidance: recipes.json from 'moldwatch recipe --out DIR' (or DIR itself). Adds "
        "on_recipe to every verdict and serves GET /recipes/{facility}/{item}; reloaded when the file changes "
        "(checked every store_poll_s). Unset: no recipe check.", json_schema_extra=_panel(STORE))
    lines: Path | None = Field(
        None, description="Feedback lines: the line book 'moldwatch lines update' writes (lines.json). A part whose "
        "operators marked mostly false alarms alarms above its raised line instead of 1 (verdicts' line and "
        "line_version); reloaded when the file changes (checked every store_poll_s); a book for another store "
        "version is ignored. Unset: every part at its trained line.", json_schema_extra=_panel(STORE))

    # -- batching and flow -----------------------------------------------------------------------
    batch_size: int = Field(500, ge=1, le=100_000, description="Most records scored together (vectorised per model).",
                            json_schema_extra=_panel(FLOW))
    batch_max_wait_ms: int = Field(20, ge=0, description="Longest a record waits for its batch to fill: bounds the "
                                   "latency added by batching.", json_schema_extra=_panel(FLOW))
    queue_size: int = Field(5000, ge=1, description="Records read but not yet scored; when full, reading stops "
                            "(backpressure instead of memory growth).", json_schema_extra=_panel(FLOW))
    in_flight_batches: int = Field(4, ge=1, description="Scored batches awaiting Kafka acks; when full, scoring waits.",
                                   json_schema_extra=_panel(FLOW))
    supersede_memory: int = Field(
        20_000, ge=0, description="Record ids remembered (least recently answered forgotten first; ~0.8 KB each) so "
        "that a verdict for an id already answered from another source position says supersedes=true; empty after a "
        "restart (then source.operation and the position tell). 0: never marked.", json_schema_extra=_panel(FLOW))
    candidate_store: Path | None = Field(
        None, description="Shadow canary: a retrained candidate store judges every record beside the served store; its "
        "verdicts go to kafka_shadow_topic only (never to the verdicts or alarms topics). Reloaded like the store; "
        "gone (promoted, removed): shadowing stops. Compare with 'moldwatch canary' before promoting.",
        json_schema_extra=_panel(STORE))
    kafka_shadow_topic: str | None = Field(
        None, description="Where the candidate store's verdicts go (needs candidate_store; key = facility, as verdicts).",
        json_schema_extra=_panel(KAFKA))
    drift_watch: bool = Field(
        True, description="Watch each part's verdicts for drift against what the store did on its own history "
        "(alarm rate up or down, score level shifted; model_store/serving/drift.py): moldwatch_drift* metrics, a log "
        "line and alert MoldwatchVerdictDrift. Stores trained before drift watch carry no reference: retrain to enable.",
        json_schema_extra=_panel(STORE))
    drift_rate_h: float = Field(
        8.5, gt=0, le=50, description="Alarm-rate drift line (CUSUM h): for independent shots at the reference rate a "
        "false drift alarm comes at most once per e^h blocks of 200 judged shots (8.5: ~10^6 shots). Higher: fewer "
        "false alarms, slower detection.", json_schema_extra=_panel(STORE))
    drift_shift_h: float = Field(
        6.0, gt=0, le=50, description="Score-level drift line (CUSUM h, allowance 0.5 reference block spreads): "
        "~2,600 blocks per side between false alarms at 6, a one-spread shift found in ~12 blocks.",
        json_schema_extra=_panel(STORE))
    lots_collection: str | None = Field(
        None, description="Lot drift: the MongoDB collection (in mongo_database, on mongo_uri) where the plant's daily "
        "lots arrive, with the schema's lot columns. Each closed lot of a part is matched with the alarms the worker "
        "raised on it (model_store/serving/lot_drift.py): moldwatch_lot_drift* metrics, alert MoldwatchLotDrift. "
        "Unset: off.", json_schema_extra=_panel(STORE))
    lots_poll_s: float = Field(600.0, gt=0, description="How often the lots collection is read for closed lots.",
                               json_schema_extra=_panel(STORE))
    lot_drift_h: float = Field(
        6.0, gt=0, le=50, description="Lot drift line (CUSUM h): for Poisson lots at the reference ratio a false "
        "flag comes at most once per e^h lots per part and direction (6: ~400 lots, over a year of daily lots).",
        json_schema_extra=_panel(STORE))
    lots_wait_days: int = Field(
        7, ge=1, description="Days a closed lot waits for its row in the lots collection before it is given up "
        "(counted in moldwatch_lot_drift_lots_total{outcome=\"no_lot_row\"}).", json_schema_extra=_panel(STORE))
    kafka_feedback_topic: str | None = Field(
        None, description="Operator feedback (POST /feedback, scope 'feedback'): answers joined to the verdict they "
        "answer are kept on this topic (key = record id); unset: no feedback endpoint.", json_schema_extra=_panel(KAFKA))
    kafka_feedback_in_topic: str | None = Field(
        None, description="Operator answers arriving on Kafka (an MES, a tablet app), the same JSON as POST /feedback; "
        "read as consumer group <kafka_group_id>-feedback, offsets committed once each answer is kept or refused. "
        "Needs kafka_feedback_topic.", json_schema_extra=_panel(KAFKA))
    feedback_memory: int = Field(
        100_000, ge=1, description="Verdicts remembered for joining feedback (the newest per record id; ~0.3 KB "
        "each); feedback on an older one is refused as feedback_unknown_record.", json_schema_extra=_panel(FLOW))
    feedback_max_age_s: float = Field(7 * 86400.0, gt=0, description="Feedback whose 'at' is older than this is "
                                      "refused (feedback_late).", json_schema_extra=_panel(FLOW))
    feedback_future_skew_s: float = Field(300.0, ge=0, description="Feedback whose 'at' is this far ahead of the "
                                          "worker's clock is refused (a broken client clock).",
                                          json_schema_extra=_panel(FLOW))
    checkpoint_interval_s: float = Field(0.5, ge=0, description="Least time between checkpoint writes (0: after every "
                                         "acknowledged batch).", json_schema_extra=_panel(FLOW))
    rebalance_drain_s: float = Field(
        10.0, ge=0, description="Kafka source: on a rebalance, longest wait for the records of revoked partitions to be "
        "acknowledged and committed before they are handed over (fewer duplicates on the new owner).",
        json_schema_extra=_panel(FLOW))
    shutdown_timeout_s: float = Field(30.0, gt=0, description="On SIGTERM: longest wait for draining and Kafka acks.",
                                      json_schema_extra=_panel(FLOW))

    # -- HTTP ------------------------------------------------------------------------------------
    http_enabled: bool = Field(True, description="Serve /healthz, /readyz, /metrics and POST /score.",
                               json_schema_extra=_panel(HTTP))
    http_host: str = Field(
        "127.0.0.1", description="Bind address of the HTTP server. Loopback by default; an address other machines "
        "can reach (0.0.0.0 in a container) needs tokens or http_allow_open.", json_schema_extra=_panel(HTTP))
    http_port: int = Field(8000, ge=0, le=65535, description="Port of the HTTP server (0: any free port).",
                           json_schema_extra=_panel(HTTP))
    http_max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest POST /score body; larger ones get 413.",
                                     json_schema_extra=_panel(HTTP))
    http_max_json_depth: int = Field(32, ge=2, le=500, description="Deepest nesting of JSON arrays/objects POST /score "
                                     "accepts (a record is 1 deep); deeper ones get 422.", json_schema_extra=_panel(HTTP))
    http_tokens_file: Path | None = Field(
        None, description="Bearer tokens for /score, /recipes, /feedback and /metrics: one 'NAME SCOPES sha256:HEX' per "
        "line (make them with `moldwatch token create`); re-read when it changes, no restart. Probes stay open.",
        json_schema_extra=_panel(HTTP))
    http_tokens: SecretStr | None = Field(
        None, description="Token lines like http_tokens_file's, ';'-separated (fixed until restart).",
        json_schema_extra=_panel(HTTP, secret=True))
    http_metrics_open: bool = Field(
        False, description="Serve /metrics without a token (for Prometheus scrapers that cannot send one).",
        json_schema_extra=_panel(HTTP))
    http_allow_open: bool = Field(
        False, description="INSECURE: serve /score, /recipes and /metrics without tokens on an address other machines "
        "can reach. Without it such a worker refuses to start.", json_schema_extra=_panel(HTTP))
    http_auth_burst: int = Field(
        20, ge=1, description="Failed token attempts one client address may make at once before it gets 429; "
        "refilled over http_auth_window_s.", json_schema_extra=_panel(HTTP))
    http_auth_window_s: float = Field(60.0, gt=0, description="Seconds to refill a client's failed-attempt budget.",
                                      json_schema_extra=_panel(HTTP))
    http_tls_cert_file: Path | None = Field(None, description="Serve HTTPS with this certificate chain (PEM).",
                                            json_schema_extra=_panel(HTTP))
    http_tls_key_file: Path | None = Field(None, description="Private key (PEM) of http_tls_cert_file.",
                                           json_schema_extra=_panel(HTTP))
    http_tls_key_password: SecretStr | None = Field(None, description="Password of http_tls_key_file, if encrypted.",
                                                    json_schema_extra=_panel(HTTP, secret=True))
    http_tls_client_ca_file: Path | None = Field(
        None, description="Mutual TLS: only clients with a certificate signed by this CA (PEM) may connect "
        "(probes included: point the probes at a sidecar or use exec probes).", json_schema_extra=_panel(HTTP))
    ready_timeout_s: float = Field(0.5, gt=0, description="Timeout of each readiness ping (MongoDB, Kafka).",
                                   json_schema_extra=_panel(HTTP))
    progress_timeout_s: float = Field(
        60.0, gt=0, description="Not ready when records are waiting and nothing was acknowledged for this long "
        "(a stream that no longer moves).", json_schema_extra=_panel(HTTP))
    ready_cache_s: float = Field(1.0, ge=0, description="Readiness results are reused this long: a probe storm "
                                 "must not become a ping storm.", json_schema_extra=_panel(HTTP))

    # -- logs ------------------------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Least severe level logged.",
                                                                    json_schema_extra=_panel(LOGS))
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: JSON lines unless stdout is a terminal.", json_schema_extra=_panel(LOGS))

    @field_validator("mongo_uri")
    @classmethod
    def _check_mongo_uri(cls, uri: str) -> str:
        """Parse the URI now: a URI the driver cannot parse gives one line without the password,
        not a traceback (or the URI) at the first connection."""
        problem = mongo_uri_problem(uri)
        if problem:
            raise ValueError(problem)
        return uri

    @model_validator(mode="after")
    def _check_pairs(self) -> WorkerSettings:
        if (self.kafka_tls_cert_file is None) != (self.kafka_tls_key_file is None):
            raise ValueError("kafka_tls_cert_file and kafka_tls_key_file go together (mutual TLS needs both)")
        if self.kafka_sasl_mechanism and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(f"kafka_sasl_mechanism {self.kafka_sasl_mechanism} needs kafka_sasl_username and kafka_sasl_password")
        if (self.http_tls_cert_file is None) != (self.http_tls_key_file is None):
            raise ValueError("http_tls_cert_file and http_tls_key_file go together (HTTPS needs both)")
        if self.http_tls_client_ca_file is not None and self.http_tls_cert_file is None:
            raise ValueError("http_tls_client_ca_file (mutual TLS) needs http_tls_cert_file and http_tls_key_file")
        if (self.candidate_store is None) != (self.kafka_shadow_topic is None):
            raise ValueError("candidate_store and kafka_shadow_topic go together (the candidate's verdicts need a topic of "
                             "their own, and a shadow topic needs a candidate)")
        if self.kafka_shadow_topic is not None and self.kafka_shadow_topic in (
                self.kafka_verdicts_topic, self.kafka_alarms_topic, self.kafka_dead_letters_topic):
            raise ValueError(f"kafka_shadow_topic {self.kafka_shadow_topic!r} must differ from the verdicts, alarms and "
                             "dead-letters topics: a candidate's verdicts must never reach alarm consumers")
        if self.kafka_feedback_in_topic and not self.kafka_feedback_topic:
            raise ValueError("kafka_feedback_in_topic needs kafka_feedback_topic (where the joined answers are kept)")
        if self.mongo_password is not None and not self.mongo_username:
            raise ValueError("mongo_password is set but mongo_username is not")
        return self

    # -- client arguments ------------------------------------------------------------------------
    @property
    def producer_batch_bytes(self) -> int:
        """The producer's record-batch size: never above what the brokers accept as one message."""
        return min(self.kafka_batch_bytes, self.kafka_max_message_bytes)

    def mongo_client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AsyncMongoClient`` (TLS and auth); values win over the URI's."""
        kwargs: dict[str, Any] = {
            "serverSelectionTimeoutMS": self.mongo_timeout_ms,
            "connectTimeoutMS": self.mongo_timeout_ms,
            "appname": f"moldwatch/{self.worker_name}",
            "tz_aware": True,  # datetimes come back in UTC, never as ambiguous naive local times
        }
        if self.mongo_tls:
            kwargs["tls"] = True
        if self.mongo_tls_ca_file:
            kwargs["tlsCAFile"] = str(self.mongo_tls_ca_file)
        if self.mongo_tls_certificate_key_file:
            kwargs["tlsCertificateKeyFile"] = str(self.mongo_tls_certificate_key_file)
        if self.mongo_tls_certificate_key_password:
            kwargs["tlsCertificateKeyFilePassword"] = self.mongo_tls_certificate_key_password.get_secret_value()
        if self.mongo_auth_mechanism:
            kwargs["authMechanism"] = self.mongo_auth_mechanism
        if self.mongo_username:
            kwargs["username"] = self.mongo_username
        if self.mongo_password:
            kwargs["password"] = self.mongo_password.get_secret_value()
        if self.mongo_auth_source:
            kwargs["authSource"] = self.mongo_auth_source
        return kwargs

    def kafka_security_kwargs(self) -> dict[str, Any]:
        """Security keyword arguments shared by aiokafka's producer and consumer."""
        protocol = self.kafka_security_protocol
        if protocol is None:
            if self.kafka_sasl_mechanism:
                protocol = "SASL_SSL" if self.kafka_tls else "SASL_PLAINTEXT"
            else:
                protocol = "SSL" if self.kafka_tls else "PLAINTEXT"
        kwargs: dict[str, Any] = {"security_protocol": protocol}
        if protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(cafile=str(self.kafka_tls_ca_file) if self.kafka_tls_ca_file else None)
            if self.kafka_tls_cert_file and self.kafka_tls_key_file:
                password = self.kafka_tls_key_password.get_secret_value() if self.kafka_tls_key_password else None
                context.load_cert_chain(str(self.kafka_tls_cert_file), str(self.kafka_tls_key_file), password)
            kwargs["ssl_context"] = context
        if self.kafka_sasl_mechanism:
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism
            kwargs["sasl_plain_username"] = self.kafka_sasl_username
            kwargs["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
        return kwargs

    def safe_summary(self) -> dict[str, Any]:
        """Settings fit for a start-up log line: secrets masked, credentials stripped from URIs."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                out[name] = "**********"
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        out["mongo_uri"] = redact_uri(self.mongo_uri)
        out["kafka_bootstrap_servers"] = redact_uri(self.kafka_bootstrap_servers)
        return out

    def secret_values(self) -> list[str]:
        """Every secret these settings hold (for :data:`service.redact.SCRUB`)."""
        values = [v.get_secret_value() for v in (self.mongo_password, self.kafka_sasl_password, self.kafka_tls_key_password,
                                                 self.mongo_tls_certificate_key_password) if v is not None]
        return values + uri_secrets(self.mongo_uri)


def mongo_uri_problem(uri: str) -> str | None:
    """Why the driver would refuse ``uri`` (one line, credentials masked), or None."""
    from pymongo.errors import ConfigurationError, InvalidURI

    from service.client_internals import validate_mongo_uri

    try:
        validate_mongo_uri(uri)  # without the DNS lookup of mongodb+srv
    except (InvalidURI, ConfigurationError, ValueError) as exc:
        secrets = uri_secrets(uri)
        text = one_line(exc)
        for secret in sorted(secrets, key=len, reverse=True):
            if len(secret) >= 3:
                text = text.replace(secret, "**********")
        return f"MongoDB URI {redact_uri(uri)} cannot be used: {text}"
    return None


def env_name(field: str) -> str:
    """The environment variable of a setting: ``kafka_bootstrap_servers`` -> ``MOLDWATCH_KAFKA_BOOTSTRAP_SERVERS``."""
    return ENV_PREFIX + field.upper()


def is_secret(field: str) -> bool:
    extra = WorkerSettings.model_fields[field].json_schema_extra
    return bool(isinstance(extra, dict) and extra.get("secret"))


__all__ = ["WorkerSettings", "env_name", "is_secret", "redact_uri", "ENV_PREFIX"]
