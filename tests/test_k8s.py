"""config/k8s: the manifests agree with the router (flags, ports, probes, token), with the
image (Dockerfile: entrypoint, uid) and with each other (the fleet's Redis and Prometheus, the
scrape job, the replica id, Services, NetworkPolicy, disruption budget, the hardened pod), and
the pod's own command serves the mounted ConfigMap with the pod's environment until /-/ready,
reloads under its workers without the multi-process label warning, and drains on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from helpers import Served, free_port, wait_ready

from router.cli import build_parser
from router.config import load_snapshot
from router.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "config" / "k8s"
ROUTER = "model-router"                   # the Deployment and Service
ROUTER_CONFIG = "model-router-config"     # its ConfigMap
REPLICA_ENV = "MODEL_ROUTER_REPLICA"      # DESIGN.md, "Fleet": the replica id
POD_NAME = "model-router-5d8c7f9b4-x2x7q"
# What the Secret holds in the tests (any other secret key: "from-the-secret").
SECRET_VALUES = {"MODEL_ROUTER_LOG_STORE": "s3://ml-audit/model-router",
                 "REDIS_PASSWORD": "a-password"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile's (INSTRUCTION, arguments) in order, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the Dockerfile's last stage (what the image is)."""
    instructions = dockerfile_instructions()
    start = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[start:]


def image_argv(container: dict) -> list[str]:
    """What the container runs: its command (else the image's ENTRYPOINT) and its args (else,
    with no command, the image's CMD), as the kubelet and the runtime combine them."""
    stage = dict(final_stage())
    entrypoint, cmd = json.loads(stage["ENTRYPOINT"]), json.loads(stage["CMD"])
    if "command" in container:
        return [*container["command"], *container.get("args", [])]
    return [*entrypoint, *container.get("args", cmd)]


def manifests() -> dict[tuple[str, str], dict]:
    """Every document of config/k8s, by (kind, name); a name used twice is an error."""
    docs: dict[tuple[str, str], dict] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in docs, f"{path.name}: {key} defined twice"
            docs[key] = doc
    return docs


def mount_config_map(folder: Path, config_map: dict) -> Path:
    """The ConfigMap's files in ``folder``, as the kubelet mounts them."""
    folder.mkdir(parents=True)
    for name, text in config_map["data"].items():
        (folder / name).write_text(text)
    return folder


def pod_env(container: dict) -> dict[str, str]:
    """The container's environment as the kubelet fills it in (secrets, the pod name)."""
    env = {}
    for e in container["env"]:
        source = e.get("valueFrom", {})
        if source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = POD_NAME
        else:
            env[e["name"]] = e.get("value", SECRET_VALUES.get(e["name"], "from-the-secret"))
    return env


def admin_paths() -> set[str]:
    """The paths the admin server routes."""
    from router.control.admin import build_admin

    class Fake:
        pass

    routes = build_admin(Fake()).router.routes()  # type: ignore[arg-type]
    return {r.resource.canonical for r in routes if r.resource is not None}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def backend(docs: dict, url: str) -> tuple[dict, dict]:
    """The (Deployment, container port) a URL like scheme://service:port reaches."""
    parts = urlsplit(url)
    service = docs.get(("Service", parts.hostname))
    assert service is not None, f"{url}: no Service named {parts.hostname}"
    port = next((p for p in service["spec"]["ports"] if p["port"] == parts.port), None)
    assert port is not None, f"{url}: Service {parts.hostname} has no port {parts.port}"
    selected = [d for (kind, _), d in docs.items() if kind == "Deployment"
                and selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
    assert len(selected) == 1, f"Service {parts.hostname} selects {len(selected)} Deployments"
    deployment = selected[0]
    target = port.get("targetPort", port["port"])
    ports = [p for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]
             if target in (p.get("name"), p["containerPort"])]
    assert len(ports) == 1, f"Service {parts.hostname}: targetPort {target} is no container port"
    return deployment, ports[0]


def router_pod(docs: dict) -> tuple[dict, dict]:
    pod = docs[("Deployment", ROUTER)]["spec"]["template"]
    return pod, pod["spec"]["containers"][0]


def test_manifests_are_consistent_with_the_router(tmp_path: Path) -> None:
    docs = manifests()
    pod, container = router_pod(docs)
    command = image_argv(container)
    assert command[:2] == ["model-router", "serve"]
    args = build_parser().parse_args(command[1:])  # every flag exists (exits 2 otherwise)
    config_path = Path(args.config)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert config_path.parent == Path(mount["mountPath"])
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == ROUTER_CONFIG

    # the mounted ConfigMap loads with the pod's environment
    folder = mount_config_map(tmp_path / "etc", docs[("ConfigMap", ROUTER_CONFIG)])
    snapshot = load_snapshot(folder / config_path.name, env=pod_env(container))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == snapshot.listen.port and ports["admin"] == snapshot.admin.port
    assert snapshot.grpc is not None and ports["grpc"] == snapshot.grpc.port
    assert snapshot.listen.host == "0.0.0.0"
    assert snapshot.fleet is not None

    # the admin port listens on the pod IP, so its token is required: the secret key is not
    # optional, and a pod without it would refuse its config rather than open the admin API
    assert snapshot.admin.host == "0.0.0.0" and snapshot.admin.token_env
    token = next(e for e in container["env"] if e["name"] == snapshot.admin.token_env)
    assert not token["valueFrom"]["secretKeyRef"].get("optional", False)
    with pytest.raises(ConfigError, match=r"admin\.token_env: environment variable"):
        load_snapshot(folder / config_path.name, env={})

    # probes hit endpoints the admin server serves
    paths = admin_paths()
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in paths and ports[get["port"]] == snapshot.admin.port
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"

    # termination leaves time to drain: drain_delay_s + shutdown_grace_s
    limits = snapshot.limits
    assert limits.drain_delay_s > 0
    assert pod["spec"]["terminationGracePeriodSeconds"] > limits.drain_delay_s \
        + limits.shutdown_grace_s


# -- the fleet: Redis, Prometheus, the scrape job, the replica id ----------------------------

def fleet_block(docs: dict) -> dict:
    """The ``fleet:`` block of the router's ConfigMap, as written."""
    config = yaml.safe_load(docs[("ConfigMap", ROUTER_CONFIG)]["data"]["router.yaml"])
    return config["fleet"]


def relabel(rules: list[dict], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus relabelling (keep, drop, replace) of one target; None when dropped."""
    labels = dict(labels)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(s, "")
                                                for s in rule.get("source_labels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        action = rule.get("action", "replace")
        if action == "keep" and not match or action == "drop" and match:
            return None
        if action == "replace" and match:
            template = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", rule.get("replacement", "$1"))
            labels[rule["target_label"]] = match.expand(template)
        elif action not in ("keep", "drop", "replace"):
            raise AssertionError(f"relabel action {action} not simulated here")
    return labels


def meta_label(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def discovered_targets(docs: dict, namespace: str = "default") -> list[dict[str, str]]:
    """What kubernetes_sd_configs role pod offers for one running pod of every Deployment:
    one target per declared container port."""
    targets = []
    for (kind, name), deployment in docs.items():
        if kind != "Deployment":
            continue
        template = deployment["spec"]["template"]
        meta = {"__meta_kubernetes_namespace": namespace,
                "__meta_kubernetes_pod_name": f"{name}-5d8c7f9b4-x2x7q",
                "__meta_kubernetes_pod_phase": "Running"}
        for key, value in template["metadata"].get("labels", {}).items():
            meta[f"__meta_kubernetes_pod_label_{meta_label(key)}"] = value
        for key, value in template["metadata"].get("annotations", {}).items():
            meta[f"__meta_kubernetes_pod_annotation_{meta_label(key)}"] = str(value)
        for container in template["spec"]["containers"]:
            for port in container.get("ports", []):
                targets.append({**meta, "__address__": f"10.0.0.7:{port['containerPort']}",
                                "__meta_kubernetes_pod_container_name": container["name"],
                                "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                                "__meta_kubernetes_pod_container_port_number":
                                    str(port["containerPort"])})
    return targets


def test_replica_id_is_the_pod_name() -> None:
    _, container = router_pod(manifests())
    replica = [e for e in container["env"] if e["name"] == REPLICA_ENV]
    assert replica == [{"name": REPLICA_ENV,
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]


def test_fleet_store_is_the_redis_service_and_persists() -> None:
    docs = manifests()
    fleet = fleet_block(docs)
    assert urlsplit(fleet["store"]).scheme == "redis"
    deployment, port = backend(docs, fleet["store"])
    spec = deployment["spec"]["template"]["spec"]
    redis = next(c for c in spec["containers"] if port in c["ports"])
    assert redis["image"].startswith("redis:") and port["containerPort"] == 6379
    assert deployment["spec"]["replicas"] == 1

    # rollout state lives only here: the append-only file is on a PersistentVolumeClaim
    args = redis["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    mount = next(m for m in redis["volumeMounts"] if m["mountPath"] == data_dir)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in docs

    # with the password: Redis requires the Secret's, and the store URL gives the routers'
    secret = {"secretKeyRef": {"name": "model-router", "key": "redis-password"}}
    password = next(e for e in redis["env"] if e["name"] == "REDIS_PASSWORD")
    assert password["valueFrom"] == secret
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert urlsplit(fleet["store"]).password == "${REDIS_PASSWORD}"
    _, router = router_pod(docs)
    assert {"name": "REDIS_PASSWORD", "valueFrom": secret} in router["env"]

    # only the router's pods may connect, on the port the store URL names
    policy = docs[("NetworkPolicy", "redis")]
    assert selects(policy["spec"]["podSelector"]["matchLabels"],
                   deployment["spec"]["template"]["metadata"]["labels"])
    router_labels = router_pod(docs)[0]["metadata"]["labels"]
    [rule] = policy["spec"]["ingress"]
    assert all(selects(peer["podSelector"]["matchLabels"], router_labels)
               for peer in rule["from"])
    assert [p["port"] for p in rule["ports"]] == [port["containerPort"]]


def test_prometheus_scrapes_every_router_admin_port_and_nothing_else() -> None:
    docs = manifests()
    fleet = fleet_block(docs)
    deployment, _ = backend(docs, fleet["prometheus"])
    spec = deployment["spec"]["template"]["spec"]
    [prometheus] = spec["containers"]
    config_file = Path(next(a for a in prometheus["args"]
                            if a.startswith("--config.file=")).split("=", 1)[1])
    mount = next(m for m in prometheus["volumeMounts"]
                 if Path(m["mountPath"]) == config_file.parent)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    scrape = yaml.safe_load(docs[("ConfigMap", volume["configMap"]["name"])]
                            ["data"][config_file.name])
    # kubernetes_sd reads pods through the API: its service account may list and watch them
    binding = next(d for (kind, _), d in docs.items() if kind == "RoleBinding"
                   and {"kind": "ServiceAccount", "name": spec["serviceAccountName"]}
                   in d["subjects"])
    [rule] = docs[("Role", binding["roleRef"]["name"])]["rules"]
    assert "pods" in rule["resources"] and {"list", "watch"} <= set(rule["verbs"])

    # every router pod's admin port, and only that, is scraped on a path the admin serves
    _, container = router_pod(docs)
    admin = next(p for p in container["ports"] if p["name"] == "admin")
    kept = []
    for job in scrape["scrape_configs"]:
        if not any(sd["role"] == "pod" for sd in job.get("kubernetes_sd_configs", [])):
            continue
        for target in discovered_targets(docs):
            labels = relabel(job.get("relabel_configs", []), target)
            if labels is not None:
                kept.append((job, labels))
    assert [labels["__address__"] for _, labels in kept] == \
        [f"10.0.0.7:{admin['containerPort']}"]
    [(job, labels)] = kept
    assert labels["__meta_kubernetes_pod_label_app_kubernetes_io_name"] == ROUTER
    assert job.get("metrics_path", "/metrics") in admin_paths()
    interval = job.get("scrape_interval", scrape.get("global", {}).get("scrape_interval", "1m"))
    assert interval.endswith("s") and float(interval[:-1]) <= 5
    # the series carry the pod name, which is also the replica id of fleet_info
    assert labels["pod"] == labels["__meta_kubernetes_pod_name"]


def test_scrape_annotations_name_the_admin_port_once() -> None:
    docs = manifests()
    pod, container = router_pod(docs)
    admin = next(p for p in container["ports"] if p["name"] == "admin")
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == admin["containerPort"]
    assert annotations["prometheus.io/path"] in admin_paths()
    # a pod scraped through its Service's annotations too would count twice in fleet evidence
    service = docs[("Service", ROUTER)]
    assert not any(k.startswith("prometheus.io/")
                   for k in service["metadata"].get("annotations", {}))
    config = yaml.safe_load(docs[("ConfigMap", ROUTER_CONFIG)]["data"]["router.yaml"])
    assert config["admin"]["port"] == admin["containerPort"]


@pytest.mark.slow
async def test_the_pods_command_serves_the_mounted_config(tmp_path: Path, client) -> None:
    """The container's command and environment, run as they are on the mounted ConfigMap.
    Only what a pod gets from its surroundings moves: the ports (free loopback ones, not the
    pod IP's), the data and tmp volumes (under tmp_path), the log store (a file:// folder,
    not the Secret's bucket), and the fleet's Redis and Prometheus, here loopback ports nobody
    listens on: the pod must serve and be ready without them (fail static). A reload under
    the pod's workers prints no "Clearing labels" warning (issue 18)."""
    docs = manifests()
    pod, container = router_pod(docs)
    mounts = {m["name"]: Path(m["mountPath"]) for m in container["volumeMounts"]}
    command = image_argv(container)
    assert "--workers" in command  # the reload below runs under a supervisor
    config_arg = command.index("-c") + 1
    folder = mount_config_map(tmp_path / "etc", docs[("ConfigMap", ROUTER_CONFIG)])
    config_file = folder / Path(command[config_arg]).relative_to(mounts["config"])

    doc: dict[str, Any] = yaml.safe_load(config_file.read_text())
    port, admin = free_port(), free_port()
    doc["listen"].update(host="127.0.0.1", port=port)
    doc["admin"].update(host="127.0.0.1", port=admin)
    volume = tmp_path / "data"
    doc["state_dir"] = str(volume / Path(doc["state_dir"]).relative_to(mounts["data"]))
    log = doc["prediction_log"]
    log["dir"] = str(volume / Path(log["dir"]).relative_to(mounts["data"]))
    doc["fleet"].update(store=f"redis://127.0.0.1:{free_port()}/0",
                        prometheus=f"http://127.0.0.1:{free_port()}")
    config_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {**os.environ, **pod_env(container),
           "MODEL_ROUTER_LOG_STORE": f"file://{tmp_path / 'store'}",
           "TMPDIR": str(tmp_path / "tmp")}  # the tmp volume
    (tmp_path / "tmp").mkdir()

    executable = Path(sys.executable).parent / command[0]  # the installed entry point
    argv = [*command[1:config_arg], str(config_file), *command[config_arg + 1:]]
    proc = await asyncio.create_subprocess_exec(
        executable, *argv, env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    output = asyncio.ensure_future(proc.stdout.read())  # read all along: the pipe never fills
    served = Served(proc, port, admin)
    try:
        await wait_ready(served, client, timeout=60)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            async with client.get(served.admin_url(container[probe]["httpGet"]["path"])) as r:
                assert r.status == 200, probe
        async with client.get(served.admin_url(pod["metadata"]["annotations"]
                                               ["prometheus.io/path"])) as resp:
            assert resp.status == 200
            text = await resp.text()
            assert "model_router_config_reloads_total" in text
            assert re.search(rf'model_router_fleet_info\{{[^}}]*replica="{POD_NAME}"', text)
        async with client.get(served.admin_url("/-/fleet")) as resp:
            fleet = await resp.json()
            assert resp.status == 200 and fleet["replica"] == POD_NAME
            assert fleet["name"] == doc["fleet"]["name"] and fleet["store"] != "ok"

        # a reload (an operator's POST, with the token): the supervisor clears its weight and
        # revision labels, which warned at every reload while it carried the workers'
        # PROMETHEUS_MULTIPROC_DIR
        doc["routes"][0]["split"] = {"v1": 90, "v2": 10}
        config_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        token = env[doc["admin"]["token_env"]]
        async with client.post(served.admin_url("/-/reload"),
                               json={}, headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200, await resp.text()
        async with client.get(served.admin_url("/metrics")) as resp:
            text = await resp.text()
            assert 'model_router_traffic_weight{route="fraud",version="v2"} 10.0' in text
            assert 'model_router_config_reloads_total{result="success"} 2.0' in text

        # the kubelet's SIGTERM: drained and exited 0 before it would send SIGKILL
        served.proc.send_signal(signal.SIGTERM)
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        assert await asyncio.wait_for(served.proc.wait(), grace) == 0
        logged = (await output).decode()
        assert "supervisor: 2 workers" in logged  # the output was read: the next line can fail
        assert "Clearing labels" not in logged, logged
    finally:
        if served.proc.returncode is None:
            served.proc.kill()
            await served.proc.wait()
        output.cancel()


# -- the image, the hardened pod, who reaches it, its storage ---------------------------------

def test_the_pod_runs_the_images_entrypoint_as_the_images_user() -> None:
    stage = final_stage()
    names = [name for name, _ in stage]
    assert names.count("FROM") == 1 and len([n for n, _ in dockerfile_instructions()
                                             if n == "FROM"]) >= 2  # multi-stage
    assert json.loads(dict(stage)["ENTRYPOINT"]) == ["model-router"]
    uid, gid = (int(x) for x in dict(stage)["USER"].split(":"))
    assert uid >= 1000
    pod, container = router_pod(manifests())
    assert "command" not in container  # the image's entrypoint, the pod's args
    context = pod["spec"]["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (uid, gid, gid)
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    own = container["securityContext"]
    assert own["allowPrivilegeEscalation"] is False
    assert own["readOnlyRootFilesystem"] is True
    assert own["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_the_image_has_no_build_tools_and_a_small_context() -> None:
    stage = final_stage()
    base = dict(dockerfile_instructions())["ARG"]
    assert base == "PYTHON_IMAGE=python:3.11-slim"
    assert stage[0] == ("FROM", "${PYTHON_IMAGE}")
    final = " ".join(args for _, args in stage)
    # installed from the builder's wheels alone: no index, no compiler, no apt in the image
    assert "--no-index" in final and "from=builder" in final
    assert not re.search(r"apt-get|build-essential|gcc|COPY \. ", final)
    # the context is an allowlist: everything out, then what the builder copies
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line and not line.startswith("#")]
    assert ignore[0] == "*"
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "router"}
    copied = {part for name, args in dockerfile_instructions() if name == "COPY"
              and "--from" not in args for part in args.split()[:-1]}
    assert copied <= allowed


def test_admin_only_on_its_own_service_and_behind_the_network_policy() -> None:
    docs = manifests()
    pod, container = router_pod(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    labels = pod["metadata"]["labels"]
    services = [d for (kind, _), d in docs.items() if kind == "Service"
                and selects(d["spec"]["selector"], labels)]
    targets = {s["metadata"]["name"]: {p["targetPort"] for p in s["spec"]["ports"]}
               for s in services}
    assert targets == {ROUTER: {"http", "grpc"}, f"{ROUTER}-admin": {"admin"}}
    admin_service = docs[("Service", f"{ROUTER}-admin")]
    assert admin_service["spec"].get("type", "ClusterIP") == "ClusterIP"
    for service in services:  # one scrape path: the pods' annotations
        assert not any(k.startswith("prometheus.io/")
                       for k in service["metadata"].get("annotations", {}))

    [policy] = [d for (kind, _), d in docs.items() if kind == "NetworkPolicy"
                and selects(d["spec"]["podSelector"]["matchLabels"], labels)]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    by_port: dict[int, list[dict]] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            by_port.setdefault(port["port"], []).append(rule)
    # nothing else is let in
    assert set(by_port) == {ports["http"], ports["grpc"], ports["admin"]}
    assert by_port[ports["grpc"]] == by_port[ports["http"]]   # traffic: from anywhere
    [admin_rule] = by_port[ports["admin"]]
    peers = admin_rule["from"]  # never empty or absent: that would be anyone
    prometheus = docs[("Deployment", "prometheus")]["spec"]["template"]["metadata"]["labels"]
    assert any(set(p) == {"podSelector"} and selects(p["podSelector"]["matchLabels"], prometheus)
               for p in peers)
    operators = [p for p in peers if "namespaceSelector" in p]
    assert operators and all(p["namespaceSelector"]["matchLabels"]
                             and p["podSelector"]["matchLabels"] for p in operators)
    assert len(peers) == 2


def test_probes_tolerate_a_slow_answer_and_a_slow_start() -> None:
    docs = manifests()
    _, container = router_pod(docs)
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    startup = container["startupProbe"]
    assert readiness["failureThreshold"] >= 3 and 2 <= readiness["periodSeconds"] <= 10
    assert readiness["failureThreshold"] * readiness["periodSeconds"] >= 10
    assert liveness["httpGet"]["path"] == "/-/healthy"
    assert liveness["failureThreshold"] >= 3
    # three interpreters start under --workers: up to a minute on a busy node
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 60
    assert startup["httpGet"]["path"] in admin_paths()


def test_disruption_budget_keeps_a_router_serving() -> None:
    docs = manifests()
    deployment = docs[("Deployment", ROUTER)]
    [budget] = [d for (kind, _), d in docs.items() if kind == "PodDisruptionBudget"
                and selects(d["spec"]["selector"]["matchLabels"],
                            deployment["spec"]["template"]["metadata"]["labels"])]
    assert 1 <= budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_writable_only_where_the_router_writes_and_the_log_is_shipped(tmp_path: Path) -> None:
    docs = manifests()
    pod, container = router_pod(docs)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    writable = {Path(m["mountPath"]): volumes[m["name"]] for m in container["volumeMounts"]
                if not m.get("readOnly")}
    assert set(writable) == {Path("/var/lib/model-router"), Path("/tmp")}
    folder = mount_config_map(tmp_path / "etc", docs[("ConfigMap", ROUTER_CONFIG)])
    snapshot = load_snapshot(folder / "router.yaml", env=pod_env(container))
    data = Path("/var/lib/model-router")
    for path in (snapshot.state_dir, snapshot.prediction_log.dir):
        assert path.is_relative_to(data)
    # several replicas: the log is shipped (to the Secret's store), the volume is its spool
    ship = snapshot.prediction_log.ship
    assert ship is not None and ship.to == SECRET_VALUES["MODEL_ROUTER_LOG_STORE"]
    store = next(e for e in container["env"] if e["name"] == "MODEL_ROUTER_LOG_STORE")
    assert not store["valueFrom"]["secretKeyRef"].get("optional", False)
    assert docs[("Deployment", ROUTER)]["spec"]["replicas"] > 1
    assert "emptyDir" in writable[data]
    # a store that is down fills the log (on_full) before the kubelet evicts the pod
    size = writable[data]["emptyDir"]["sizeLimit"]
    assert size.endswith("Gi")
    workers = int(image_argv(container)[image_argv(container).index("--workers") + 1])
    log = snapshot.prediction_log
    assert log.retain_max_total_gb is not None
    assert float(size[:-2]) > log.retain_max_total_gb + workers * log.rotate_mb / 1024
