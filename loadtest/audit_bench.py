"""Time `audit` lookups over a large prediction log (default 1,000,000 records, about 1 GB).

    python loadtest/audit_bench.py [--records N] [--dir D]

Writes synthetic records in the log's own format into closed files of 100,000 records, then
times: a request-id lookup straight over the JSONL (no Parquet twins), the one-time
compaction to Parquet, and request-id lookups once the twins exist.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from router.analysis.audit import LogQuery


def make_record(i: int, rng: random.Random) -> bytes:
    inputs = [{"name": f"f{j}", "datatype": "FP64", "shape": [1], "data": [rng.random()]}
              for j in range(12)]
    return orjson.dumps({
        "ts": f"2026-11-{1 + i // 100_000:02d}T12:00:00.{i % 1000:03d}Z",
        "request_id": uuid.UUID(int=rng.getrandbits(128)).hex, "route": "fraud",
        "model": "fraud", "version": "v1" if rng.random() < 0.95 else "v2", "role": "primary",
        "reason": "sticky", "upstream": "http://127.0.0.1:9001", "status": 200,
        "latency_ms": round(rng.uniform(1, 9), 3), "config_revision": "a1b2c3d4e5f6",
        "schema": "fraud-features@1", "sticky_key": "%032x" % rng.getrandbits(128),
        "input": {"inputs": inputs},
        "output": {"model_name": "fraud", "model_version": "1.0.0",
                   "outputs": [{"name": "score", "datatype": "FP64", "shape": [1, 1],
                                "data": [rng.random()]}]},
        "violations": [], "served_model_version": "1.0.0", "fallback_from": None,
        "compare": None, "error": None, "trace_id": None}) + b"\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--dir")
    args = parser.parse_args()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="audit-bench-"))
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    wanted = []
    per_file = 100_000
    old = time.time() - 3600
    for n in range(0, args.records, per_file):
        path = logs / f"predictions-202611{1 + n // per_file:02d}T000000-1.jsonl"
        with open(path, "wb") as f:
            for i in range(n, min(n + per_file, args.records)):
                line = make_record(i, rng)
                if i % 250_000 == 123:
                    wanted.append(orjson.loads(line)["request_id"])
                f.write(line)
        os.utime(path, (old, old))
    size = sum(p.stat().st_size for p in logs.glob("*.jsonl"))
    print(f"{args.records} records, {size / 1e9:.2f} GB in {logs}")

    started = time.perf_counter()
    plain = LogQuery(logs, compact=False)
    hit = plain.by_request(wanted[-1])
    print(f"lookup over plain JSONL: {time.perf_counter() - started:.2f} s ({len(hit)} record)")

    started = time.perf_counter()
    LogQuery(logs)
    print(f"one-time compaction to Parquet: {time.perf_counter() - started:.2f} s")
    for rid in wanted:
        started = time.perf_counter()
        hit = LogQuery(logs).by_request(rid)
        print(f"lookup with Parquet twins (new process state each time): "
              f"{time.perf_counter() - started:.3f} s ({len(hit)} record)")
    if not args.dir:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
