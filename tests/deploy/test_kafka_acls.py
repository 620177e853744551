"""deploy/README.md's kafka-acls.sh commands are what service/kafka_acls.py derives from the
Kubernetes manifest's ConfigMap and Secret user: the documented ACLs, the manifest and the code agree."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from service.config import WorkerSettings
from service.kafka_acls import Acl, kafka_acls_commands, worker_acls

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _manifest() -> tuple[WorkerSettings, str]:
    text = (DEPLOY / "k8s/moldwatch-worker.yaml").read_text()
    objects = {d["kind"]: d for d in yaml.safe_load_all(text) if d}
    env = {k.removeprefix("MOLDWATCH_").lower(): v for k, v in objects["ConfigMap"]["data"].items()}
    (user,) = re.findall(r"--from-literal=kafka-sasl-username=(\S+)", text)
    settings = WorkerSettings(_env_file=None, **{**env, "kafka_sasl_username": user, "kafka_sasl_password": "unused"})  # type: ignore[arg-type]
    return settings, user


def test_readme_acl_commands_match_the_manifest_and_the_code() -> None:
    settings, user = _manifest()
    section = (DEPLOY / "README.md").read_text().split("## Least privilege: Kafka ACLs", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    documented = [line for line in block.splitlines() if line.strip()]
    assert documented == kafka_acls_commands(worker_acls(settings, every_mode=True), f"User:{user}")


def test_each_mode_needs_only_its_own_acls() -> None:
    settings, _ = _manifest()
    base = set(worker_acls(settings.model_copy(update={"delivery": "at-least-once", "source": "mongo"})))
    assert {a.resource_type for a in base} == {"TOPIC"}
    assert {a.operation for a in base} == {"WRITE", "DESCRIBE", "CREATE"}  # no READ anywhere, nothing on the cluster
    kafka_source = set(worker_acls(settings.model_copy(update={"source": "kafka"})))
    assert kafka_source - base == {Acl("TOPIC", "moldwatch.records", "READ"), Acl("TOPIC", "moldwatch.records", "DESCRIBE"),
                                   Acl("GROUP", "moldwatch-workers", "READ")}
    exactly_once = set(worker_acls(settings.model_copy(update={"delivery": "exactly-once"})))
    assert {a for a in exactly_once - base if a.resource_type == "TRANSACTIONAL_ID"} == {
        Acl("TRANSACTIONAL_ID", "moldwatch-plant-1-shots", "WRITE"), Acl("TRANSACTIONAL_ID", "moldwatch-plant-1-shots", "DESCRIBE")}
