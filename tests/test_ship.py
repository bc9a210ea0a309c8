"""Shipping the prediction log to a file:// store: real `serve` processes, real signals,
real files; the shipper on its own (faults) against real directories."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from helpers import (
    Served,
    echo_versions,
    free_port,
    route,
    send_numbered,
    serve_logged,
    write_config,
)

from router import logstore
from router.config import PredictionLogSettings, Ship
from router.observers.predlog import LogFiles, PredictionLog
from router.observers.shipper import Shipper


def store_records(store: Path) -> list[dict[str, Any]]:
    """Every record in the store's objects (temporary names excluded, as readers do)."""
    rows: list[dict[str, Any]] = []
    for path in sorted(store.glob("date=*/hour=*/*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def ship_config(tmp_path: Path, urls: dict[str, str], every_s: float = 1.0,
                **extra: Any) -> tuple[Path, int, int]:
    port, admin = free_port(), free_port()
    path = write_config(tmp_path / "cfg", [route(urls, split={"v1": 50, "v2": 50})],
                        listen={"host": "127.0.0.1", "port": port},
                        admin={"host": "127.0.0.1", "port": admin},
                        prediction_log={"dir": "logs", "flush_ms": 50, "ship": {
                            "to": f"file://{tmp_path / 'store'}", "every_s": every_s,
                            **extra}})
    return path, port, admin


async def stop(served: Served) -> None:
    served.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.proc.wait(), 60) == 0


def exactly_once(store: Path, ids: list[str]) -> None:
    counts = Counter(r["request_id"] for r in store_records(store) if r["role"] == "primary")
    missing = [i for i in ids if counts[i] == 0]
    twice = {i: n for i, n in counts.items() if n > 1}
    assert not missing and not twice, (missing[:5], len(missing), twice)


@pytest.mark.slow
async def test_segments_ship_by_time_and_at_sigterm(tmp_path: Path, upstreams, client) -> None:
    urls = await echo_versions(upstreams, "v1", "v2")
    path, port, admin = ship_config(tmp_path, urls, every_s=1)
    served = await serve_logged(path, port, admin, client)
    store = tmp_path / "store"
    try:
        first = await send_numbered(served, 200, "a")
        deadline = time.monotonic() + 15  # every_s 1 + a shipping round of 1 s, bounded
        while len(store_records(store)) < 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        exactly_once(store, first)  # shipped while serving, before any shutdown
        async with client.get(served.admin_url("/metrics")) as resp:
            text = await resp.text()
        assert "model_router_predlog_shipped_total 200.0" in text
        assert "model_router_predlog_ship_errors_total 0.0" in text
        second = await send_numbered(served, 50, "b")  # still in the open segment at SIGTERM
    finally:
        await stop(served)
    exactly_once(store, first + second)
    objects = sorted(store.glob("date=*/hour=*/*.parquet"))
    for obj in objects:
        date, hour = obj.parent.parent.name[5:], obj.parent.name[5:]
        assert obj.name.startswith("r1-") and len(hour) == 2 and len(date) == 10
        meta = pq.read_metadata(obj)
        assert meta.schema.names == list(logstore.COLUMNS)
        assert meta.row_group(0).column(0).compression == "ZSTD"
    logs = tmp_path / "cfg" / "logs"
    for segment in logs.glob(logstore.SEGMENT_GLOB):
        assert logstore.marker(segment).exists(), segment  # every segment confirmed
    assert (store / "revisions").is_dir() and list((store / "history").glob("r1.jsonl"))


@pytest.mark.slow
async def test_a_kill_9_leaves_segments_the_next_start_ships(tmp_path: Path, upstreams,
                                                             client) -> None:
    urls = await echo_versions(upstreams, "v1", "v2")
    path, port, admin = ship_config(tmp_path, urls, every_s=3600)  # nothing ships by time
    served = await serve_logged(path, port, admin, client)
    ids = await send_numbered(served, 120, "k")
    await asyncio.sleep(0.3)  # past flush_ms (50 ms): the records are on disk
    served.proc.send_signal(signal.SIGKILL)
    await served.proc.wait()
    assert store_records(tmp_path / "store") == []
    again = await serve_logged(path, port, admin, client)  # same replica id
    try:
        deadline = time.monotonic() + 15
        while len(store_records(tmp_path / "store")) < 120 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        exactly_once(tmp_path / "store", ids)  # the dead writer's segment, while serving
    finally:
        await stop(again)
    exactly_once(tmp_path / "store", ids)


@pytest.mark.slow
async def test_two_workers_segments_ship_through_the_supervisor(tmp_path: Path, upstreams,
                                                                client) -> None:
    urls = await echo_versions(upstreams, "v1", "v2")
    path, port, admin = ship_config(tmp_path, urls, every_s=2)
    served = await serve_logged(path, port, admin, client, "--workers", "2")
    ids: list[str] = []
    try:
        for k in range(20):  # fresh connections: both workers serve
            ids += await send_numbered(served, 10, f"w{k}")
    finally:
        await stop(served)
    exactly_once(tmp_path / "store", ids)
    pids = {p.name.split("-")[2].split(".")[0]
            for p in (tmp_path / "cfg" / "logs").glob(logstore.SEGMENT_GLOB)}
    assert len(pids) == 2  # both workers wrote; one shipper shipped both


# -- the shipper on its own: faults ------------------------------------------------------------

def segment(log_dir: Path, name: str, records: list[dict[str, Any]], torn: bytes = b"",
            ) -> Path:
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / name
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + torn)
    return path


def record(rid: str, ts: str = "2026-11-28T10:15:00.000Z", **extra: Any) -> dict[str, Any]:
    return {"ts": ts, "request_id": rid, "route": "fraud", "model": "fraud", "version": "v1",
            "role": "primary", "status": 200, "latency_ms": 1.5, "input": {"a": [1, 2]},
            "output": {"s": 0.5}, "violations": [], **extra}


def test_a_segment_spanning_hours_becomes_one_object_per_hour(tmp_path: Path) -> None:
    logs, store = tmp_path / "logs", tmp_path / "store"
    seg = segment(logs, "predictions-20261128T105930-77.jsonl",
                  [record("a", "2026-11-28T10:59:59.999Z"), record("b", "2026-11-28T11:00:00.000Z"),
                   record("c", "2026-11-28T11:00:01.000Z")], torn=b'{"ts": "2026-11-28T11:0')
    Shipper(logs, f"file://{store}", {}, "pod/1").ship_all()
    objects = sorted(str(p.relative_to(store)) for p in store.glob("date=*/hour=*/*.parquet"))
    assert objects == ["date=2026-11-28/hour=10/pod_1-20261128T105930-77-0.parquet",
                       "date=2026-11-28/hour=11/pod_1-20261128T105930-77-0.parquet"]
    rows = store_records(store)
    assert sorted(r["request_id"] for r in rows) == ["a", "b", "c"]  # the torn line skipped
    assert orjson.loads(rows[0]["input"]) == {"a": [1, 2]}  # JSON fields as text
    assert orjson.loads(logstore.marker(seg).read_bytes())["records"] == 3


def test_an_open_segment_is_not_shipped(tmp_path: Path) -> None:
    import fcntl
    logs, store = tmp_path / "logs", tmp_path / "store"
    seg = segment(logs, "predictions-20261128T101500-78.jsonl", [record("a")])
    with open(seg, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_SH)  # what the writer holds while open
        Shipper(logs, f"file://{store}", {}, "r1").ship_all()
        assert store_records(store) == [] and not logstore.marker(seg).exists()
    Shipper(logs, f"file://{store}", {}, "r1").ship_all()
    assert [r["request_id"] for r in store_records(store)] == ["a"]


def test_a_store_that_is_down_is_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    logs, store = tmp_path / "logs", tmp_path / "store"
    seg = segment(logs, "predictions-20261128T101500-79.jsonl",
                  [record(f"r{i}") for i in range(50)])
    store.write_text("not a directory")  # the store cannot be written
    shipper = Shipper(logs, f"file://{store}", {}, "r1")
    assert shipper.ship_all() is False
    assert shipper.errors >= 1 and shipper.unshipped_bytes() == seg.stat().st_size
    assert not logstore.marker(seg).exists()
    store.unlink()  # back
    assert shipper.ship_all() is True
    assert shipper.status()["unshipped_bytes"] == 0
    assert sorted(r["request_id"] for r in store_records(store)) == sorted(
        f"r{i}" for i in range(50))


def test_a_partial_object_from_a_crash_is_replaced(tmp_path: Path) -> None:
    """A crash mid-upload left a torn object at the final name and a staged temporary (a
    store without atomic puts): shipping again replaces it; readers never see the temp."""
    logs, store = tmp_path / "logs", tmp_path / "store"
    seg = segment(logs, "predictions-20261128T101500-80.jsonl",
                  [record(f"p{i}") for i in range(30)])
    final = store / "date=2026-11-28" / "hour=10" / "r1-20261128T101500-80-0.parquet"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"PAR1 torn")
    (final.parent / f".{final.name}.999.tmp").write_bytes(b"half")
    Shipper(logs, f"file://{store}", {}, "r1").ship_all()
    assert pq.read_metadata(final).num_rows == 30
    assert sorted(r["request_id"] for r in store_records(store)) == sorted(
        f"p{i}" for i in range(30))
    assert logstore.marker(seg).exists()


def settings(tmp_path: Path, **changes: Any) -> PredictionLogSettings:
    base: dict[str, Any] = {"dir": tmp_path / "logs", "ship": Ship(
        to=f"file://{tmp_path / 'store'}", keep_local_hours=1.0)}
    base.update(changes)
    return PredictionLogSettings(**base)


def test_retention_never_deletes_an_unshipped_segment(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    logs = tmp_path / "logs"
    old = [segment(logs, f"predictions-20261101T00000{i}-1.jsonl", [record(f"o{i}")] * 200)
           for i in range(3)]
    for path in old:
        os.utime(path, (now - 40 * 86400, now - 40 * 86400))  # past retain.days (30)
    shipped_long_ago, shipped_now, unshipped = old
    for path, when in ((shipped_long_ago, now - 2 * 3600), (shipped_now, now - 60)):
        logstore.marker(path).write_text("{}")
        os.utime(logstore.marker(path), (when, when))
    files = LogFiles(settings(tmp_path, retain_max_total_gb=1e-9), wall=lambda: now)
    removed = files.prune()
    assert removed == [shipped_long_ago]  # shipped and kept keep_local_hours: may go
    assert shipped_now.exists() and unshipped.exists()  # too recent; never shipped
    assert not logstore.marker(shipped_long_ago).exists()


async def test_unshipped_bytes_over_the_cap_make_the_log_full(tmp_path: Path) -> None:
    from router.metrics import Metrics
    from router.observers.ship import ShipProcess

    log = PredictionLog(settings(tmp_path, retain_max_total_gb=1e-6, block_ms=50), b"k" * 32)
    ship = ShipProcess(log.settings, "r1", tmp_path / "state", Metrics(),
                       on_full=log.set_store_full)
    status = {"shipped_records": 0, "errors": 3, "unshipped_bytes": 5000, "last_error": "x"}
    ship._update(status)  # what the shipper process reports
    assert log.store_full and not log.try_reserve()
    assert await log.reserve() is False  # on_full: block -> 503 after block_ms
    ship._update({**status, "unshipped_bytes": 10})
    assert not log.store_full and log.try_reserve()


# -- what the red team broke -------------------------------------------------------------------

def test_objects_are_named_after_the_writer_and_read_once_before_the_marker(
        tmp_path: Path) -> None:
    """A crash between the upload and the marker: readers count the segment once, and a
    shipper under another replica id replaces the same objects instead of adding copies."""
    from router.analysis.audit import LogQuery

    logs, store = tmp_path / "logs", tmp_path / "store"
    seg = segment(logs, "predictions-20261128T101500-81.jsonl",
                  [record(f"m{i}") for i in range(10)])
    logstore.writer_file(seg).write_text("pod-a")
    Shipper(logs, f"file://{store}", {}, "pod-b").ship_all()
    logstore.marker(seg).unlink()  # as if the process died before writing it
    query = LogQuery(logs, store=f"file://{store}")
    assert query.rows("SELECT count(*) AS n FROM records")[0]["n"] == 10
    Shipper(logs, f"file://{store}", {}, "pod-c").ship_all()
    names = sorted(p.name for p in store.glob("date=*/hour=*/*.parquet"))
    assert names == ["pod-a-20261128T101500-81-0.parquet"]
    exactly_once(store, [f"m{i}" for i in range(10)])


def test_a_segment_appears_only_locked(tmp_path: Path) -> None:
    """The writer creates a segment under a hidden name, locks it, then renames it: the
    shipper never finds an open segment it could lock (and ship empty)."""
    import fcntl
    files = LogFiles(settings(tmp_path), replica="r9")
    files.write(b'{"ts": "2026-11-28T10:15:00.000Z"}\n')
    assert files.path is not None
    fd = os.open(files.path, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    assert logstore.writer_file(files.path).read_text() == "r9"
    assert not list((tmp_path / "logs").glob(".*opening"))
    files.close()


def test_a_name_is_never_reused_by_the_process_that_used_it(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    files = LogFiles(settings(tmp_path), wall=lambda: now)
    names = []
    for _ in range(3):  # within one second: rotate, and retention deletes the closed file
        files.write(b"{}\n")
        assert files.path is not None
        names.append(files.path.name)
        files.close()
        files.path.unlink()
    assert len(set(names)) == 3, names


@pytest.mark.slow
async def test_a_dead_shipper_is_restarted(tmp_path: Path, upstreams, client) -> None:
    urls = await echo_versions(upstreams, "v1", "v2")
    path, port, admin = ship_config(tmp_path, urls, every_s=1)
    served = await serve_logged(path, port, admin, client)
    try:
        def shippers() -> set[int]:
            pids = set()
            for task in Path(f"/proc/{served.proc.pid}/task").iterdir():
                for child in (task / "children").read_text().split():
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                    if b"multiprocessing" in cmdline and b"spawn_main" in cmdline:
                        pids.add(int(child))
            return pids

        first = shippers()
        assert len(first) >= 1
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while not (shippers() - first) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert shippers() - first, "no new shipper"
        ids = await send_numbered(served, 40, "after")
        deadline = time.monotonic() + 15
        while len(store_records(tmp_path / "store")) < 40 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        exactly_once(tmp_path / "store", ids)
    finally:
        await stop(served)


@pytest.mark.slow
async def test_sigterm_with_a_store_that_hangs_stays_within_the_grace(
        tmp_path: Path, upstreams, client) -> None:
    """An S3 endpoint that accepts and never answers: the shipper is stopped at the end of
    the shutdown grace; its segments stay on disk for the next start."""
    import socket
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    try:
        urls = await echo_versions(upstreams, "v1", "v2")
        port, admin = free_port(), free_port()
        path = write_config(
            tmp_path / "cfg", [route(urls)], listen={"host": "127.0.0.1", "port": port},
            admin={"host": "127.0.0.1", "port": admin},
            limits={"shutdown_grace_s": 2},
            prediction_log={"dir": "logs", "flush_ms": 50, "ship": {
                "to": "s3://bucket/log", "every_s": 1, "storage_options": {
                    "endpoint_url": f"http://127.0.0.1:{hole.getsockname()[1]}",
                    "key": "k", "secret": "s"}}})
        served = await serve_logged(path, port, admin, client)
        await send_numbered(served, 20, "h")
        await asyncio.sleep(1.5)  # a segment closed; its upload hangs
        started = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 30) == 0
        took = time.monotonic() - started
    finally:
        hole.close()
    assert took < 2 + 3, took  # the grace, plus process exits
    logs = tmp_path / "cfg" / "logs"
    assert [p for p in logs.glob(logstore.SEGMENT_GLOB) if not logstore.marker(p).exists()]
