"""The image, the compose file and the Kubernetes manifest agree: one HTTP port, the broker's data
on its volume, and the model store mounted so that a replaced store is seen (train renames)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _target(volume: str) -> str:
    """The container path of a short-syntax volume (``source:target[:mode]``; the source may hold
    ``${VAR:-default}``)."""
    parts = volume.rsplit(":", 2)
    return parts[1] if len(parts) == 3 and parts[2] in ("ro", "rw") else volume.rsplit(":", 1)[1]


def _image_port() -> int:
    text = (ROOT / "Dockerfile").read_text()
    (expose,) = re.findall(r"^EXPOSE (\d+)$", text, flags=re.M)
    (health,) = re.findall(r"http://127\.0\.0\.1:(\d+)/healthz", text)
    assert expose == health, "the image's EXPOSE and HEALTHCHECK disagree"
    return int(expose)


def test_one_http_port_in_the_image_compose_and_kubernetes() -> None:
    port = _image_port()
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    worker = compose["services"]["worker"]
    assert int(worker["environment"]["MOLDWATCH_HTTP_PORT"]) == port
    assert any(str(p).endswith(f":{port}") for p in worker["ports"])
    objects = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s/moldwatch-worker.yaml").read_text()) if d}
    assert int(objects["ConfigMap"]["data"]["MOLDWATCH_HTTP_PORT"]) == port
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert [p["port"] for p in objects["Service"]["spec"]["ports"]] == [port]


def test_the_brokers_log_directory_is_its_volume() -> None:
    kafka = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["kafka"]
    mounted = {_target(v) for v in kafka["volumes"]}
    assert kafka["environment"]["KAFKA_LOG_DIRS"] in mounted


def test_the_store_is_mounted_by_its_parent_so_a_replaced_store_is_seen() -> None:
    worker = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["worker"]
    store = worker["environment"]["MOLDWATCH_STORE"]
    targets = [_target(v) for v in worker["volumes"]]
    assert store not in targets, "a bind mount of the store itself keeps the old directory after a rename"
    assert any(store.startswith(t.rstrip("/") + "/") for t in targets), (store, targets)
    objects = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s/moldwatch-worker.yaml").read_text()) if d}
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    k8s_store = objects["ConfigMap"]["data"]["MOLDWATCH_STORE"]
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert k8s_store not in mounts and any(k8s_store.startswith(m.rstrip("/") + "/") for m in mounts)
