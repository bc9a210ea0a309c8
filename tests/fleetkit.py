"""Real engines for fleet tests: redis-server and prometheus as child processes on 127.0.0.1.

- Each engine runs in its own directory on a free loopback port, binds 127.0.0.1 only, and is
  waited for with a deadline (Redis answers PING, Prometheus answers 200 on /-/ready).
- A process is known by its PID and stopped by it: ``stop()`` sends SIGTERM and, at the
  deadline, SIGKILL; ``kill()`` sends SIGKILL (a crash); ``close()`` is the synchronous
  finalizer a fixture calls whatever happened (idempotent, bounded).
- On Linux a child also gets SIGKILL when the test process dies first, so a killed pytest
  leaves no engine holding a port.
- ``require(binary)`` skips the test, with the reason, when an engine is not installed
  (`make test` installs them with apt-get as root).
- Prometheus scrapes one job, ``model-router``, every second; its targets come from a file_sd
  JSON file (refresh 1s) that ``set_targets`` replaces at run time. A change reaches the
  scrapers in about 5.5 s whatever the refresh: Prometheus 2.42 passes discovery updates on
  at most every 5 s (no flag changes that), so a test should change targets rarely.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

HOST = "127.0.0.1"


class EngineError(RuntimeError):
    """An engine exited, never became ready, or refused a request; the message has its log."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may still take it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def require(binary: str) -> str:
    """The path of ``binary``; skips the calling test, with the reason, when it is missing."""
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not installed: make test installs it with apt-get as root")
    return path


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when this process dies, if available."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # loaded here: nothing may load after fork
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)
    return preexec


_PREEXEC = _die_with_parent()


class Engine:
    """One engine child process on ``HOST:port``; subclasses give its argv and readiness probe."""

    name = "engine"
    ready_poll_s = 0.02

    def __init__(self, workdir: Path, binary: str, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self._port_chosen = port is not None
        self.port = port if port is not None else free_port()
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} pid={self.pid} {HOST}:{self.port} {state}>"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- what a subclass says ------------------------------------------------------------------

    def argv(self) -> list[str]:
        raise NotImplementedError

    async def answers(self) -> bool:
        """One bounded readiness probe; never raises."""
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, timeout: float = 10.0) -> None:
        """Start and wait until it answers. On a first start a port another process took in
        the meantime is replaced by a fresh one (twice at most); a restart keeps its port."""
        if self.running:
            raise EngineError(f"{self!r} is already running")
        for attempt in range(3):
            self._spawn()
            try:
                await self._wait_ready(timeout)
                return
            except EngineError:
                if self._port_chosen or attempt == 2 or not self._port_was_taken():
                    raise
                self.port = free_port()

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM by PID, wait for the exit; SIGKILL if it has not exited by ``timeout``."""
        if not self.running:
            return
        self._signal(signal.SIGTERM)
        if not await self._wait_exit(timeout):
            self._signal(signal.SIGKILL)
            await self._wait_exit(timeout)

    async def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL by PID (the engine crashes: no shutdown work), and reap it."""
        if not self.running:
            return
        self._signal(signal.SIGKILL)
        if not await self._wait_exit(timeout):
            raise EngineError(f"{self!r} survived SIGKILL for {timeout}s")

    async def restart(self, timeout: float = 10.0) -> None:
        """Stop (if running) and start again on the same port; a new PID."""
        await self.stop()
        self._port_chosen = True
        await self.start(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """The finalizer: SIGTERM, then SIGKILL at ``timeout``, by PID; blocking, bounded,
        idempotent, never raises for a process already gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout)

    # -- the process ---------------------------------------------------------------------------

    def _spawn(self) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=_PREEXEC)

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    async def _wait_exit(self, timeout: float) -> bool:
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.proc.poll() is None:
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise EngineError(f"{self.name} exited with {self.proc.returncode} before it "
                                  f"was ready on port {self.port}:\n{self.log_tail()}")
            if await self.answers():
                return
            if loop.time() > deadline:
                self.close()
                raise EngineError(f"{self.name} not ready on port {self.port} after "
                                  f"{timeout}s:\n{self.log_tail()}")
            await asyncio.sleep(self.ready_poll_s)

    def log_tail(self, chars: int = 2000) -> str:
        """The end of what the engine wrote since its last start."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")[-chars:]
        except OSError:
            return ""

    def _port_was_taken(self) -> bool:
        return "address already in use" in self.log_tail(20_000).lower()


class RedisServer(Engine):
    """redis-server without persistence (a restart starts empty) in ``workdir``."""

    name = "redis"

    def __init__(self, workdir: Path, binary: str = "redis-server",
                 port: int | None = None) -> None:
        super().__init__(workdir, binary, port)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def argv(self) -> list[str]:
        return [self.binary, "--save", "", "--appendonly", "no", "--bind", HOST,
                "--port", str(self.port), "--dir", str(self.workdir), "--daemonize", "no",
                "--protected-mode", "yes"]

    async def answers(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), 1)
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            writer.write(b"PING\r\n")
            # A server still loading answers -LOADING: not ready yet.
            return await asyncio.wait_for(reader.readline(), 1) == b"+PONG\r\n"
        except (OSError, asyncio.TimeoutError):
            return False
        finally:
            writer.close()


class PrometheusServer(Engine):
    """Prometheus scraping the job ``model-router`` every second from ``set_targets``."""

    name = "prometheus"
    ready_poll_s = 0.05

    def __init__(self, workdir: Path, binary: str = "prometheus", port: int | None = None,
                 scrape_interval: str = "1s") -> None:
        super().__init__(workdir, binary, port)
        self.targets: tuple[str, ...] = ()
        self.targets_path = workdir / "targets.json"
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump({
            "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                       "evaluation_interval": scrape_interval},
            "scrape_configs": [{
                "job_name": "model-router",
                "file_sd_configs": [{"files": [str(self.targets_path)],
                                     "refresh_interval": "1s"}],
            }],
        }, sort_keys=False))
        self.set_targets([])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def argv(self) -> list[str]:
        return [self.binary, f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={HOST}:{self.port}", "--log.level=warn"]

    def set_targets(self, targets: Sequence[str], labels: Mapping[str, str] | None = None) -> None:
        """Replace the scrape targets (``host:port``, scraped at ``/metrics``) by renaming a new
        file over the old; Prometheus, running or not, applies it within about 5.5 s."""
        for target in targets:
            if "://" in target or "/" in target:
                raise ValueError(f"a target is host:port, not a URL: {target!r}")
        groups = [{"targets": list(targets), "labels": dict(labels or {})}] if targets else []
        tmp = self.targets_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        os.replace(tmp, self.targets_path)
        self.targets = tuple(targets)

    async def answers(self) -> bool:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s:
                async with s.get(f"{self.url}/-/ready") as resp:
                    return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; its ``data``, or EngineError with Prometheus's error."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            async with s.get(f"{self.url}/api/v1/{path}", params=params) as resp:
                body = await resp.json(content_type=None)
        if body.get("status") != "success":
            raise EngineError(f"prometheus {path} {params}: {body.get('errorType')}: "
                              f"{body.get('error')}")
        return body["data"]

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query now: the ``result`` list (for a vector, one
        ``{"metric": {...}, "value": [ts, "text"]}`` per series)."""
        data = await self.api("query", query=promql)
        result = data["result"]
        # A scalar or string answer is one [ts, "text"] pair; wrapped so callers get one shape.
        return result if data["resultType"] in ("vector", "matrix") else [{"metric": {},
                                                                            "value": result}]

    async def wait_for_query(self, promql: str, predicate: Callable[[list[dict[str, Any]]], bool],
                             timeout: float = 10.0) -> list[dict[str, Any]]:
        """Poll ``query(promql)`` until ``predicate(result)``; EngineError (with the last result)
        at the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = await self.query(promql)
            if predicate(result):
                return result
            if loop.time() > deadline:
                raise EngineError(f"{promql!r} still {result} after {timeout}s")
            await asyncio.sleep(0.1)

    async def active_targets(self) -> list[dict[str, Any]]:
        """The active targets as the API lists them (``scrapeUrl``, ``health``, ``lastError``)."""
        data = await self.api("targets", state="active")
        return list(data["activeTargets"])

    async def wait_for_targets_up(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until exactly ``n`` targets are active, all of them from the last
        ``set_targets`` (so targets it replaced no longer count), and every one has been
        scraped "up"; returns them. EngineError listing the targets at the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            targets = await self.active_targets()
            if len(targets) == n and all(t["health"] == "up"
                                         and t["labels"].get("instance") in self.targets
                                         for t in targets):
                return targets
            if loop.time() > deadline:
                seen = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
                raise EngineError(f"wanted {n} targets up after {timeout}s, have {seen}")
            await asyncio.sleep(0.1)


def value(result: list[dict[str, Any]]) -> float | None:
    """The number of a one-series query result (``sum(...)``); None when it has no series."""
    if not result:
        return None
    if len(result) > 1:
        raise ValueError(f"{len(result)} series, expected one: {result}")
    return float(result[0]["value"][1])
