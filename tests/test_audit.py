"""`model-router audit` and `history`: the answer to "which model made this prediction?"."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from helpers import REGISTRY, rewrite, scorer, url, wait_for, write_config

from router.analysis.audit import LogQuery, parse_time

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


@pytest.mark.slow
async def test_audit_reads_the_revision_that_served(tmp_path: Path, upstreams, start_router,
                                                    client) -> None:
    v1 = await upstreams.start(scorer(0.2, model_version="1.0.0"))
    v3 = await upstreams.start(scorer(0.9))
    cfg = {"name": "fraud", "match": {"path_prefix": "/v2/models/fraud"}, "protocol": "v2",
           "model": "fraud", "versions": {"v1": {"url": v1 + "/m"}, "v3": {"url": v3 + "/m"}},
           "split": {"v1": 100, "v3": 0}, "shadow": [{"version": "v3", "percent": 100}]}
    path = write_config(tmp_path, [cfg])
    app = await start_router(path)
    old_revision = app.live.snapshot.revision
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b'{"inputs": []}',
                           headers={"x-request-id": "audit-me"}) as resp:
        assert resp.status == 200
    async with client.post(url(app, "/-/feedback"),
                           json={"request_id": "audit-me", "outcome": {"converted": True}}):
        pass
    await wait_for(lambda: not app.shadows.tasks)

    registry = copy.deepcopy(REGISTRY)
    registry["models"]["fraud"]["versions"]["v1"]["training_data"] = "s3://d/retrained.parquet"
    (tmp_path / "registry.yaml").write_text(orjson.dumps(registry).decode())
    rewrite(path, lambda doc: doc)  # touch router.yaml too: the registry edit is the change
    await wait_for(lambda: app.live.snapshot.revision != old_revision, timeout=2)
    for i in range(3):
        async with client.post(url(app, "/v2/models/fraud/infer"), data=b'{"inputs": []}',
                               headers={"x-request-id": f"later-{i}"}) as resp:
            assert resp.status == 200
    await wait_for(lambda: not app.shadows.tasks)
    await app.predlog.flush()

    done = cli("audit", "-c", str(path), "audit-me", "--json")
    assert done.returncode == 0, done.stderr
    answer = orjson.loads(done.stdout)
    roles = [r["role"] for r in answer["records"]]
    assert roles == ["primary", "shadow", "feedback"]
    primary = answer["records"][0]
    assert primary["version"] == "v1" and primary["served_model_version"] == "1.0.0"
    assert answer["context"]["revision"] == old_revision
    assert answer["context"]["registry_entry"]["training_data"] == "s3://d/v1.parquet"
    assert answer["context"]["route"]["split"] == {"v1": 100, "v3": 0}

    human = cli("audit", "-c", str(path), "audit-me")
    assert human.returncode == 0
    assert "training_data: s3://d/v1.parquet" in human.stdout
    # values print as JSON, never as Python reprs
    assert '"against":"v1"' in human.stdout and "'against'" not in human.stdout
    assert 'route as configured then: {"name":"fraud"' in human.stdout

    listed = cli("audit", "-c", str(path), "--role", "primary", "--since", "1h", "--json")
    assert [r["request_id"] for r in orjson.loads(listed.stdout)] == \
        ["audit-me", "later-0", "later-1", "later-2"]
    missing = cli("audit", "-c", str(path), "no-such-request")
    assert missing.returncode == 1


async def test_history_at_time(tmp_path: Path, upstreams, start_router) -> None:
    v1 = await upstreams.start(scorer(0.2))
    cfg = {"name": "fraud", "match": {"path_prefix": "/f"}, "protocol": "v2",
           "model": "fraud", "versions": {"v1": {"url": v1}, "v2": {"url": v1}},
           "split": {"v1": 90, "v2": 10}}
    path = write_config(tmp_path, [cfg])
    app = await start_router(path)
    first = app.live.snapshot.revision
    await asyncio.sleep(0.02)  # history timestamps have millisecond resolution
    between = time.time()
    await asyncio.sleep(0.02)

    def flip(doc: dict) -> None:
        doc["routes"][0]["split"] = {"v1": 50, "v2": 50}

    rewrite(path, flip)
    await wait_for(lambda: app.live.snapshot.revision != first, timeout=2)
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(between)) + \
        f".{int(between % 1 * 1000):03d}Z"
    done = cli("history", "-c", str(path), "--at", at, "--json")
    assert done.returncode == 0, done.stderr
    live = orjson.loads(done.stdout)
    assert live["revision"] == first
    assert live["routes"]["fraud"]["weights"] == {"v1": 90, "v2": 10}
    full = cli("history", "-c", str(path))
    assert full.stdout.count("applied") == 2


def test_parse_time() -> None:
    now = 1_800_000_000.0
    assert parse_time("2h", now).timestamp() == now - 7200
    assert parse_time("2026-11-26T10:00:00Z").isoformat() == "2026-11-26T10:00:00+00:00"
    assert parse_time("2026-11-26T10:00:00").tzinfo is not None


def test_query_over_parquet_twins_and_open_files(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    closed = logs / "predictions-20260101T000000-1.jsonl"
    closed.write_bytes(b"".join(orjson.dumps({"request_id": f"c{i}", "role": "primary",
                                              "ts": f"2026-01-01T00:00:0{i}.000Z",
                                              "input": {"a": i}}) + b"\n" for i in range(5)))
    old = time.time() - 3600
    import os
    os.utime(closed, (old, old))
    current = logs / "predictions-20260102T000000-1.jsonl"
    current.write_bytes(orjson.dumps({"request_id": "o1", "role": "primary",
                                      "ts": "2026-01-02T00:00:00.000Z"}) + b"\n")
    query = LogQuery(logs)
    assert (logs / ".parquet" / (closed.stem + ".parquet")).exists()
    assert query.by_request("c3")[0]["input"] == {"a": 3}
    assert query.by_request("o1")[0]["request_id"] == "o1"
    assert len(query.filter(limit=10)) == 6
