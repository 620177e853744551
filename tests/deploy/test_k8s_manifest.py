"""deploy/k8s/moldwatch-worker.yaml against the worker's real settings: every ConfigMap key is a
MOLDWATCH_ setting and the whole environment validates; secrets only come from the Secret; probes,
port, scrape annotations, shutdown grace and the security context agree with the worker."""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from service.config import ENV_PREFIX, WorkerSettings, is_secret
from tests.support.promql import K8S_WORKER

CLOSE_CLIENTS_S = 15  # after the drain, the worker closes Kafka, the source and HTTP (5 s each at most)


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(K8S_WORKER.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one object per kind"
    return by_kind


@pytest.fixture(scope="module")
def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (worker,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return worker


def setting(env: str) -> str:
    assert env.startswith(ENV_PREFIX), env
    name = env[len(ENV_PREFIX):].lower()
    assert name in WorkerSettings.model_fields, f"{env} is not a worker setting"
    return name


@pytest.fixture
def settings(objects: dict[str, dict[str, Any]], container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> WorkerSettings:
    """The settings a pod would start with (Secret values replaced by placeholders)."""
    for name in WorkerSettings.model_fields:
        monkeypatch.delenv(ENV_PREFIX + name.upper(), raising=False)
    for key, value in objects["ConfigMap"]["data"].items():
        monkeypatch.setenv(key, value)
    for env in container["env"]:
        if env["name"].startswith(ENV_PREFIX):
            monkeypatch.setenv(env["name"], env.get("value") or f"placeholder-{env['name'].lower()}")
    return WorkerSettings(_env_file=None)  # type: ignore[call-arg]


def test_configmap_holds_real_non_secret_settings(objects: dict[str, dict[str, Any]]) -> None:
    for key, value in objects["ConfigMap"]["data"].items():
        name = setting(key)
        assert not is_secret(name), f"{key} is a secret: it belongs in the Secret"
        assert isinstance(value, str), f"{key}: ConfigMap values are strings (quote it)"
        assert "@" not in value or name != "mongo_uri", "no credentials in the MongoDB URI"


def test_secrets_come_from_a_secret(container: dict[str, Any]) -> None:
    from_secret = set()
    for env in container["env"]:
        if not env["name"].startswith(ENV_PREFIX):
            continue
        name = setting(env["name"])
        if is_secret(name):
            assert "secretKeyRef" in env.get("valueFrom", {}), f"{env['name']} must come from a Secret"
        if "secretKeyRef" in env.get("valueFrom", {}):
            assert env["valueFrom"]["secretKeyRef"]["name"] == "moldwatch-credentials"
            from_secret.add(name)
    assert {"mongo_password", "kafka_sasl_password"} <= from_secret


def test_environment_is_a_valid_worker_configuration(settings: WorkerSettings) -> None:
    assert settings.source == "mongo"
    assert settings.log_format == "json"
    assert settings.kafka_sasl_mechanism and settings.kafka_sasl_password is not None


def test_port_probes_and_scrape_annotations_agree(objects: dict[str, dict[str, Any]], container: dict[str, Any],
                                                  settings: WorkerSettings) -> None:
    (port,) = container["ports"]
    assert port["containerPort"] == settings.http_port and port["name"] == "http"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.http_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    (service_port,) = objects["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == "http"
    selector = objects["Service"]["spec"]["selector"]
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_sigterm_drain_fits_in_the_grace_period(objects: dict[str, dict[str, Any]], settings: WorkerSettings) -> None:
    grace = objects["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= settings.shutdown_timeout_s + CLOSE_CLIENTS_S + 5


def test_single_replica_and_recreate_with_the_mongo_source(objects: dict[str, dict[str, Any]], settings: WorkerSettings) -> None:
    """Several workers on one change stream would each see every change (see the manifest's note)."""
    spec = objects["Deployment"]["spec"]
    if settings.source == "mongo":
        assert spec["replicas"] == 1
        assert spec["strategy"]["type"] == "Recreate"
    assert "consumer group" in K8S_WORKER.read_text()


def test_runs_unprivileged_on_a_read_only_root(objects: dict[str, dict[str, Any]], container: dict[str, Any]) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/tmp" in mounts, "a writable /tmp for library caches"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HOME"] == "/tmp"
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]


def test_model_store_is_a_read_only_volume(objects: dict[str, dict[str, Any]], container: dict[str, Any],
                                           settings: WorkerSettings) -> None:
    store = PurePosixPath(str(settings.store))
    mount = next(m for m in container["volumeMounts"] if store.is_relative_to(m["mountPath"]))
    # The store must be a directory inside the volume, not its root: `moldwatch train` replaces it by
    # renaming a staging directory next to it, and a mount point cannot be renamed.
    assert store != PurePosixPath(mount["mountPath"])
    assert mount["readOnly"] is True
    volumes = {v["name"]: v for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert objects["PersistentVolumeClaim"]["metadata"]["name"] == claim


def test_http_tokens_come_from_a_secret_mounted_as_a_directory(objects: dict[str, dict[str, Any]],
                                                                container: dict[str, Any],
                                                                settings: WorkerSettings) -> None:
    """A subPath mount of a Secret never sees an update: rotation would need a restart."""
    assert settings.http_tokens_file is not None and not settings.http_metrics_open
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "http-tokens"]
    assert "subPath" not in mount and mount["readOnly"] is True
    assert settings.http_tokens_file.parent.as_posix() == mount["mountPath"]
    (volume,) = [v for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "http-tokens"]
    assert volume["secret"]["secretName"] == "moldwatch-http-tokens"
    assert volume["secret"]["items"] == [{"key": "tokens.txt", "path": settings.http_tokens_file.name}]
    assert volume["secret"]["defaultMode"] == 0o440
