"""Shipping the prediction log over the S3 protocol: a real `serve` process ships to moto's
standalone S3 server on 127.0.0.1 (started and stopped by the test), through the same
s3fs/botocore code path production uses against AWS S3 or MinIO; then every object is read
back with s3fs + pyarrow."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow.parquet as pq
import pytest
import s3fs
from helpers import (
    Served,
    Upstreams,
    echo_versions,
    free_port,
    route,
    send_numbered,
    serve_logged,
    write_config,
)
from moto.server import ThreadedMotoServer

from router import logstore

pytestmark = [pytest.mark.slow, pytest.mark.loopback]

REPLICA = "s3-r1"
OBJECT = re.compile(
    r"^(?P<bucket>[^/]+)/log/date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/"
    rf"{REPLICA}-(\d{{8}}T\d{{6}})-(\d+)-(\d+)\.parquet$")


class MotoS3:
    """moto's S3 server in a thread on 127.0.0.1:port; ``stop`` also closes the listening
    socket (``ThreadedMotoServer.stop`` only ends the serve loop, which would leave
    connections hanging in the backlog and the port taken)."""

    def __init__(self, port: int) -> None:
        self.port = port
        # moto keeps its state in this process's memory, across servers: a bucket per test
        self.bucket = f"audit-{port}"
        self.server: ThreadedMotoServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            if self.server._server is not None:
                self.server._server.server_close()
            self.server = None

    def fs(self) -> s3fs.S3FileSystem:
        return s3fs.S3FileSystem(endpoint_url=self.endpoint, key="test", secret="test",
                                 skip_instance_cache=True)

    def ensure_bucket(self) -> None:
        fs = self.fs()
        if not fs.exists(self.bucket):
            fs.mkdir(self.bucket)


@pytest.fixture
def moto() -> Iterator[MotoS3]:
    server = MotoS3(free_port())
    server.start()
    server.ensure_bucket()
    yield server
    server.stop()


def s3_config(tmp_path: Path, urls: dict[str, str], moto: MotoS3) -> tuple[Path, int, int]:
    port, admin = free_port(), free_port()
    path = write_config(tmp_path / "cfg", [route(urls, split={"v1": 50, "v2": 50})],
                        listen={"host": "127.0.0.1", "port": port},
                        admin={"host": "127.0.0.1", "port": admin},
                        prediction_log={"dir": "logs", "flush_ms": 50, "ship": {
                            "to": f"s3://{moto.bucket}/log", "every_s": 1,
                            "storage_options": {"endpoint_url": moto.endpoint,
                                                "key": "test", "secret": "test"}}})
    return path, port, admin


async def serve(path: Path, port: int, admin: int, client: aiohttp.ClientSession) -> Served:
    """A router whose only S3 credentials are the config's (no AWS_* from this shell)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return await serve_logged(path, port, admin, client, replica=REPLICA, env=env)


async def metric(served: Served, client: aiohttp.ClientSession, name: str) -> float:
    async with client.get(served.admin_url("/metrics")) as resp:
        text = await resp.text()
    found = re.search(rf"^model_router_{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, name
    return float(found.group(1))


async def until(served: Served, client: aiohttp.ClientSession, name: str, least: float,
                timeout: float) -> float:
    """Poll a metric until it reaches ``least``; fails at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = await metric(served, client, name)
        if value >= least:
            return value
        assert time.monotonic() < deadline, f"{name} = {value} < {least} after {timeout} s"
        await asyncio.sleep(0.2)


async def stop(served: Served) -> None:
    served.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.proc.wait(), 60) == 0


def read_store(moto: MotoS3) -> tuple[list[str], list[dict[str, Any]]]:
    """Every object name under the prefix and every record in them."""
    fs = moto.fs()
    names = sorted(fs.find(f"{moto.bucket}/log"))
    rows: list[dict[str, Any]] = []
    for name in names:
        if name.endswith(".parquet"):
            with fs.open(name, "rb") as f:
                rows += pq.read_table(f).to_pylist()
    return names, rows


def check_store(moto: MotoS3, ids: list[str]) -> None:
    """Every answered request's primary record is in the store exactly once; objects are
    named and partitioned as logstore says, zstd, with logstore's columns."""
    names, rows = read_store(moto)
    top = f"{moto.bucket}/log"
    parquet = [n for n in names if n.startswith(f"{top}/date=")]
    assert parquet, names
    fs = moto.fs()
    for name in parquet:
        match = OBJECT.match(name)
        assert match is not None and match["bucket"] == moto.bucket, name
        date, hour = match.group(2), match.group(3)
        with fs.open(name, "rb") as f:
            meta = pq.read_metadata(f)
            table = pq.read_table(f)
        assert meta.schema.names == list(logstore.COLUMNS), name
        assert all(meta.row_group(g).column(c).compression == "ZSTD"
                   for g in range(meta.num_row_groups) for c in range(meta.num_columns)), name
        # every record sits in the partition of its own ts
        assert {logstore.partition(ts) for ts in table.column("ts").to_pylist()} \
            == {(date, hour)}, name
    counts = Counter(r["request_id"] for r in rows if r["role"] == "primary")
    missing = [i for i in ids if counts[i] == 0]
    twice = {i: n for i, n in counts.items() if n > 1}
    assert not missing and not twice, (missing[:5], len(missing), twice)
    assert set(counts) == set(ids)
    assert any(n.startswith(f"{top}/revisions/") for n in names), names
    assert f"{top}/history/{REPLICA}.jsonl" in names


async def test_ships_every_record_to_s3_once(tmp_path: Path, moto: MotoS3) -> None:
    ups = Upstreams()
    urls = await echo_versions(ups, "v1", "v2")
    path, port, admin = s3_config(tmp_path, urls, moto)
    async with aiohttp.ClientSession() as client:
        served = await serve(path, port, admin, client)
        try:
            first = await send_numbered(served, 150, "a")
            # shipped while serving (every_s 1, a round a second), before any shutdown
            await until(served, client, "predlog_shipped_total", 150, timeout=30)
            assert await metric(served, client, "predlog_ship_errors_total") == 0
            second = await send_numbered(served, 150, "b")  # mostly in the open segment at SIGTERM
        finally:
            await stop(served)
    await ups.close()
    check_store(moto, first + second)
    logs = path.parent / "logs"
    segments = list(logs.glob(logstore.SEGMENT_GLOB))
    assert segments and all(logstore.marker(s).exists() for s in segments)


async def test_s3_down_costs_disk_not_requests(tmp_path: Path, moto: MotoS3) -> None:
    ups = Upstreams()
    urls = await echo_versions(ups, "v1", "v2")
    path, port, admin = s3_config(tmp_path, urls, moto)
    async with aiohttp.ClientSession() as client:
        served = await serve(path, port, admin, client)
        try:
            before = await send_numbered(served, 50, "before")
            await until(served, client, "predlog_shipped_total", 50, timeout=30)
            moto.stop()
            during = await send_numbered(served, 100, "during")  # every one answered 200
            # segments close every second and cannot go anywhere
            await until(served, client, "predlog_ship_errors_total", 1, timeout=60)
            await until(served, client, "predlog_unshipped_bytes", 1, timeout=30)
            more = await send_numbered(served, 50, "during2")
            assert await metric(served, client, "predlog_shipped_total") == 50
            # back on the same port: moto keeps its state in this process's memory, so the
            # bucket (and the objects shipped before) may survive; make sure the bucket exists
            moto.start()
            moto.ensure_bucket()
            # the shipper's backoff doubles to 60 s at most; the outage lasted seconds
            await until(served, client, "predlog_shipped_total", 200, timeout=90)
            assert await metric(served, client, "predlog_unshipped_bytes") >= 0
            after = await send_numbered(served, 30, "after")
        finally:
            await stop(served)
    await ups.close()
    check_store(moto, before + during + more + after)
