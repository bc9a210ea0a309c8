"""User-space instructions per request under callgrind: a noise-free A/B for the hot path.

    python -m loadtest.instructions [--seconds 20] [naive router_full router_nolog ...]

Wall-clock CPU per request on a shared VM moves by 30% between runs of the same build;
instruction counts move by about 1%. Each proxy runs under ``valgrind --tool=callgrind``
(instrumentation off during startup and warm-up), pinned to CPU 0; the upstreams and wrk run
on CPU 1; instrumentation is switched on for ``--seconds`` of wrk load (20 connections) and
the collected instructions are divided by the requests wrk counted. Kernel time (syscalls,
context switches) and cache misses are not counted, so this ranks changes to the Python
side of the hot path; throughput is still measured by ``python -m loadtest``. Needs valgrind
(Debian package) and wrk; exits 2 with a message when either is missing. router_fleet
(router_full plus a ``fleet:`` block) also needs redis-server, started on a free 127.0.0.1 port
and stopped by PID; its flushes of feedback attributions run on the router's event loop, so
they are in the count.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .__main__ import (
    BODY,
    PATH,
    ROOT,
    WRK_LUA,
    Proc,
    free_port,
    pinned,
    router_config,
    wait_port,
)

SCENARIOS = ("naive", "router_full", "router_nolog", "router_fleet")


def proxy_argv(name: str, folder: Path, port: int, ups: list[int],
               store: str | None = None) -> list[str]:
    if name == "naive":
        return ["-m", "loadtest.naive_proxy", str(port), f"http://127.0.0.1:{ups[0]}",
                f"http://127.0.0.1:{ups[1]}"]
    fleet = (f"bench-{port}", store) if name == "router_fleet" and store else None
    config = router_config(folder, port, ups, log=name != "router_nolog", fleet=fleet)
    return ["-m", "router.cli", "--log-level", "WARNING", "serve", "-c", str(config)]


def wrk(port: int, seconds: int, script: Path) -> int:
    out = subprocess.run(pinned(1, ["wrk", "-t1", "-c20", f"-d{seconds}s", "-s", str(script),
                                    f"http://127.0.0.1:{port}{PATH}"]),
                         capture_output=True, text=True, check=True).stdout
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise RuntimeError(f"errors under load:\n{out}")
    return int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]


def measure(name: str, tmp: Path, ups: list[int], script: Path, seconds: int,
            store: str | None = None) -> float:
    port = free_port()
    folder = tmp / f"{name}-{port}"
    folder.mkdir(parents=True)
    out = folder / "callgrind.out"
    argv = pinned(0, ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                      f"--callgrind-out-file={out}", sys.executable,
                      *proxy_argv(name, folder, port, ups, store)])
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=300)  # imports run ~50x slower under valgrind
        wrk(port, 5, script)          # warm-up, not counted
        control = ["callgrind_control"]
        subprocess.run([*control, "-i", "on", str(proc.pid)], check=True,
                       capture_output=True)
        requests = wrk(port, seconds, script)
        subprocess.run([*control, "-i", "off", str(proc.pid)], check=True,
                       capture_output=True)
        subprocess.run([*control, "-d", str(proc.pid)], check=True, capture_output=True)
        time.sleep(1)
        total = 0
        for part in folder.glob("callgrind.out*"):
            for line in part.read_text().splitlines():
                if line.startswith("totals:"):
                    total += int(line.split()[1])
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if not requests or not total:
        raise RuntimeError(f"{name}: nothing counted ({requests} requests, {total} Ir)")
    return total / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args()
    # router_fleet by default only where redis-server is installed; named, it needs it
    args.scenarios = args.scenarios or [n for n in SCENARIOS
                                        if n != "router_fleet" or shutil.which("redis-server")]
    if unknown := set(args.scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    tools = ["valgrind", "callgrind_control", "wrk"]
    if "router_fleet" in args.scenarios:
        tools.append("redis-server")
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        print(f"loadtest.instructions needs {', '.join(missing)} "
              "(Debian packages valgrind, wrk, redis-server)")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="model-router-instr-"))
    script = tmp / "post.lua"
    script.write_text(WRK_LUA.format(body=BODY.decode()))
    ups: list[Proc] = []
    try:
        for _ in range(3):
            port = free_port()
            ups.append(Proc(pinned(1, [sys.executable, "-m", "loadtest.upstream", str(port)]),
                            port))
        store = None
        if "router_fleet" in args.scenarios:
            port = free_port()
            redis = Proc(pinned(1, ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no"]), port)
            ups.append(redis)
            store = f"redis://127.0.0.1:{port}/0"
        results = {}
        for name in args.scenarios:
            results[name] = measure(name, tmp, [u.port for u in ups[:3]], script, args.seconds,
                                    store)
            print(f"  {name:<14} {results[name] / 1000:8.1f} k instructions per request",
                  flush=True)
        if "naive" in results:
            for name, value in results.items():
                if name != "naive":
                    print(f"  naive / {name}: {results['naive'] / value:.2f}x")
        if "router_fleet" in results and "router_full" in results:
            print(f"  router_fleet / router_full: "
                  f"{results['router_fleet'] / results['router_full']:.3f}x instructions")
    finally:
        for u in ups:
            u.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
