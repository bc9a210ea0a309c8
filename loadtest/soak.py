"""Soak: a moderate steady load for minutes, with reloads and a flapping upstream replica.

    python -m loadtest.soak [--minutes 10] [--rate 300]

Version v1 has two replicas; one of them is killed and restarted every 10 s. The route falls
back to v2 on connect errors, and outlier detection ejects the dead replica. router.yaml is
rewritten every 3 s (alternating weights). Prints, every 30 s, the router's RSS and the
answers so far; at the end, status counts, RSS over time and prediction-log record counts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import yaml

from loadtest.__main__ import BODY, PATH, Proc, free_port, rss_mb
from router.analysis.audit import iter_records


def config(folder: Path, port: int, a: int, b: int, c: int, weight: int) -> None:
    doc = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "state_dir": "state", "prediction_log": {"dir": "logs", "rotate_mb": 16},
        "routes": [{
            "name": "fraud", "match": {"path_prefix": "/v2/models/fraud"}, "protocol": "v2",
            "versions": {"v1": {"urls": [f"http://127.0.0.1:{a}/v2/models/fraud",
                                         f"http://127.0.0.1:{b}/v2/models/fraud"]},
                         "v2": {"url": f"http://127.0.0.1:{c}/v2/models/fraud"}},
            "split": {"v1": weight, "v2": 100 - weight}, "sticky": {"header": "x-user-id"},
            "fallback": "v2", "outlier": {"consecutive_failures": 3, "ejection_s": 5},
            "timeout_s": 2,
        }],
    }
    tmp = folder / "router.yaml.tmp"
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, folder / "router.yaml")


async def soak(minutes: float, rate: float) -> int:
    import tempfile
    folder = Path(tempfile.mkdtemp(prefix="model-router-soak-"))
    ports = [free_port() for _ in range(3)]
    py = sys.executable
    ups = {p: Proc([py, "-m", "loadtest.upstream", str(p)], p) for p in ports}
    port = free_port()
    config(folder, port, *ports, 90)
    router = Proc([py, "-m", "router.cli", "--log-level", "WARNING", "serve", "-c",
                   str(folder / "router.yaml")], port, cwd=Path.cwd())
    statuses: Counter[int] = Counter()
    rss: list[tuple[int, float]] = []
    reloads = flaps = 0
    deadline = time.monotonic() + minutes * 60
    start = time.monotonic()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as s:
            async def one(i: int) -> None:
                try:
                    async with s.post(f"http://127.0.0.1:{port}{PATH}", data=BODY,
                                      headers={"x-user-id": f"user-{i % 5000}",
                                               "content-type": "application/json"}) as r:
                        await r.read()
                        statuses[r.status] += 1
                except aiohttp.ClientError:
                    statuses[0] += 1

            async def chaos() -> None:
                nonlocal reloads, flaps
                tick = 0
                while time.monotonic() < deadline:
                    await asyncio.sleep(1)
                    tick += 1
                    if tick % 3 == 0:
                        config(folder, port, *ports, 90 if reloads % 2 else 80)
                        reloads += 1
                    if tick % 10 == 0:
                        flapper = ports[1]
                        if ups[flapper].proc.poll() is None:
                            ups[flapper].stop()
                        else:
                            ups[flapper] = Proc([py, "-m", "loadtest.upstream", str(flapper)],
                                                flapper)
                        flaps += 1
                    if tick % 30 == 0:
                        rss.append((tick, rss_mb(router.pid)))
                        print(f"  t={tick:4d}s RSS {rss[-1][1]:.1f} MB answers "
                              f"{dict(statuses)}", flush=True)

            chaos_task = asyncio.ensure_future(chaos())
            tasks: set[asyncio.Task[None]] = set()
            i = 0
            while time.monotonic() < deadline:
                at = start + i / rate
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.ensure_future(one(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            await asyncio.gather(*tasks)
            await chaos_task
    finally:
        router.stop()
        for u in ups.values():
            u.stop()
    records = [r for r in iter_records(folder / "logs") if r["role"] == "primary"]
    by_status = Counter(r["status"] for r in records)
    fallbacks = sum(1 for r in records if r["fallback_from"])
    print(f"\nsoak {minutes:g} min at {rate:g} req/s: {sum(statuses.values())} requests, "
          f"answers {dict(statuses)}; {reloads} reloads, {flaps} flaps")
    print(f"prediction log: {len(records)} primary records {dict(by_status)}, "
          f"{fallbacks} served by fallback")
    print("RSS (MB) over time: " + ", ".join(f"{t}s {m:.1f}" for t, m in rss))
    answered = sum(n for code, n in statuses.items() if code)
    print(f"records vs answers: {len(records)} / {answered}")
    return 0 if statuses[0] == 0 and len(records) == answered else 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=300)
    args = parser.parse_args()
    sys.exit(asyncio.run(soak(args.minutes, args.rate)))


if __name__ == "__main__":
    main()
