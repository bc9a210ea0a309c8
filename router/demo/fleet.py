"""``model-router demo --fleet``: three replicas walk one progressive rollout together.

- Engines: ``redis-server`` (no persistence) and ``prometheus`` (a generated config scraping
  every replica's admin ``/metrics`` each second) as child processes on free 127.0.0.1 ports,
  their state and logs under ``<dir>/``. Without either binary the demo says so and exits 1.
- The demo model servers run in this process; three ``serve`` subprocesses share one fleet
  config (``MODEL_ROUTER_REPLICA=replica-1..3``, ``--port/--admin-port``); simulated users are
  spread round-robin over the live replicas.
- Every second a view shows the leader, each replica's rollout step, weight, generation and
  status (from its ``/-/config`` and ``/-/fleet``) and the traffic each version got.
- The story: once every replica serves the second step, the leader gets SIGKILL; another
  replica takes the lease and the rollout goes on from that step until promoted. Then the
  fleet status and the fleet's history (the Redis stream) are printed.
- Bounded by ``duration``; every child is known by its PID and stopped by it at the end, on
  Ctrl-C and on failure (on Linux a child also dies with this process).
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from .run import features, start_models, v2_body, write_registry, write_yaml

HOST = "127.0.0.1"
FLEET = "demo-fleet"
ROUTE = "fraud"
LEASE_S = 3
REPLICAS = 3
STEPS = (10, 25, 50, 100)
KILL_AT_STEP = 1   # 0-based: the leader dies once every replica serves the second step
ENGINES = ("redis-server", "prometheus")


class DemoError(RuntimeError):
    """A child exited or never became ready; the message carries the end of its log."""


# -- child processes ------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the child binds it a moment later)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when this process dies, if available."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: not after fork
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    return preexec


_PREEXEC = _die_with_parent()


@dataclass
class Child:
    """One child process, logging to ``log``, signalled by its PID only."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<Child {self.name} pid={self.pid} {'alive' if self.alive else 'stopped'}>"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, cwd: Path) -> None:
        """Spawn it in a session of its own: Ctrl-C reaches the demo only, which then stops
        every child in order."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=cwd, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         # only prctl runs between fork and exec
                                         preexec_fn=_PREEXEC,  # noqa: PLW1509
                                         start_new_session=True)

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    async def wait(self, timeout: float) -> bool:
        """True once it has exited (reaped), False at ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.alive:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL at ``timeout``; never raises."""
        self.signal(signal.SIGTERM)
        if not await self.wait(timeout):
            self.signal(signal.SIGKILL)
            await self.wait(timeout)

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


async def wait_ready(child: Child, probe: Callable[[], Any], timeout: float = 20.0) -> None:
    """Await ``probe()`` (True when ready, never raises) until true; DemoError with the
    child's log when it exits first or at ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await probe():
        if not child.alive:
            raise DemoError(f"{child.name} exited before it was ready:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise DemoError(f"{child.name} not ready after {timeout:g}s:\n{child.tail()}")
        await asyncio.sleep(0.05)


def redis_probe(port: int) -> Callable[[], Any]:
    async def probe() -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"PING\r\n")
            return await asyncio.wait_for(reader.readline(), 1) == b"+PONG\r\n"
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
    return probe


def http_probe(session: aiohttp.ClientSession, url: str) -> Callable[[], Any]:
    async def probe() -> bool:
        try:
            async with session.get(url) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False
    return probe


# -- the fleet ------------------------------------------------------------------------------------

@dataclass
class Replica:
    id: str
    port: int
    admin: int
    child: Child
    state: dict[str, Any] | None = None     # its /-/config rollouts[ROUTE], last seen
    leading: bool = False
    killed: bool = False

    @property
    def alive(self) -> bool:
        return self.child.alive

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def admin_url(self, path: str) -> str:
        return f"http://{HOST}:{self.admin}{path}"


def fleet_router_doc(models: dict[str, int], redis_url: str, prometheus_url: str,
                     step_min_s: float) -> dict[str, Any]:
    """One config for every replica: a v1 -> v2 rollout, sticky users, the fleet block."""
    route = {
        "name": ROUTE, "match": {"path_prefix": "/v2/models/fraud"}, "protocol": "v2",
        "model": "fraud", "input_schema": "fraud-features@1", "validation": "enforce",
        "versions": {v: {"url": f"http://{HOST}:{models[v]}/v2/models/fraud"}
                     for v in ("v1", "v2")},
        "rollout": {"baseline": "v1", "canary": "v2", "steps": list(STEPS),
                    "step_min_s": step_min_s, "step_min_requests": 50,
                    "checks": {"error_rate": {"max_increase": 0.02}},
                    "on_failure": "rollback"},
        "sticky": {"header": "x-user-id"}, "timeout_s": 2.0}
    return {"listen": {"host": HOST, "port": 0}, "admin": {"host": HOST, "port": 0},
            "registry": "registry.yaml", "state_dir": "state",
            "prediction_log": {"dir": "logs", "payloads": "full", "flush_ms": 200},
            "fleet": {"name": FLEET, "store": redis_url, "prometheus": prometheus_url,
                      "lease_s": LEASE_S},
            "routes": [route]}


def prometheus_doc(targets: list[str]) -> dict[str, Any]:
    return {"global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "model-router",
                                "static_configs": [{"targets": targets}]}]}


# -- traffic --------------------------------------------------------------------------------------

@dataclass
class Traffic:
    """Client-side counts: every answer (replica, version, status) of the last seconds."""

    window: deque[tuple[float, str, str, int]] = field(default_factory=deque)
    sent: int = 0
    failed: int = 0
    by_version: dict[str, int] = field(default_factory=dict)

    def add(self, replica: str, version: str, status: int) -> None:
        self.window.append((time.monotonic(), replica, version, status))
        self.sent += 1
        self.failed += status == 0 or status >= 500
        self.by_version[version] = self.by_version.get(version, 0) + 1

    def recent(self, seconds: float = 1.0) -> list[tuple[float, str, str, int]]:
        cutoff = time.monotonic() - seconds
        while self.window and self.window[0][0] < cutoff - 5:
            self.window.popleft()
        return [w for w in self.window if w[0] >= cutoff]


async def users(replicas: list[Replica], traffic: Traffic, stop: asyncio.Event, seed: int,
                session: aiohttp.ClientSession) -> None:
    """One simulated user pool: sticky ids, V2 requests round-robin over the live replicas."""
    rng = random.Random(seed)
    turn = itertools.count(seed)
    while not stop.is_set():
        live = [r for r in replicas if r.alive]
        if not live:
            await asyncio.sleep(0.1)
            continue
        replica = live[next(turn) % len(live)]
        headers = {"x-user-id": f"user-{rng.randrange(2000)}",
                   "content-type": "application/json"}
        try:
            async with session.post(replica.url("/v2/models/fraud/infer"),
                                    data=v2_body(features(rng)), headers=headers) as resp:
                await resp.read()
                traffic.add(replica.id, resp.headers.get("x-model-version", "-"), resp.status)
        except (aiohttp.ClientError, TimeoutError):
            traffic.add(replica.id, "-", 0)  # the killed replica's requests in flight
        await asyncio.sleep(rng.uniform(0.01, 0.04))


# -- the view -------------------------------------------------------------------------------------

async def poll(replicas: list[Replica], session: aiohttp.ClientSession) -> str | None:
    """Refresh each live replica's rollout state and leading flag; the leader the store
    names (from any replica's ``/-/fleet``), or None."""
    async def one(replica: Replica) -> str | None:
        try:
            async with session.get(replica.admin_url("/-/config")) as resp:
                config = await resp.json()
            async with session.get(replica.admin_url("/-/fleet")) as resp:
                status = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        replica.state = (config.get("rollouts") or {}).get(ROUTE)
        replica.leading = bool(status.get("leading"))
        return status.get("leader")
    named = await asyncio.gather(*(one(r) for r in replicas if r.alive))
    return next((n for n in named if n), None)


def describe(replica: Replica) -> str:
    if replica.killed:
        return f"{replica.id} killed"
    s = replica.state
    if not s:
        return f"{replica.id} (no rollout yet)"
    mark = "*" if replica.leading else ""
    return (f"{replica.id}{mark} step {s['step'] + 1}/{len(STEPS)} {s['weight']:g}% "
            f"gen {s['generation']} {s['status']}")


def traffic_line(traffic: Traffic) -> str:
    recent = traffic.recent()
    total = len(recent) or 1
    versions = sorted({v for _, _, v, _ in recent if v != "-"})
    shares = " ".join(f"{v} {100 * sum(1 for w in recent if w[2] == v) / total:.0f}%"
                      for v in versions)
    errors = sum(1 for w in recent if w[3] == 0 or w[3] >= 500)
    return f"traffic {len(recent)} rps: {shares or '-'}, errors {errors}"


def table(replicas: list[Replica], traffic: Traffic) -> list[str]:
    recent = traffic.recent()
    row = "{} {:<10} {:<8} {:<5} {:>6}  {:<10}  {:<9} {:>4} {:>4} {:>4}"
    lines = [row.format(" ", "replica", "pid", "step", "weight", "generation", "status", "rps",
                        "v1", "v2")]
    for r in replicas:
        mine = [w for w in recent if w[1] == r.id]
        counts = {v: sum(1 for w in mine if w[2] == v) for v in ("v1", "v2")}
        s = r.state or {}
        step = f"{s['step'] + 1}/{len(STEPS)}" if s else "-"
        weight = f"{s['weight']:g}%" if s else "-"
        status = "KILLED" if r.killed else s.get("status", "-")
        lines.append(row.format("*" if r.leading and not r.killed else " ", r.id,
                                str(r.child.pid), step, weight, str(s.get("generation", "-")),
                                status, len(mine), counts["v1"], counts["v2"]))
    return lines


# -- the story ------------------------------------------------------------------------------------

@dataclass
class Story:
    """What happened so far; ``advance`` is called once a second after ``poll``."""

    started: float
    notes: list[str] = field(default_factory=list)
    killed: Replica | None = None
    killed_at: float = 0.0
    killed_state: dict[str, Any] | None = None
    new_leader: Replica | None = None
    promoted_at: float | None = None
    stuck: str | None = None

    def note(self, text: str) -> str:
        self.notes.append(f"t={time.monotonic() - self.started:4.0f}s {text}")
        return self.notes[-1]

    async def advance(self, replicas: list[Replica]) -> list[str]:
        """The next event of the story, if its moment came: the kill, the takeover, the
        promotion, or a rollout that stopped (paused, rolled back). Returns new notes."""
        live = [r for r in replicas if r.alive]
        states = [r.state for r in live]
        out: list[str] = []
        if not live or any(s is None for s in states):
            return out
        statuses = {s["status"] for s in states if s}
        if self.stuck is None and statuses & {"paused", "rolled_back", "aborted"}:
            self.stuck = ", ".join(sorted(statuses))
            out.append(self.note(f"the rollout stopped: {self.stuck} (see history below)"))
        leader = next((r for r in live if r.leading), None)
        if self.killed is None and leader is not None and all(
                s and s["step"] >= KILL_AT_STEP and s["status"] == "running" for s in states):
            self.killed, self.killed_state = leader, dict(leader.state or {})
            self.killed_at = time.monotonic()
            leader.child.signal(signal.SIGKILL)
            await leader.child.wait(5)
            leader.killed, leader.leading = True, False
            s = self.killed_state
            out.append(self.note(
                f"SIGKILL {leader.id} (the leader, pid {leader.child.pid}) at step "
                f"{s['step'] + 1}/{len(STEPS)} ({s['weight']:g}%), generation "
                f"{s['generation']}"))
        elif self.killed is not None and self.new_leader is None and leader is not None:
            self.new_leader = leader
            s, was = leader.state or {}, self.killed_state or {}
            same = "the same step" if s.get("step") == was.get("step") else "the next step"
            out.append(self.note(
                f"{leader.id} took over the lease {time.monotonic() - self.killed_at:.1f}s "
                f"after the kill (lease_s {LEASE_S}); the rollout goes on at {same}: "
                f"step {s['step'] + 1}/{len(STEPS)} ({s['weight']:g}%), generation "
                f"{s['generation']}"))
        if self.promoted_at is None and statuses == {"promoted"} and \
                all(s and s["weight"] == 100 for s in states):
            self.promoted_at = time.monotonic()
            out.append(self.note(
                f"promoted on all replicas ({', '.join(r.id for r in live)}): v2 at 100%, "
                f"generation {states[0]['generation'] if states[0] else '?'}"))
        return out


def missing_engines() -> list[str]:
    return [name for name in ENGINES if shutil.which(name) is None]


async def run_fleet_demo(folder: Path, duration: float, step_min_s: float = 4.0) -> int:
    missing = missing_engines()
    if missing:
        print(f"model-router demo --fleet needs {' and '.join(missing)} on PATH (not found).\n"
              f"Install them, e.g.: apt-get install redis-server prometheus\n"
              f"(plain `model-router demo` needs neither)", file=sys.stderr)
        return 1
    folder = folder.resolve()  # the children run in it and are given its paths
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("redis", "prometheus", "state", "logs"):  # a run never resumes an old one
        shutil.rmtree(folder / sub, ignore_errors=True)
        (folder / sub).mkdir()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    children: list[Child] = []
    runners: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    traffic = Traffic()
    story: Story | None = None
    replicas: list[Replica] = []
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            replicas, redis_url = await start_fleet(folder, session, children, runners,
                                                    step_min_s)
            if stop.is_set():
                return 0
            tasks = [asyncio.create_task(users(replicas, traffic, stop, seed, session))
                     for seed in range(4)]
            story = Story(time.monotonic())
            await live_view(replicas, traffic, story, session, stop, duration)
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await finale(replicas, traffic, story, folder, redis_url)
        except DemoError as exc:
            print(f"demo --fleet failed: {exc}", file=sys.stderr)
            return 1
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(c.stop() for c in reversed(children)))
            for runner in runners:
                await runner.cleanup()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    print(f"\nstopped {len(children)} processes by PID "
          f"({', '.join(f'{c.name} {c.pid}' for c in children)}) and the model servers; "
          f"logs in {folder}/")
    return 0


async def start_fleet(folder: Path, session: aiohttp.ClientSession, children: list[Child],
                      runners: list[Any], step_min_s: float) -> tuple[list[Replica], str]:
    """Redis, Prometheus, the model servers and the replicas, each waited for; every child
    is appended to ``children`` as soon as it is started (the caller stops them)."""
    redis_port, prom_port = free_port(), free_port()
    redis = Child("redis", ["redis-server", "--save", "", "--appendonly", "no", "--bind", HOST,
                            "--port", str(redis_port), "--dir", str(folder / "redis"),
                            "--daemonize", "no", "--protected-mode", "yes"],
                  folder / "redis" / "redis.log")
    replicas = [Replica(f"replica-{i}", free_port(), free_port(),
                        Child(f"replica-{i}", [], folder / f"replica-{i}.log"))
                for i in range(1, REPLICAS + 1)]
    prom_config = folder / "prometheus" / "prometheus.yml"
    prom_config.write_text(yaml.safe_dump(prometheus_doc(
        [f"{HOST}:{r.admin}" for r in replicas]), sort_keys=False))
    prometheus = Child("prometheus", [
        "prometheus", f"--config.file={prom_config}",
        f"--storage.tsdb.path={folder / 'prometheus' / 'data'}",
        f"--web.listen-address={HOST}:{prom_port}", "--log.level=warn"],
        folder / "prometheus" / "prometheus.log")
    for child in (redis, prometheus):
        child.start(folder)
        children.append(child)
    redis_url, prom_url = f"redis://{HOST}:{redis_port}/0", f"http://{HOST}:{prom_port}"
    models, ports = await start_models()
    runners.extend(models)
    write_registry(folder)
    config = folder / "router.yaml"
    write_yaml(config, fleet_router_doc(ports, redis_url, prom_url, step_min_s))
    await wait_ready(redis, redis_probe(redis_port))
    await wait_ready(prometheus, http_probe(session, f"{prom_url}/-/ready"))
    print(f"redis {redis_url} (pid {redis.pid}), prometheus {prom_url} (pid {prometheus.pid}, "
          f"scraping the admin ports every 1 s); model servers v1/v2 on ports "
          f"{ports['v1']}/{ports['v2']}; config in {config}")
    for r in replicas:
        r.child.argv = [sys.executable, "-m", "router.cli", "serve", "-c", str(config),
                        "--port", str(r.port), "--admin-port", str(r.admin)]
        r.child.env = {**os.environ, "MODEL_ROUTER_REPLICA": r.id}
        r.child.start(folder)
        children.append(r.child)
    await asyncio.gather(*(wait_ready(r.child, http_probe(session, r.admin_url("/-/ready")))
                           for r in replicas))
    for r in replicas:
        print(f"{r.id}: pid {r.child.pid}, router http://{HOST}:{r.port}, admin "
              f"http://{HOST}:{r.admin}")
    print(f"rollout v1 -> v2 over steps {list(STEPS)} %, step_min_s {step_min_s:g}, judged by "
          f"the leader on Prometheus's sums over all replicas; lease_s {LEASE_S}")
    sys.stdout.flush()
    return replicas, redis_url


async def live_view(replicas: list[Replica], traffic: Traffic, story: Story,
                    session: aiohttp.ClientSession, stop: asyncio.Event,
                    duration: float) -> None:
    """Once a second until ``stop``, ``duration``, or 2 s after the promotion (or after the
    rollout stopped): poll, advance the story, print the view."""
    tty = sys.stdout.isatty()
    while True:
        if stop.is_set():
            print("-> interrupted: stopping everything")
            return
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
        elapsed = time.monotonic() - story.started
        named = await poll(replicas, session)
        new = await story.advance(replicas)
        leader = next((r.id for r in replicas if r.leading and r.alive), None)
        if leader is None:
            leader = f"none ({named} holds the lease until it expires)" if named else "none"
        if tty:
            sys.stdout.write("\x1b[H\x1b[2J")
            print(f"model-router demo --fleet  t={elapsed:4.0f}s of {duration:g}s  "
                  f"(Ctrl-C stops)\n\nfleet {FLEET}: leader {leader}\n")
            print("\n".join(table(replicas, traffic)))
            print(f"\n{traffic_line(traffic)}\n")
            print("\n".join(story.notes[-5:]))
        else:
            for line in new:
                print(f"-> {line}")
            print(f"t={elapsed:4.0f}s leader {leader} | "
                  + " | ".join(describe(r) for r in replicas) + f" | {traffic_line(traffic)}")
        sys.stdout.flush()
        done = story.promoted_at or (time.monotonic() if story.stuck else None)
        if done is not None and time.monotonic() - done >= 2:
            return
        if elapsed >= duration:
            print(f"-> t={elapsed:4.0f}s duration {duration:g}s reached before the rollout "
                  "ended")
            return


async def finale(replicas: list[Replica], traffic: Traffic, story: Story, folder: Path,
                 redis_url: str) -> None:
    from ..control.client import fleet_command
    from ..control.store import read_history

    print("\n== story ==")
    print("\n".join(story.notes) or "(nothing happened yet)")
    print(f"traffic: {traffic.sent} requests, by version {dict(sorted(traffic.by_version.items()))}"
          f", {traffic.failed} failed (in flight to the killed replica)")
    survivor = next((r for r in replicas if r.alive), None)
    if survivor is not None:
        print(f"\n== model-router fleet status -c {folder}/router.yaml --admin "
              f"{survivor.admin_url('')} ==")
        await asyncio.to_thread(fleet_command, str(folder / "router.yaml"),
                                survivor.admin_url(""))
    print("\n== model-router history (the fleet's stream in Redis; rollout events) ==")
    from redis.exceptions import RedisError
    try:
        events = await asyncio.to_thread(read_history, redis_url, FLEET)
    except (RedisError, OSError) as exc:
        print(f"cannot read the fleet history: {exc}")
        return
    for e in events:
        route = (e.get("routes") or {}).get(ROUTE) or {}
        if e.get("event") == "applied":
            print(f"{e.get('ts')}  applied      by {e.get('replica')}  revision "
                  f"{e.get('revision')}")
        elif e.get("source") == "rollout":
            weights = ", ".join(f"{v} {w:g}" for v, w in (route.get("weights") or {}).items())
            step = route.get("step")
            print(f"{e.get('ts')}  {e.get('event'):<12} by {e.get('replica')}  step "
                  f"{'-' if step is None else step + 1}/{len(STEPS)}  weights {weights}")


def fleet_demo(folder: str, duration: float) -> int:
    from ..process.runtime import run
    return int(run(run_fleet_demo(Path(folder), duration)))
