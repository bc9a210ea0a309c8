"""Bounded memory beside clients that never read: `python -m loadtest.backpressure [--quick]`.

Issue 13, "Must deliver" 2. Starts on 127.0.0.1: a benchmark upstream for normal traffic, a
second one with large answers (`loadtest.upstream --big`: 1 MiB with a Content-Length, and a
chunked stream generated on the fly), and `model-router serve` (router_full's config plus a
raw `/big` route; `client_timeout_s: 2`). Pinned like `python -m loadtest`: the router on
CPU 0, everything else on CPU 1 (the large-answer upstream at nice 10, so its copying does
not delay the runner that times the normal clients). Then, in one run:

1. baseline: normal clients alone, small V2 POSTs at a fixed rate: p50/p99, 503s, errors;
2. hostile: the same load beside N connections that each pipeline K GETs of 1 MiB answers
   and never read, and M connections that ask for the 100 MB stream and never read.

Prints the router's VmRSS before / peak / after, the growth per hostile connection, the
normal clients' p99 with and without the hostiles and its ratio, their 503s, whether the
router closed every non-reading connection within client_timeout_s, and a verdict against the
target. Exits 1 when the target is not met. Results also go to
loadtest/results/backpressure-<stamp>.json.

A close is seen without reading, from both ends: the router's side of each hostile connection
in /proc/net/tcp (it leaves ESTABLISHED when the router closes or aborts its socket; that is
the check) and the client's own socket state (TCP_INFO: the FIN or RST reached it). They
differ when the router closes without a RST: the kernel then keeps the unsent answer bytes
and queues the FIN behind them (FIN-WAIT-1), a non-reading client never sees it, and that
memory is the kernel's, not in the router's RSS; so the kernel send queues of those sockets
are printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import aiohttp
import yaml

from loadtest.__main__ import (
    BODY,
    HERE,
    PATH,
    ROOT,
    TWO_CPUS,
    Proc,
    free_port,
    pct,
    pinned,
    router_config,
    rss_mb,
)

MIB = 1 << 20
TARGET = ("RSS growth bounded by (connections x ~1 MiB) and normal clients unaffected "
          "(no 503, p99 ratio close to 1)")
PER_CONNECTION_MIB = 2.0  # "~1 MiB": the capped output buffer plus one 1 MiB answer in hand
FIXED_MIB = 8.0           # not per connection: allocator slack, pools, the normal load's churn
P99_RATIO_MAX = 1.5       # "close to 1" on a shared 2-CPU machine
REQUEST_TIMEOUT_S = 10.0  # a normal request slower than this counts as an error (status 0)
SOCKET_TIMEOUT_S = 5.0    # connecting and sending a hostile connection's requests
TCP_ESTABLISHED = 1       # tcpi_state and /proc/net/tcp "st"


@dataclass(frozen=True, slots=True)
class Plan:
    """What one run does; every count and duration is bounded."""

    rate: float               # normal requests per second
    baseline_s: float
    hostile_s: float          # must exceed client_timeout_s to see the router close them
    settle_s: float           # after the hostiles close, before the "after" RSS
    pipeliners: int           # N
    depth: int                # K pipelined GETs of 1 MiB per pipeliner
    streamers: int            # M
    stream_mb: int
    client_timeout_s: float
    max_concurrency: int

    @property
    def hostiles(self) -> int:
        return self.pipeliners + self.streamers

    @property
    def close_bound_s(self) -> float:
        """client_timeout_s plus the sweep's lateness (a quarter of it) and polling."""
        return self.client_timeout_s * 1.25 + 0.25


@dataclass(frozen=True, slots=True)
class Normal:
    """What the normal clients saw in one phase."""

    seconds: float
    latencies_ms: tuple[float, ...]  # 200s only, from the scheduled send time
    statuses: dict[int, int]         # 0: transport error or over REQUEST_TIMEOUT_S
    failed_at: tuple[float, ...]     # scheduled send times (s into the phase) of the non-200s
    worst_at: float                  # scheduled send time of the slowest 200

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def rejected(self) -> int:
        return self.statuses.get(503, 0)

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)

    def p(self, q: float) -> float:
        return pct(list(self.latencies_ms), q) if self.latencies_ms else math.nan

    def line(self) -> str:
        when = f" (sent {min(self.failed_at):.2f}-{max(self.failed_at):.2f} s into the " \
            "phase)" if self.failed_at else ""
        return (f"{self.sent} requests in {self.seconds:.0f} s, p50 {self.p(.5):.2f} ms, "
                f"p99 {self.p(.99):.2f} ms, max {self.p(1):.0f} ms (sent {self.worst_at:.2f} s "
                f"into the phase), 503s {self.rejected}, errors {self.errors} "
                f"{dict(sorted(self.statuses.items()))}{when}")


@dataclass(slots=True)
class Hostile:
    """A connection that sent its requests and never reads."""

    kind: Literal["pipeline", "stream"]
    sock: socket.socket
    port: int                             # our local port: the router's peer port
    sent_at: float                        # monotonic, after the last request byte went out
    closed_after: float | None = None     # seconds from sent_at to the router closing it
    seen_after: float | None = None       # ... to its FIN or RST reaching this socket

    def sees_close(self) -> bool:
        """True once a FIN or RST from the router arrived (this socket left ESTABLISHED)."""
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        except OSError:
            return True
        return info[0] != TCP_ESTABLISHED


def router_sockets(router_port: int) -> dict[int, tuple[int, int]]:
    """The router's side of its loopback client connections, from /proc/net/tcp:
    peer port -> (TCP state, bytes in the kernel send queue). Orphans (closed by the router,
    FIN still queued) are listed too; a socket fully gone is absent."""
    local = f"0100007F:{router_port:04X}"
    out: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] != "00000000:0000":
            out[int(fields[2].split(":")[1], 16)] = (int(fields[3], 16),
                                                     int(fields[4].split(":")[0], 16))
    return out


@dataclass(slots=True)
class Report:
    plan: Plan
    router_code: str
    baseline: Normal | None = None
    hostile: Normal | None = None
    rss_before: float = math.nan
    rss_samples: list[tuple[float, float]] = field(default_factory=list)  # (s, MiB)
    rss_after: float = math.nan
    opened: int = 0
    closed_within: int = 0
    seen_within: int = 0
    close_times: dict[str, list[float]] = field(default_factory=dict)
    kernel_queued: tuple[int, int, dict[str, int]] = (0, 0, {})  # bytes, sockets, states

    @property
    def rss_peak(self) -> float:
        return max([self.rss_before, *(m for _, m in self.rss_samples)])

    @property
    def growth(self) -> float:
        return self.rss_peak - self.rss_before

    @property
    def growth_per_connection(self) -> float:
        return self.growth / max(1, self.opened)

    @property
    def growth_bound(self) -> float:
        return self.opened * PER_CONNECTION_MIB + FIXED_MIB

    @property
    def p99_ratio(self) -> float:
        assert self.baseline is not None and self.hostile is not None
        return self.hostile.p(.99) / self.baseline.p(.99)

    def failures(self) -> list[str]:
        """Why the target is not met; empty when it is."""
        assert self.baseline is not None and self.hostile is not None
        out = []
        if not self.growth <= self.growth_bound:
            out.append(f"RSS +{self.growth:.1f} MiB > {self.growth_bound:g} MiB "
                       f"({self.growth_per_connection:.1f} MiB per hostile connection)")
        if self.hostile.rejected:
            out.append(f"{self.hostile.rejected} normal requests got 503")
        if self.hostile.errors - self.hostile.rejected:
            out.append(f"{self.hostile.errors - self.hostile.rejected} other normal errors")
        if not self.p99_ratio <= P99_RATIO_MAX:
            out.append(f"normal p99 {self.p99_ratio:.2f}x the baseline (> {P99_RATIO_MAX:g}x)")
        if self.closed_within < self.opened:
            out.append(f"{self.opened - self.closed_within} of {self.opened} non-reading "
                       f"connections not closed within {self.plan.close_bound_s:.2f} s")
        return out


# -- normal clients ----------------------------------------------------------------------------

async def normal_load(port: int, rate: float, seconds: float) -> Normal:
    """``rate * seconds`` small V2 POSTs on a fixed schedule, each launched at its time;
    latency from the scheduled time, so a stalled router shows up as latency instead of as
    fewer requests sent."""
    count = max(1, int(rate * seconds))
    latencies: list[float] = []
    failed_at: list[float] = []
    worst = (0.0, 0.0)  # (latency ms, scheduled send time)
    statuses: Counter[int] = Counter()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
        async def one(i: int, at: float) -> None:
            nonlocal worst
            try:
                async with s.post(f"http://127.0.0.1:{port}{PATH}", data=BODY,
                                  headers={"x-user-id": f"user-{i % 1000}",
                                           "content-type": "application/json"}) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status = 0
            statuses[status] += 1
            if status == 200:
                latencies.append((time.perf_counter() - at) * 1000)
                worst = max(worst, (latencies[-1], at - begin))
            else:
                failed_at.append(at - begin)

        tasks: set[asyncio.Task[None]] = set()
        begin = time.perf_counter()
        for i in range(count):
            at = begin + i / rate
            if (delay := at - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(one(i, at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    return Normal(seconds, tuple(latencies), dict(statuses), tuple(sorted(failed_at)),
                  worst[1])


# -- hostile clients ---------------------------------------------------------------------------

def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


async def open_hostile(port: int, kind: Literal["pipeline", "stream"],
                       requests: bytes) -> Hostile | None:
    """Connect, send ``requests`` in one write, return without reading; None if refused."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), SOCKET_TIMEOUT_S)
        await asyncio.wait_for(loop.sock_sendall(sock, requests), SOCKET_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError) as exc:
        print(f"  a {kind} connection failed: {exc!r}", flush=True)
        sock.close()
        return None
    return Hostile(kind, sock, sock.getsockname()[1], time.monotonic())


async def watch(hostiles: list[Hostile], router_port: int, stop: asyncio.Event,
                limit_s: float) -> None:
    """Note when the router closes each hostile connection, and when the client sees it;
    every 50 ms until ``stop`` or ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while not stop.is_set() and time.monotonic() < deadline:
        now = time.monotonic()
        states = router_sockets(router_port)
        for h in hostiles:
            if h.closed_after is None and states.get(h.port, (0, 0))[0] != TCP_ESTABLISHED:
                h.closed_after = now - h.sent_at
            if h.seen_after is None and h.sees_close():
                h.seen_after = now - h.sent_at
        await asyncio.sleep(0.05)


async def sample_rss(pid: int, samples: list[tuple[float, float]], stop: asyncio.Event,
                     limit_s: float) -> None:
    """VmRSS every 100 ms into ``samples``; until ``stop`` or ``limit_s``."""
    start = time.monotonic()
    while not stop.is_set() and time.monotonic() - start < limit_s:
        samples.append((time.monotonic() - start, rss_mb(pid)))
        await asyncio.sleep(0.1)


# -- the run -----------------------------------------------------------------------------------

async def check_big_route(port: int) -> None:
    """Both large answers arrive whole through the router (read fully, once each), so a
    small RSS growth later cannot come from a broken route."""
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        for path, size in ((f"/big/bytes/{MIB}", MIB), ("/big/stream/1000000", 1_000_000)):
            async with s.get(f"http://127.0.0.1:{port}{path}") as r:
                body = await r.read()
            if r.status != 200 or len(body) != size:
                raise RuntimeError(f"GET {path} through the router: {r.status}, "
                                   f"{len(body)} bytes, expected 200 and {size}")


async def measure(plan: Plan, port: int, pid: int, report: Report) -> None:
    await check_big_route(port)
    print(f"warm-up and baseline: normal clients alone, {plan.rate:g} req/s", flush=True)
    await normal_load(port, plan.rate, 1.0)
    report.baseline = await normal_load(port, plan.rate, plan.baseline_s)
    print(f"  {report.baseline.line()}", flush=True)
    report.rss_before = rss_mb(pid)

    print(f"hostile: {plan.pipeliners} x {plan.depth} pipelined GETs of 1 MiB + "
          f"{plan.streamers} x {plan.stream_mb} MB stream, never read; normal clients "
          f"beside them for {plan.hostile_s:g} s", flush=True)
    stop = asyncio.Event()
    limit = plan.hostile_s + REQUEST_TIMEOUT_S + 5
    sampler = asyncio.ensure_future(sample_rss(pid, report.rss_samples, stop, limit))
    opened: list[Hostile | None] = await asyncio.gather(
        *[open_hostile(port, "pipeline", _get(f"/big/bytes/{MIB}") * plan.depth)
          for _ in range(plan.pipeliners)],
        *[open_hostile(port, "stream", _get(f"/big/stream/{plan.stream_mb * 1_000_000}"))
          for _ in range(plan.streamers)])
    hostiles = [h for h in opened if h is not None]
    watcher = asyncio.ensure_future(watch(hostiles, port, stop, limit))
    try:
        report.hostile = await normal_load(port, plan.rate, plan.hostile_s)
    finally:
        stop.set()
        await asyncio.gather(watcher, sampler)
        report.kernel_queued = kernel_queues(port, hostiles)
        for h in hostiles:
            h.sock.close()  # unread data: the kernel sends RST
    print(f"  {report.hostile.line()}", flush=True)
    report.opened = len(hostiles)
    report.closed_within = sum(1 for h in hostiles if h.closed_after is not None
                               and h.closed_after <= plan.close_bound_s)
    report.seen_within = sum(1 for h in hostiles if h.seen_after is not None
                             and h.seen_after <= plan.close_bound_s)
    for kind in ("pipeline", "stream"):
        report.close_times[kind] = sorted(round(h.closed_after, 2) for h in hostiles
                                          if h.kind == kind and h.closed_after is not None)
    await asyncio.sleep(plan.settle_s)
    report.rss_after = rss_mb(pid)


STATE_NAMES = {1: "ESTABLISHED", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2", 6: "TIME-WAIT",
               7: "CLOSE", 8: "CLOSE-WAIT", 9: "LAST-ACK", 11: "CLOSING"}


def kernel_queues(router_port: int, hostiles: list[Hostile]) -> tuple[int, int, dict[str, int]]:
    """Bytes in the kernel send queues of the router's side of the hostile connections, how
    many such sockets still exist, and their states (memory outside the router's RSS)."""
    ports = {h.port for h in hostiles}
    mine = [v for k, v in router_sockets(router_port).items() if k in ports]
    states = Counter(STATE_NAMES.get(state, str(state)) for state, _ in mine)
    return sum(queued for _, queued in mine), len(mine), dict(states)


def _tail(stream: IO[bytes] | None, lines: collections.deque[str]) -> None:
    """Keep reading a child's stderr (an unread pipe would block it once full)."""
    if stream is None:
        return
    for raw in iter(stream.readline, b""):
        lines.append(raw.decode(errors="replace").rstrip())


def drained(proc: Proc) -> collections.deque[str]:
    lines: collections.deque[str] = collections.deque(maxlen=20)
    threading.Thread(target=_tail, args=(proc.proc.stderr, lines), daemon=True).start()
    return lines


def write_config(folder: Path, port: int, normal: int, big: int, plan: Plan) -> Path:
    """router_full's config (one upstream for the 95/5 split) plus a raw ``/big`` route."""
    path = router_config(folder, port, [normal, normal, normal])
    doc = yaml.safe_load(path.read_text())
    doc["limits"] = {"max_concurrency": plan.max_concurrency,
                     "client_timeout_s": plan.client_timeout_s}
    doc["routes"].append({
        "name": "big", "match": {"path_prefix": "/big"}, "protocol": "raw",
        "validation": "off", "versions": {"v1": {"url": f"http://127.0.0.1:{big}/big"}},
        "split": {"v1": 100}, "timeout_s": 60})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def router_tree(commit: str | None, tmp: Path) -> tuple[Path, str]:
    """Where to run the router from, and a description of that code."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    if commit is None:
        dirty = " + uncommitted changes in router/" if git("status", "--porcelain",
                                                            "router") else ""
        return ROOT, f"working tree at {git('rev-parse', '--short', 'HEAD')}{dirty}"
    tree = tmp / "tree"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", commit, "router"], cwd=ROOT,
                             capture_output=True, check=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=60)
    return tree, f"commit {git('rev-parse', '--short', commit)} (git archive)"


def run(plan: Plan, commit: str | None) -> Report:
    tmp = Path(tempfile.mkdtemp(prefix="model-router-backpressure-"))
    procs: list[Proc] = []
    py = sys.executable
    try:
        cwd, code = router_tree(commit, tmp)
        normal_port, big_port, port = free_port(), free_port(), free_port()
        procs.append(Proc(pinned(1, [py, "-m", "loadtest.upstream", str(normal_port)]),
                          normal_port))
        nice = ["nice", "-n", "10"] if shutil.which("nice") else []
        procs.append(Proc(pinned(1, [*nice, py, "-m", "loadtest.upstream", str(big_port),
                                     "--big"]), big_port))
        config = write_config(tmp / "router", port, normal_port, big_port, plan)
        router = Proc(pinned(0, [py, "-m", "router.cli", "--log-level", "WARNING", "serve",
                                 "-c", str(config)]), port, cwd=cwd)
        procs.append(router)
        stderr = [drained(p) for p in procs]
        print(f"router pid {router.pid} ({code}), client_timeout_s {plan.client_timeout_s:g},"
              f" max_concurrency {plan.max_concurrency}", flush=True)
        report = Report(plan, code)
        asyncio.run(measure(plan, port, router.pid, report))
        if router.proc.poll() is not None:
            print(f"the router exited ({router.proc.returncode}): " + "\n".join(stderr[-1]))
        return report
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def show(report: Report) -> None:
    plan, base, hostile = report.plan, report.baseline, report.hostile
    assert base is not None and hostile is not None
    growth = report.growth
    print()
    print(f"router code: {report.router_code}")
    per_second = {int(t): m for t, m in reversed(report.rss_samples)}  # first of each second
    series = ", ".join(f"{t}s {m:.0f}" for t, m in sorted(per_second.items()))
    print(f"router RSS over the hostile phase (MiB, each second): {series}")
    print(f"router RSS: before {report.rss_before:.1f} MiB, peak {report.rss_peak:.1f} MiB "
          f"(+{growth:.1f}), after {report.rss_after:.1f} MiB ({plan.settle_s:g} s after the "
          f"hostiles closed)")
    print(f"RSS growth per hostile connection: {report.growth_per_connection:.2f} MiB "
          f"({report.opened} connections: {plan.pipeliners} pipelining {plan.depth} x 1 MiB, "
          f"{plan.streamers} streaming {plan.stream_mb} MB); target ~1 MiB each, checked as "
          f"growth <= {report.opened} x {PER_CONNECTION_MIB:g} + {FIXED_MIB:g} = "
          f"{report.growth_bound:g} MiB")
    print(f"normal p99: {base.p(.99):.2f} ms alone, {hostile.p(.99):.2f} ms with hostiles: "
          f"{report.p99_ratio:.2f}x (close to 1: <= {P99_RATIO_MAX:g}x); p50 "
          f"{base.p(.5):.2f} -> {hostile.p(.5):.2f} ms")
    print(f"normal 503s: {base.rejected} alone, {hostile.rejected} with hostiles; other "
          f"errors: {base.errors - base.rejected} alone, {hostile.errors - hostile.rejected} "
          f"with hostiles")
    if base.errors:
        print(f"note: the baseline itself had {base.errors} errors: the limits or the machine, "
              f"not the hostiles; raise --max-concurrency or lower --rate")
    times = "; ".join(f"{k}: {v or 'none'}" for k, v in report.close_times.items())
    verdict = "yes" if report.closed_within == report.opened else "NO"
    print(f"non-reading connections closed by the router within client_timeout_s "
          f"({plan.client_timeout_s:g} s, checked as <= {plan.close_bound_s:.2f} s after the "
          f"last request byte: the sweep may be a quarter late): {verdict}, "
          f"{report.closed_within}/{report.opened} (seconds: {times})")
    queued, sockets, states = report.kernel_queued
    print(f"  the close reached the client (FIN or RST) within that time: "
          f"{report.seen_within}/{report.opened}; at the end of the phase the router's side "
          f"of the hostile connections: {sockets} sockets {states}, "
          f"{queued / MIB:.1f} MiB in kernel send queues (not in RSS)")
    failures = report.failures()
    print(f"verdict: {'MET' if not failures else 'NOT MET'} - target: {TARGET}"
          + ("" if not failures else "; failed: " + "; ".join(failures)))


def save(report: Report) -> Path:
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    path = out / f"backpressure-{time.strftime('%Y%m%dT%H%M%S')}.json"
    doc: dict[str, Any] = {
        "plan": asdict(report.plan), "router_code": report.router_code,
        "rss_mib": {"before": report.rss_before, "peak": report.rss_peak,
                    "after": report.rss_after, "samples": report.rss_samples},
        "growth_per_connection_mib": report.growth_per_connection,
        "closed_within_timeout": [report.closed_within, report.opened],
        "close_seen_by_client_within_timeout": [report.seen_within, report.opened],
        "kernel_send_queues": {"bytes": report.kernel_queued[0],
                               "sockets": report.kernel_queued[1],
                               "states": report.kernel_queued[2]},
        "close_times_s": report.close_times, "failures": report.failures()}
    for name, phase in (("baseline", report.baseline), ("hostile", report.hostile)):
        assert phase is not None
        doc[name] = {"p50_ms": phase.p(.5), "p99_ms": phase.p(.99),
                     "statuses": phase.statuses, "sent": phase.sent}
    path.write_text(json.dumps(doc, indent=2))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.backpressure")
    parser.add_argument("--quick", action="store_true", help="~20 s: shorter, fewer hostiles")
    parser.add_argument("--rate", type=float, default=500, help="normal requests per second")
    parser.add_argument("--pipeliners", type=int, help="N (default 16; --quick 8)")
    parser.add_argument("--depth", type=int, help="K GETs per pipeliner (default 32; quick 16)")
    parser.add_argument("--streamers", type=int, help="M (default 4; --quick 2)")
    parser.add_argument("--stream-mb", type=int, default=100)
    parser.add_argument("--client-timeout", type=float, default=2.0)
    parser.add_argument("--max-concurrency", type=int,
                        help="router limit (default N + M + 32: room for every hostile "
                             "connection and the normal clients)")
    parser.add_argument("--commit", help="run the router from `git archive COMMIT router` "
                                         "instead of the working tree")
    args = parser.parse_args()
    quick = args.quick
    n = args.pipeliners if args.pipeliners is not None else (8 if quick else 16)
    m = args.streamers if args.streamers is not None else (2 if quick else 4)
    phase = 5 if quick else 15  # both phases alike, so their p99s meet the same noise
    plan = Plan(rate=args.rate, baseline_s=phase, hostile_s=phase,
                settle_s=2 if quick else 3, pipeliners=n,
                depth=args.depth or (16 if quick else 32), streamers=m,
                stream_mb=args.stream_mb, client_timeout_s=args.client_timeout,
                max_concurrency=args.max_concurrency or n + m + 32)
    if plan.hostile_s <= plan.close_bound_s:
        parser.error("the hostile phase must outlast client_timeout_s")
    if TWO_CPUS:  # this process times the normal clients: keep it off the router's CPU
        os.sched_setaffinity(0, {1})
    report = run(plan, args.commit)
    show(report)
    print(f"results: {save(report)}")
    return 1 if report.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
