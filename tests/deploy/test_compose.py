"""deploy/compose.yaml: valid against the Compose Specification's JSON schema (vendored copy of
compose-spec/compose-spec schema/compose-spec.json, commit 170098ba), wired the way the worker,
Prometheus and Grafana expect, and accepted by `docker compose config` where Docker Compose exists."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from service.config import ENV_PREFIX, WorkerSettings, env_name

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SPEC = Path(__file__).with_name("compose-spec.json")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_valid_against_the_compose_specification(compose) -> None:
    schema = json.loads(SPEC.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_schema_catches_a_broken_file(compose) -> None:
    """The vendored schema really constrains: a misspelt key is refused."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["enviroment"] = {}
    assert list(jsonschema.Draft7Validator(json.loads(SPEC.read_text())).iter_errors(broken))


def test_every_service_is_there(compose) -> None:
    assert set(compose["services"]) == {"mongo", "mongo-init", "kafka", "worker", "prometheus", "grafana"}


def test_mongo_is_a_single_node_replica_set_with_its_init(compose) -> None:
    mongo, init = compose["services"]["mongo"], compose["services"]["mongo-init"]
    assert "--replSet" in mongo["command"] and "healthcheck" in mongo
    script = " ".join(init["command"])
    assert "rs.initiate" in script and "mongo:27017" in script
    assert init["depends_on"]["mongo"]["condition"] == "service_healthy"
    worker = compose["services"]["worker"]
    assert worker["depends_on"]["mongo-init"]["condition"] == "service_completed_successfully"
    assert "replicaSet=rs0" in worker["environment"]["MOLDWATCH_MONGO_URI"]


def test_kafka_runs_in_kraft_mode(compose) -> None:
    env = compose["services"]["kafka"]["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    assert not any("ZOOKEEPER" in k for k in env)
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"  # exactly-once works on one broker
    internal = compose["services"]["worker"]["environment"]["MOLDWATCH_KAFKA_BOOTSTRAP_SERVERS"]
    assert f"INTERNAL://{internal}" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_worker_environment_names_are_settings_the_worker_reads(compose) -> None:
    env = compose["services"]["worker"]["environment"]
    known = {env_name(name) for name in WorkerSettings.model_fields}
    assert all(key.startswith(ENV_PREFIX) for key in env)
    assert set(env) <= known, set(env) - known
    settings = WorkerSettings(**{k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items()})
    assert settings.http_port == 8000
    assert "127.0.0.1:8000:8000" in compose["services"]["worker"]["ports"]  # scoped endpoints: loopback of the host
    assert settings.http_tokens_file is not None and settings.http_metrics_open


def test_mounted_files_exist_and_prometheus_scrapes_the_worker(compose) -> None:
    for name in ("prometheus", "grafana"):
        for volume in compose["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), source
    config = yaml.safe_load((DEPLOY / "compose/prometheus.yml").read_text())
    mounted = {Path(v.split(":")[1]).name for v in compose["services"]["prometheus"]["volumes"] if v.startswith(".")}
    assert set(config["rule_files"]) <= mounted
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["moldwatch"]["static_configs"][0]["targets"] == ["worker:8000"]  # alerts.yml selects job="moldwatch"
    datasources = yaml.safe_load((DEPLOY / "compose/grafana/datasources.yml").read_text())["datasources"]
    assert datasources[0]["type"] == "prometheus" and datasources[0]["isDefault"]
    assert datasources[0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "compose/grafana/dashboards.yml").read_text())["providers"][0]
    dashboards = [v for v in compose["services"]["grafana"]["volumes"] if v.endswith(".json:ro")]
    assert dashboards and all(v.split(":")[1].startswith(provider["options"]["path"]) for v in dashboards)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (deploy/local/setup.sh installs it)")
def test_promtool_accepts_the_compose_prometheus_config(tmp_path) -> None:
    for name in ("compose/prometheus.yml", "prometheus/alerts.yml", "prometheus/recording.yml"):
        shutil.copy(DEPLOY / name, tmp_path / Path(name).name)
    result = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _docker_compose() -> list[str] | None:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        try:
            probe = subprocess.run([*command, "version"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return command
    return None


@pytest.mark.skipif(_docker_compose() is None, reason="needs Docker Compose")
def test_docker_compose_config_accepts_it(tmp_path) -> None:
    command = _docker_compose()
    assert command is not None
    result = subprocess.run([*command, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr


def test_the_worker_reads_its_tokens_from_a_mounted_directory_that_exists(compose) -> None:
    from service.http_auth import parse_tokens

    worker = compose["services"]["worker"]
    target = Path(worker["environment"]["MOLDWATCH_HTTP_TOKENS_FILE"])
    (mount,) = [v for v in worker["volumes"] if v.split(":")[1] == str(target.parent)]
    source = DEPLOY / mount.split(":")[0]
    assert source.is_dir() and mount.endswith(":ro")  # a directory: a renamed-in file is seen
    assert len(parse_tokens((source / target.name).read_text(), "tokens.txt")) == 0  # no token ships with the repo
