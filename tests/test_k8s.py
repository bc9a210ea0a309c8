"""config/k8s: the manifests agree with the router (flags, ports, probes, token), and the pod's
own command serves the mounted ConfigMap with the pod's environment until /-/ready."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import Served, free_port, wait_ready

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


def mount_config_map(folder: Path, docs: dict[str, dict]) -> Path:
    """The ConfigMap's files in ``folder``, as the kubelet mounts them."""
    folder.mkdir(parents=True)
    for name, text in docs["ConfigMap"]["data"].items():
        (folder / name).write_text(text)
    return folder


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

    # the mounted ConfigMap loads with the pod's environment
    folder = mount_config_map(tmp_path / "etc", docs)
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


@pytest.mark.slow
async def test_the_pods_command_serves_the_mounted_config(tmp_path: Path, client) -> None:
    """The container's command and environment, run as they are on the mounted ConfigMap.
    Only what a pod gets from its surroundings moves: the ports (free loopback ones, not the
    pod IP's) and the data volume (under tmp_path, not /var/lib/model-router)."""
    docs = manifests()
    pod = docs["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    mounts = {m["name"]: Path(m["mountPath"]) for m in container["volumeMounts"]}
    command = container["command"]
    config_arg = command.index("-c") + 1
    folder = mount_config_map(tmp_path / "etc", docs)
    config_file = folder / Path(command[config_arg]).relative_to(mounts["config"])

    doc: dict[str, Any] = yaml.safe_load(config_file.read_text())
    port, admin = free_port(), free_port()
    doc["listen"].update(host="127.0.0.1", port=port)
    doc["admin"].update(host="127.0.0.1", port=admin)
    volume = tmp_path / "data"
    doc["state_dir"] = str(volume / Path(doc["state_dir"]).relative_to(mounts["data"]))
    log = doc["prediction_log"]
    log["dir"] = str(volume / Path(log["dir"]).relative_to(mounts["data"]))
    config_file.write_text(yaml.safe_dump(doc, sort_keys=False))

    pod_env = {e["name"]: "from-the-secret" for e in container["env"]}
    executable = Path(sys.executable).parent / command[0]  # the installed entry point
    argv = [*command[1:config_arg], str(config_file), *command[config_arg + 1:]]
    proc = await asyncio.create_subprocess_exec(
        executable, *argv, env={**os.environ, **pod_env}, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    served = Served(proc, port, admin)
    try:
        await wait_ready(served, client, timeout=20)
        for probe in ("readinessProbe", "livenessProbe"):
            async with client.get(served.admin_url(container[probe]["httpGet"]["path"])) as r:
                assert r.status == 200, probe
        async with client.get(served.admin_url(pod["metadata"]["annotations"]
                                               ["prometheus.io/path"])) as resp:
            assert resp.status == 200
            assert "model_router_config_reloads_total" in await resp.text()
        # the kubelet's SIGTERM: drained and exited 0 before it would send SIGKILL
        served.proc.send_signal(signal.SIGTERM)
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        assert await asyncio.wait_for(served.proc.wait(), grace) == 0
    finally:
        if served.proc.returncode is None:
            served.proc.kill()
            await served.proc.wait()
