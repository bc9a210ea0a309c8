"""`model-router demo --fleet`: three real replicas, Redis and Prometheus walk one rollout
through a leader SIGKILL; without the engines it says what to install and exits 1."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def demo(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
         timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router.cli", "--log-level", "ERROR", "demo",
                           "--fleet", "--dir", str(tmp_path / "demo"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env,
                          check=False)


def test_without_the_engines_it_says_what_to_install_and_exits_1(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    done = demo(tmp_path, "--duration", "5", env={**os.environ, "PATH": str(empty)},
                timeout=60)
    assert done.returncode == 1
    assert "needs redis-server and prometheus on PATH" in done.stderr
    assert "apt-get install redis-server prometheus" in done.stderr
    assert done.stdout == ""


@pytest.mark.slow
@pytest.mark.loopback
def test_a_leader_kill_mid_rollout_and_the_rollout_is_promoted_on_all_replicas(
        tmp_path: Path) -> None:
    for binary in ("redis-server", "prometheus"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} not installed: make test installs it with apt-get as root")
    started = time.monotonic()
    done = demo(tmp_path, "--duration", "75")
    took = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, (out[-3000:], done.stderr[-3000:])

    replicas = dict(re.findall(r"^(replica-\d): pid \d+, router http://127\.0\.0\.1:(\d+)",
                               out, re.MULTILINE))
    assert sorted(replicas) == ["replica-1", "replica-2", "replica-3"], out[:2000]
    killed = re.search(r"-> t=\s*\d+s SIGKILL (replica-\d) \(the leader, pid \d+\) at step "
                       r"(\d)/4", out)
    assert killed, out[-3000:]
    took_over = re.search(r"-> t=\s*\d+s (replica-\d) took over the lease [\d.]+s after the "
                          r"kill \(lease_s 3\); the rollout goes on at the same step: step "
                          r"(\d)/4", out)
    assert took_over, out[-3000:]
    assert took_over[1] != killed[1] and took_over[2] == killed[2] == "2"
    survivors = sorted(set(replicas) - {killed[1]})
    assert f"promoted on all replicas ({', '.join(survivors)}): v2 at 100%" in out
    final = re.findall(r"^t=\s*\d+s leader .*$", out, re.MULTILINE)[-1]  # the last view line
    for replica in survivors:
        assert re.search(rf"{replica}\*? step 4/4 100% gen \d+ promoted", final), final
    assert f"{killed[1]} killed" in final and "v2 100%" in final

    # The fleet's history: each step once, in order; the steps after the kill are the new
    # leader's, never the dead one's.
    steps = re.findall(r"^\S+  (rollout_step|promoted)\s+by (replica-\d)  step (\d)/4", out,
                       re.MULTILINE)
    assert [(e, int(s)) for e, _, s in steps] == \
        [("rollout_step", 1), ("rollout_step", 2), ("rollout_step", 3), ("rollout_step", 4),
         ("promoted", 4)], steps
    assert {by for _, by, s in steps if int(s) > 2} == {took_over[1]}
    assert re.search(r"^ \* " + took_over[1] + r": revision \w+, fraud 4@gen\d+", out, re.MULTILINE)

    # Everything it started was stopped: no replica port answers any more.
    assert "stopped 5 processes by PID" in out
    for port in replicas.values():
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(port))) != 0
    print(f"\ndemo --fleet took {took:.1f} s")
