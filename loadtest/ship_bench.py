"""Does log shipping keep up? Records/s the shipper converts and uploads on one core.

    python -m loadtest.ship_bench [--records-per-segment N] [--segments K] [--store DIR]

Real lines first: a router with the ``python -m loadtest`` config (payloads full, validation,
sticky, drift) serves a few seconds of the harness's V2 POST, and the lines it logged are the
templates. Then K closed segments of N records each (default 3 x 240,000: about a 60 s
segment, ``every_s`` 60, at 4,000 req/s, the router's full speed on one core) are written
from those templates, each line with its own request id, its own input values and score, and a ts spread over two
hours (so a
segment becomes two objects, as one crossing an hour does), and one ``router.observers.
shipper.Shipper`` ships them to a ``file://`` store with this process pinned to one CPU
(its DuckDB runs one thread, as in the shipper process). Prints records/s, CPU seconds,
bytes, and the rows counted back in the store with pyarrow; compare records/s with
router_full's req/s from ``python -m loadtest`` (every request writes one record).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson

from .__main__ import TWO_CPUS, Proc, _closed_loop, free_port, pinned, router_config


def real_lines(folder: Path, seconds: float = 3.0) -> list[bytes]:
    """Lines a real router logged for the harness's requests."""
    ups = [Proc(pinned(1, [sys.executable, "-m", "loadtest.upstream", str(p)]), p)
           for p in (free_port(), free_port(), free_port())]
    port = free_port()
    config = router_config(folder / "router", port, [u.port for u in ups])
    router = Proc([sys.executable, "-m", "router.cli", "--log-level", "WARNING", "serve",
                   "-c", str(config)], port)
    try:
        asyncio.run(_closed_loop(port, seconds, 16))
    finally:
        router.stop()
        for u in ups:
            u.stop()
    lines: list[bytes] = []
    for path in sorted((folder / "router" / "logs").glob("predictions-*.jsonl")):
        lines += [line for line in path.read_bytes().splitlines() if line]
    if not lines:
        raise RuntimeError("the router logged nothing")
    return lines


def write_segments(log_dir: Path, templates: list[bytes], per_segment: int, segments: int,
                   ) -> int:
    """Closed segments of ``per_segment`` lines made from real ones; returns their bytes."""
    parsed = [orjson.loads(t) for t in templates[:1000]]
    log_dir.mkdir(parents=True, exist_ok=True)
    base = time.mktime(time.strptime("2026-11-26T13:30:00", "%Y-%m-%dT%H:%M:%S"))
    size = 0
    n = 0
    rng = random.Random(1)
    for s in range(segments):
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(base + s))
        path = log_dir / f"predictions-{stamp}-{4000 + s}.jsonl"
        out = bytearray()
        for i in range(per_segment):
            record = dict(parsed[i % len(parsed)])
            record["request_id"] = f"{n:032x}"
            at = base + 7200 * i / per_segment  # 13:30 to 15:30: two hours' objects
            ms = int(at * 1000) % 1000
            record["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{ms:03d}Z"
            line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
            # payload values vary as real traffic's do (the harness sends one body)
            line = line.replace(b"[12.5]", b"[%.2f]" % rng.uniform(0, 1000), 1)
            line = line.replace(b"[30.1]", b"[%.2f]" % rng.uniform(0, 300), 1)
            out += line.replace(b"[0.12345]", b"[%.6f]" % rng.random(), 1)
            n += 1
        path.write_bytes(out)
        size += len(out)
    return size


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.ship_bench")
    parser.add_argument("--records-per-segment", type=int, default=240_000)
    parser.add_argument("--segments", type=int, default=3)
    parser.add_argument("--store", help="file:// store directory (default: a temp dir)")
    args = parser.parse_args()
    import pyarrow.parquet as pq

    from router.observers.shipper import Shipper

    tmp = Path(tempfile.mkdtemp(prefix="ship-bench-"))
    store = Path(args.store) if args.store else tmp / "store"
    try:
        templates = real_lines(tmp)
        print(f"{len(templates)} real record lines from a router under load, "
              f"{sum(map(len, templates)) / len(templates):.0f} bytes each on average")
        logs = tmp / "logs"
        size = write_segments(logs, templates, args.records_per_segment, args.segments)
        total = args.records_per_segment * args.segments
        print(f"{args.segments} segments x {args.records_per_segment:,} records, "
              f"{size / 1e6:.0f} MB of JSONL", flush=True)
        if TWO_CPUS:
            os.sched_setaffinity(0, {0})  # one core, as the shipper process gets
        shipper = Shipper(logs, f"file://{store}", {}, "bench")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        ok = shipper.ship_all()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        rows = sum(pq.read_metadata(p).num_rows
                   for p in store.glob("date=*/hour=*/*.parquet"))
        stored = sum(p.stat().st_size for p in store.glob("date=*/hour=*/*.parquet"))
        print(f"shipped {shipper.shipped_records:,} records ({shipper.shipped_files} segments,"
              f" ok={ok}, errors={shipper.errors}) in {wall:.2f} s wall, {cpu:.2f} s CPU: "
              f"{shipper.shipped_records / wall:,.0f} records/s, {size / wall / 1e6:.0f} MB/s "
              f"of JSONL; {stored / 1e6:.1f} MB of zstd Parquet "
              f"({size / max(stored, 1):.1f}x smaller)")
        print(f"rows in the store (pyarrow): {rows:,} of {total:,}"
              f"{'' if rows == total else ' - MISMATCH'}")
        return 0 if ok and rows == total else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
