"""Time `audit` lookups: over a local JSONL log, or over a shipped store of 10 million records.

    python loadtest/audit_bench.py [--records N] [--dir D]          # local JSONL (1,000,000)
    python loadtest/audit_bench.py --store [--records N] [--replicas R] [--segments-per-hour S]
                                   [--cache DIR] [--fresh] [--repeat K]

Local (the default): writes synthetic records in the log's own format into closed files of
100,000 records, then times a request-id lookup straight over the JSONL (no Parquet twins),
the one-time compaction to Parquet, and request-id lookups once the twins exist.

``--store`` (default 10,000,000 records): generates, with pyarrow in vectorized chunks, a
store in the shipped layout (``router.logstore``: ``date=YYYY-MM-DD/hour=HH/<replica>-<segment
start>-<pid>-<n>.parquet``, zstd, ``logstore.COLUMNS`` in order) for R replicas (default 4)
over the 24 hours of one day, S objects per replica and hour (default 60: the router closes a
segment every ``every_s`` = 60 s), with records shaped like the router's (V2 inputs and
outputs as JSON text, 95/5 split, shadows, feedback, errors). The store is cached under
``--cache`` (default /tmp/model-router-audit-bench/<records>-<R>x<S>; ``manifest.json`` is
written last and names the request ids to look up), so a second run only queries; ``--fresh``
regenerates it. Then times, with DuckDB (each query on a new connection, ``--repeat`` times):

- a request-id lookup within a one-hour window, pruned by the hive columns
  (``WHERE date = .. AND hour = .. AND request_id = ..``), and the same over the hour's
  directory alone (``read_parquet('<store>/date=D/hour=H/*.parquet')``: no glob of the store);
- the same lookup without a window (every object);
- ``report``'s per-version aggregation (count, 5xx, p50/p95/p99, latest revision) over the day;

first as plain ``read_parquet('<store>/date=*/hour=*/*.parquet', hive_partitioning=true)``,
then through ``router.analysis.audit.LogQuery(store=..., since=.., until=..)`` (the readers'
own shape: the window's partitions listed, then read) when that LogQuery takes a store.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from router import logstore
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


# -- a shipped store of millions of records (--store) -----------------------------------------

DAY = "2026-11-26"
PID = 4242                     # the writers' pid in object names (one per replica)
HEX = None                     # 256 two-character hex strings, built on first use


def hex_strings(rng: Any, n: int, nbytes: int = 16) -> Any:
    """``n`` random lower-case hex strings of ``2 * nbytes`` characters, as a pyarrow array."""
    import numpy as np
    import pyarrow as pa

    global HEX
    if HEX is None:
        HEX = np.array([f"{i:02x}".encode() for i in range(256)], dtype="S2")
    raw = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    return pa.array(np.ascontiguousarray(HEX[raw]).view(f"S{2 * nbytes}").ravel()).cast(
        pa.string())


def pick(rng: Any, values: list[Any], weights: list[float], n: int) -> Any:
    import numpy as np
    import pyarrow as pa
    return pa.array(np.asarray(values, dtype=object)[rng.choice(len(values), n, p=weights)])


def store_chunk(rng: Any, n: int, hour_start_ms: int) -> Any:
    """``n`` records of one replica over one hour (sorted by ts) as a table of
    ``logstore.COLUMNS``: primaries (95/5 split, some 422/502/504), shadows of v3 copying a
    primary's request id, feedback naming a primary's request id."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    null = pa.scalar(None, pa.string())
    ms = np.sort(rng.integers(0, 3_600_000, n)) + hour_start_ms
    ts = pc.binary_join_element_wise(
        pc.strftime(pa.array(ms, pa.timestamp("ms")), format="%Y-%m-%dT%H:%M:%S"), "Z", "")
    role_codes = rng.choice(3, n, p=[0.9, 0.07, 0.03])          # primary, shadow, feedback
    role = pa.array(np.array(["primary", "shadow", "feedback"], dtype=object)[role_codes])
    primary = pa.array(role_codes == 0)
    shadow = pa.array(role_codes == 1)
    feedback = pa.array(role_codes == 2)
    request_id = hex_strings(rng, n)
    # a shadow or feedback record names an earlier primary's request id (the one before it)
    prim_idx = np.flatnonzero(role_codes == 0)
    if len(prim_idx):
        before = np.clip(np.searchsorted(prim_idx, np.arange(n)) - 1, 0, len(prim_idx) - 1)
        request_id = pc.if_else(primary, request_id, request_id.take(pa.array(prim_idx[before])))
    version = pc.if_else(shadow, "v3", pick(rng, ["v1", "v2"], [0.95, 0.05], n))
    status = pa.array(rng.choice([200, 422, 502, 504], n, p=[0.99, 0.005, 0.003, 0.002])
                      .astype(np.int32))
    status = pc.if_else(feedback, pa.scalar(None, pa.int32()), status)
    ok = pc.equal(status, 200)
    latency = pa.array(np.round(rng.lognormal(1.0, 0.5, n), 3))
    amount = pc.cast(pa.array(np.round(rng.uniform(0, 1000, n), 2)), pa.string())
    avg = pc.cast(pa.array(np.round(rng.uniform(0, 300, n), 2)), pa.string())
    country = pick(rng, ["US", "DE", "FR"], [0.6, 0.3, 0.1], n)
    new_user = pick(rng, ["false", "true"], [0.8, 0.2], n)
    inputs = pc.binary_join_element_wise(
        '{"inputs":[{"name":"amount","datatype":"FP64","shape":[1],"data":[', amount,
        ']},{"name":"avg_purchase_last_7_days","datatype":"FP64","shape":[1],"data":[', avg,
        ']},{"name":"country","datatype":"BYTES","shape":[1],"data":["', country,
        '"]},{"name":"is_new_user","datatype":"BOOL","shape":[1],"data":[', new_user,
        ']}],"id":"', request_id, '"}', "")
    model_version = pc.if_else(pc.equal(version, "v2"), "2.0.0", "1.0.0")
    score = pc.cast(pa.array(np.round(rng.random(n), 6)), pa.string())
    outputs = pc.binary_join_element_wise(
        '{"model_name":"fraud","model_version":"', model_version, '","id":"', request_id,
        '","outputs":[{"name":"score","datatype":"FP64","shape":[1,1],"data":[', score,
        ']}]}', "")
    upstream = pc.if_else(pc.equal(version, "v1"), "http://10.0.0.11:8080",
                          pc.if_else(pc.equal(version, "v2"), "http://10.0.0.12:8080",
                                     "http://10.0.0.13:8080"))
    agreement = pick(rng, ["1.0", "0.0"], [0.97, 0.03], n)
    compare = pc.binary_join_element_wise(
        '{"against":"v1","match":', pc.if_else(pc.equal(agreement, "1.0"), "true", "false"),
        ',"max_abs_diff":0.01,"agreement":', agreement, "}", "")
    violations = pc.if_else(pc.equal(status, 422),
                            '[{"field":"amount","kind":"min","detail":"below 0"}]', "[]")
    error = pc.if_else(pc.equal(status, 502), "upstream unavailable: connect",
                       pc.if_else(pc.equal(status, 504), "upstream timeout", null))
    users = hex_strings(rng, 10_000)
    sticky_key = users.take(pa.array(rng.integers(0, 10_000, n)))
    trace = hex_strings(rng, n)
    columns: dict[str, Any] = {
        "ts": ts, "request_id": request_id, "route": pa.array(["fraud"] * n),
        "model": pa.array(["fraud"] * n),
        "version": pc.if_else(feedback, null, version), "role": role,
        "reason": pc.if_else(shadow, "shadow", pc.if_else(feedback, null,
                             pick(rng, ["sticky", "split"], [0.8, 0.2], n))),
        "upstream": pc.if_else(feedback, null, upstream), "status": status,
        "latency_ms": pc.if_else(feedback, pa.scalar(None, pa.float64()), latency),
        "config_revision": pick(rng, ["a1b2c3d4e5f6", "0f9e8d7c6b5a", "1234567890ab"],
                                [0.6, 0.3, 0.1], n),
        "schema": pa.array(["fraud-features@1"] * n),
        "sticky_key": pc.if_else(feedback, null, sticky_key),
        "input": pc.if_else(feedback, null, inputs),
        "output": pc.if_else(pc.or_(feedback, pc.invert(ok)), null, outputs),
        "violations": pc.if_else(feedback, null, violations),
        "served_model_version": pc.if_else(pc.or_(feedback, pc.invert(ok)), null,
                                           model_version),
        "fallback_from": pa.nulls(n, pa.string()),
        "compare": pc.if_else(shadow, compare, null),
        "error": error,
        "trace_id": pc.if_else(pa.array(rng.random(n) < 0.5), trace, null),
        "outcome": pc.if_else(feedback, pick(rng, ['{"converted":true}', '{"converted":false}'],
                                             [0.12, 0.88], n), null),
    }
    types = {"VARCHAR": pa.string(), "INTEGER": pa.int32(), "DOUBLE": pa.float64()}
    return pa.table({c: columns[c].cast(types[t]) for c, t in logstore.COLUMNS.items()})


def generate_store(root: Path, records: int, replicas: int, per_hour: int, seed: int = 1,
                   ) -> dict[str, Any]:
    """Write the store; returns its manifest (written last, as ``manifest.json``)."""
    import numpy as np
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    day = datetime.fromisoformat(DAY).replace(tzinfo=UTC)
    chunk = -(-records // (replicas * 24))
    written, objects, wanted = 0, 0, []
    for hour in range(24):
        start = day + timedelta(hours=hour)
        date, hh = start.strftime("%Y-%m-%d"), start.strftime("%H")
        for r in range(replicas):
            n = min(chunk, records - written)
            if n <= 0:
                break
            table = store_chunk(rng, n, int(start.timestamp() * 1000))
            roles = table.column("role").to_numpy(zero_copy_only=False)
            primaries = np.flatnonzero(roles == "primary")
            middle = int(primaries[len(primaries) // 2])
            wanted.append({"date": date, "hour": hh, "replica": f"router-{r}",
                           "request_id": table.column("request_id")[middle].as_py()})
            folder = root / f"date={date}" / f"hour={hh}"
            folder.mkdir(parents=True, exist_ok=True)
            bounds = np.linspace(0, n, per_hour + 1).astype(int)
            for seq, (a, b) in enumerate(itertools.pairwise(bounds)):
                if b <= a:
                    continue
                part = table.slice(a, b - a)
                first = part.column("ts")[0].as_py()
                segment = (f"{first[:4]}{first[5:7]}{first[8:10]}T{first[11:13]}"
                           f"{first[14:16]}{first[17:19]}")
                name = logstore.object_name(f"router-{r}", segment, f"{PID + r}-{seq}")
                pq.write_table(part, folder / name, compression="zstd")
                objects += 1
            written += n
    manifest = {"records": written, "replicas": replicas, "segments_per_hour": per_hour,
                "objects": objects, "day": DAY, "wanted": wanted,
                "bytes": sum(p.stat().st_size for p in root.rglob("*.parquet"))}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def timed(fn: Any, repeat: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return times, out


def show(label: str, times: list[float], target: float | None, note: str = "") -> None:
    verdict = "" if target is None else \
        (f"  (target < {target} s: {'met' if max(times) < target else 'MISSED'})")
    print(f"  {label:<46} median {statistics.median(times):.3f} s, max {max(times):.3f} s "
          f"over {len(times)}{verdict}{note}", flush=True)


REPORT_SQL = """
    SELECT route, version, count(*) AS requests,
           count(*) FILTER (WHERE status >= 500) AS errors,
           quantile_cont(latency_ms, 0.5) AS p50, quantile_cont(latency_ms, 0.95) AS p95,
           quantile_cont(latency_ms, 0.99) AS p99, max(ts) AS last_ts,
           arg_max(config_revision, ts) AS revision
    FROM {source} WHERE role = 'primary' AND version IS NOT NULL {extra}
    GROUP BY route, version ORDER BY route, version"""


def store_bench(args: argparse.Namespace) -> None:
    import duckdb

    root = Path(args.cache or f"/tmp/model-router-audit-bench/"
                f"{args.records}-{args.replicas}x{args.segments_per_hour}")
    manifest_path = root / "manifest.json"
    if args.fresh or not manifest_path.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        started = time.perf_counter()
        manifest = generate_store(root, args.records, args.replicas, args.segments_per_hour)
        took = time.perf_counter() - started
        print(f"generated {manifest['records']:,} records in {manifest['objects']:,} objects, "
              f"{manifest['bytes'] / 1e9:.2f} GB, in {took:.1f} s "
              f"({manifest['records'] / took:,.0f} records/s) into {root}", flush=True)
    else:
        manifest = json.loads(manifest_path.read_text())
        print(f"cached store: {manifest['records']:,} records in {manifest['objects']:,} "
              f"objects, {manifest['bytes'] / 1e9:.2f} GB in {root} (--fresh regenerates)",
              flush=True)
    glob = f"{root}/date=*/hour=*/*.parquet"
    source = f"read_parquet('{glob}', hive_partitioning=true)"
    wanted = manifest["wanted"][:: max(1, len(manifest["wanted"]) // args.lookups)]
    wanted = wanted[: args.lookups]

    def plain(sql: str) -> Any:
        db = duckdb.connect()
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    print(f"plain DuckDB {duckdb.__version__}: {source}", flush=True)
    within: list[float] = []
    anywhere: list[float] = []
    for w in wanted:
        rid = w["request_id"]
        t, rows = timed(lambda w=w, rid=rid: plain(
            f"SELECT * FROM {source} WHERE date = DATE '{w['date']}' AND hour = {int(w['hour'])}"
            f" AND request_id = '{rid}'"), args.repeat)
        assert any(r[logstore_index('role')] == "primary" for r in rows), (w, rows)
        within += t
        t, rows = timed(lambda rid=rid: plain(
            f"SELECT * FROM {source} WHERE request_id = '{rid}'"), args.repeat)
        assert any(r[logstore_index('role')] == "primary" for r in rows), (w, rows)
        anywhere += t
    show(f"lookup within one hour ({len(wanted)} ids)", within, 0.5)
    show(f"lookup without a window ({len(wanted)} ids)", anywhere, 5.0)
    direct: list[float] = []
    for w in wanted:  # the hour's directory read directly: no glob over the whole store
        one_hour = (f"read_parquet('{root}/date={w['date']}/hour={w['hour']}/*.parquet', "
                    "hive_partitioning=true)")
        t, rows = timed(lambda one_hour=one_hour, rid=w["request_id"]: plain(
            f"SELECT * FROM {one_hour} WHERE request_id = '{rid}'"), args.repeat)
        assert any(r[logstore_index('role')] == "primary" for r in rows), (w, rows)
        direct += t
    show(f"lookup in the hour's directory ({len(wanted)} ids)", direct, 0.5)
    t, rows = timed(lambda: plain(REPORT_SQL.format(
        source=source, extra=f"AND date = DATE '{manifest['day']}'")), args.repeat)
    show("report per version over the day", t, None,
         f"; {sum(r[2] for r in rows):,} primaries in {len(rows)} versions")

    if "store" not in inspect.signature(LogQuery).parameters:
        print("router.analysis.audit.LogQuery reads no store here: the readers' shape skipped")
        return
    print("router.analysis.audit.LogQuery(store=file://..., since, until) (the readers' shape):",
          flush=True)
    empty = Path(tempfile.mkdtemp(prefix="audit-bench-logs-"))
    url = f"file://{root}"
    try:
        within, anywhere = [], []
        for w in wanted:
            since = datetime.fromisoformat(f"{w['date']}T{w['hour']}:00:00+00:00")
            t, rows = timed(lambda since=since, rid=w["request_id"]: LogQuery(
                empty, store=url, since=since, until=since + timedelta(hours=1),
            ).by_request(rid), args.repeat)
            assert rows and rows[0]["role"] == "primary", (w, rows)
            within += t
        show(f"lookup within one hour ({len(wanted)} ids)", within, 0.5)
        for w in wanted[: args.unwindowed]:
            t, rows = timed(lambda rid=w["request_id"]: LogQuery(empty, store=url)
                            .by_request(rid), 1)
            assert rows and rows[0]["role"] == "primary", (w, rows)
            anywhere += t
        show(f"lookup without a window ({len(anywhere)} ids, once each)", anywhere, 5.0)
        since = datetime.fromisoformat(f"{manifest['day']}T00:00:00+00:00")
        t, rows = timed(lambda: LogQuery(empty, store=url, since=since,
                                         until=since + timedelta(days=1)).rows(
            REPORT_SQL.format(source="records", extra="")), 1)
        show("report per version over the day (once)", t, None,
             f"; {sum(r['requests'] for r in rows):,} primaries in {len(rows)} versions")
    finally:
        shutil.rmtree(empty, ignore_errors=True)


def logstore_index(column: str) -> int:
    """A column's position in a ``SELECT *`` row of the store (hive columns come last)."""
    return list(logstore.COLUMNS).index(column)


# -- the local JSONL log (default) --------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int,
                        help="records to generate (default 1,000,000; 10,000,000 with --store)")
    parser.add_argument("--dir", help="local mode: where to write the JSONL log")
    parser.add_argument("--store", action="store_true",
                        help="a shipped store in the logstore layout instead of local JSONL")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--segments-per-hour", type=int, default=60,
                        help="objects per replica and hour (every_s 60: 60)")
    parser.add_argument("--cache", help="store directory (default under /tmp, kept)")
    parser.add_argument("--fresh", action="store_true", help="regenerate the cached store")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each query")
    parser.add_argument("--lookups", type=int, default=5, help="request ids looked up")
    parser.add_argument("--unwindowed", type=int, default=2,
                        help="LogQuery lookups without a window (each lists every object)")
    args = parser.parse_args()
    if args.store:
        args.records = args.records or 10_000_000
        store_bench(args)
        return
    args.records = args.records or 1_000_000
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
