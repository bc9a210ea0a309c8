"""The Dockerfile builds, and its image serves: built with the container engine on PATH
(docker, else podman), run as the pod runs it (read-only root, every capability dropped, no
privilege escalation, writable /tmp and /var/lib/model-router, the ConfigMap's config with
the admin API on 0.0.0.0 behind its token), /-/healthy answered on a loopback-published port,
then stopped by its id. Skipped, with the reason, where no engine is usable or the base image
cannot be had (no registry reachable)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
BASE = "python:3.11-slim"
TOKEN = "smoke-test-token"

pytestmark = pytest.mark.slow


def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def engine() -> list[str]:
    """The first usable engine, as argv; skips with each one's reason when none is."""
    reasons = []
    for name in ("docker", "podman"):
        if shutil.which(name) is None:
            reasons.append(f"{name}: not on PATH")
            continue
        info = run(name, "info", timeout=60)
        if info.returncode != 0:
            reasons.append(f"{name}: {last_line(info)}")
            continue
        argv = [name]
        if name == "podman" and shutil.which("runc") and "crun" in info.stdout:
            # crun refuses hosts with cgroups in hybrid mode; runc runs there too
            argv += ["--runtime", "runc"]
        return argv
    pytest.skip("no usable container engine: " + "; ".join(reasons))


def base_image(cli: list[str]) -> None:
    if run(*cli, "image", "inspect", BASE).returncode == 0:
        return
    pulled = run(*cli, "pull", BASE, timeout=600)
    if pulled.returncode != 0:
        pytest.skip(f"{cli[0]} cannot pull the base image {BASE}: {last_line(pulled)}")


def limits() -> list[str]:
    """Resource limits no higher than this process's: raising one needs CAP_SYS_RESOURCE,
    which a sandboxed engine may lack."""
    import resource

    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]


def test_the_image_builds_and_serves(tmp_path: Path) -> None:
    cli = engine()
    base_image(cli)
    tag = f"model-router:smoke-{os.getpid()}"
    build = run(*cli, "build", "-t", tag, str(ROOT), timeout=1200)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    container = None
    try:
        # what the final stage is: the user and the entrypoint the manifests rely on
        inspect = run(*cli, "image", "inspect", tag)
        [config] = [c.get("Config", c.get("config")) for c in json.loads(inspect.stdout)]
        assert config["User"] == "10001:10001"
        assert config["Entrypoint"] == ["model-router"]
        tools = run(*cli, "run", "--rm", *limits(), "--entrypoint", "sh", tag, "-c",
                    "command -v gcc cc make || echo none")
        assert tools.stdout.strip() == "none", tools.stdout

        # the ConfigMap's config, without the fleet (no Redis here) and shipping to a folder
        docs = list(yaml.safe_load_all((ROOT / "config/k8s/configmap.yaml").read_text()))
        etc = tmp_path / "etc"
        etc.mkdir()
        for name, text in docs[0]["data"].items():
            (etc / name).write_text(text)
        doc = yaml.safe_load((etc / "router.yaml").read_text())
        del doc["fleet"]
        (etc / "router.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        admin = free_port()
        started = run(
            *cli, "run", "-d", *limits(), "--read-only", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--tmpfs", "/tmp",
            "--tmpfs", "/var/lib/model-router:uid=10001,gid=10001",
            "-v", f"{etc}:/etc/model-router:ro",
            "-e", f"MODEL_ROUTER_ADMIN_TOKEN={TOKEN}",
            "-e", "MODEL_ROUTER_LOG_STORE=file:///var/lib/model-router/store",
            "-p", f"127.0.0.1:{admin}:{doc['admin']['port']}", tag,
            "serve", "-c", "/etc/model-router/router.yaml", "--workers", "2")
        assert started.returncode == 0, started.stderr
        container = started.stdout.strip().splitlines()[-1]
        deadline, status = time.monotonic() + 90, None
        while time.monotonic() < deadline and status != 200:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/-/healthy",
                                            timeout=2) as resp:
                    status = resp.status
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        logs = run(*cli, "logs", container)
        assert status == 200, logs.stdout[-3000:] + logs.stderr[-3000:]
        stopped = run(*cli, "stop", "-t", "30", container)
        assert stopped.returncode == 0, stopped.stderr
        code = run(*cli, "inspect", "-f", "{{.State.ExitCode}}", container)
        assert code.stdout.strip() == "0", run(*cli, "logs", container).stderr[-3000:]
    finally:
        if container is not None:
            run(*cli, "rm", "-f", container)
        run(*cli, "rmi", "-f", tag)
