"""config/k8s: the manifests parse, run a real `model-router serve`, and probe real endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from router.cli import build_parser
from router.config import load_snapshot
from router.errors import ConfigError

K8S = Path(__file__).resolve().parents[1] / "config" / "k8s"


def manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def test_manifests_are_consistent_with_the_router(tmp_path: Path) -> None:
    docs = manifests()
    assert {"Deployment", "ConfigMap", "Service"} <= set(docs)
    pod = docs["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    command = container["command"]
    assert command[:2] == ["model-router", "serve"]
    args = build_parser().parse_args(command[1:])  # every flag exists (exits 2 otherwise)
    config_path = Path(args.config)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert config_path.parent == Path(mount["mountPath"])

    # the mounted ConfigMap passes `model-router check` with the pod's environment
    folder = tmp_path / "etc"
    folder.mkdir()
    for name, text in docs["ConfigMap"]["data"].items():
        (folder / name).write_text(text)
    pod_env = {e["name"]: "from-the-secret" for e in container["env"]}
    snapshot = load_snapshot(folder / config_path.name, env=pod_env)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == snapshot.listen.port and ports["admin"] == snapshot.admin.port
    assert snapshot.listen.host == "0.0.0.0"

    # the admin port listens on the pod IP, so its token is required: the secret key is not
    # optional, and a pod without it would refuse its config rather than open the admin API
    assert snapshot.admin.host == "0.0.0.0" and snapshot.admin.token_env
    token = next(e for e in container["env"] if e["name"] == snapshot.admin.token_env)
    assert not token["valueFrom"]["secretKeyRef"].get("optional", False)
    with pytest.raises(ConfigError, match=r"admin\.token_env: environment variable"):
        load_snapshot(folder / config_path.name, env={})

    # probes and scraping hit endpoints the admin server serves
    from router.control.admin import build_admin

    class Fake:
        pass

    paths = {r.resource.canonical for r in build_admin(Fake()).router.routes()}  # type: ignore[arg-type]
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in paths and ports[get["port"]] == snapshot.admin.port
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    for scrape in (pod["metadata"]["annotations"], docs["Service"]["metadata"]["annotations"]):
        assert scrape["prometheus.io/path"] in paths
        assert int(scrape["prometheus.io/port"]) == snapshot.admin.port

    # termination leaves time to drain: drain_delay_s + shutdown_grace_s
    limits = snapshot.limits
    assert limits.drain_delay_s > 0
    assert pod["spec"]["terminationGracePeriodSeconds"] > limits.drain_delay_s \
        + limits.shutdown_grace_s
