"""The prediction log: records, payload policy, rotation, retention, on_full, feedback."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from helpers import (
    admin_url,
    echo_versions,
    free_port,
    rewrite,
    route,
    scorer,
    url,
    v2_answer,
    write_config,
)

from router.analysis.audit import iter_records
from router.config import PredictionLogSettings
from router.observers.encode import keyed_hash, payload
from router.observers.predlog import LogFiles

FIELDS = {"ts", "request_id", "route", "model", "version", "role", "reason", "upstream",
          "status", "latency_ms", "config_revision", "schema", "sticky_key", "input", "output",
          "violations", "served_model_version", "fallback_from", "compare", "error"}


async def records_of(app, folder: Path) -> list[dict[str, Any]]:
    await app.predlog.flush()
    return iter_records(folder / "logs")


async def test_primary_record_fields(tmp_path: Path, upstreams, start_router, client) -> None:
    primary = await upstreams.start(scorer(0.25, model_version="1.0.0"))
    cfg = route({"v1": primary + "/m"}, input_schema="fraud-features@1",
                sticky={"header": "x-user-id"}, validation="log")
    app = await start_router(write_config(tmp_path, [cfg]))
    body = {"inputs": [{"name": "amount", "datatype": "FP64", "shape": [1], "data": [9.5]}]}
    async with client.post(url(app, "/v2/models/fraud/infer"), data=orjson.dumps(body),
                           headers={"x-user-id": "alice@example.com",
                                    "traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
                                    "x-request-id": "r-1"}) as resp:
        assert resp.status == 200
    [record] = await records_of(app, tmp_path)
    assert FIELDS <= record.keys()
    assert record["request_id"] == "r-1" and record["role"] == "primary"
    assert (record["route"], record["model"], record["version"]) == ("fraud", "fraud", "v1")
    assert record["reason"] == "sticky"
    assert record["upstream"] == primary
    assert record["config_revision"] == app.live.snapshot.revision
    assert record["schema"] == "fraud-features@1"
    assert record["input"] == body
    assert {(v["field"], v["kind"]) for v in record["violations"]} == {
        ("avg_purchase_last_7_days", "missing"), ("country", "missing")}
    assert record["output"] == v2_answer([0.25])
    assert record["served_model_version"] == "1.0.0"
    assert record["trace_id"] == "ab" * 16
    secret = (tmp_path / "state" / "log.key").read_bytes()
    assert record["sticky_key"] == keyed_hash(secret, "alice@example.com")
    assert "alice" not in (tmp_path / "logs").joinpath(
        next(p.name for p in (tmp_path / "logs").iterdir())).read_text()
    assert record["ts"].endswith("Z") and len(record["ts"]) == 24
    assert 0 < record["latency_ms"] < 5000


async def test_every_outcome_is_logged(tmp_path: Path, upstreams, start_router,
                                       client) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(5)  # the fault: an upstream that hangs past timeout_s
        return web.Response()

    slow = web.Application()
    slow.router.add_post("/m/infer", hang)
    slow_url = await upstreams.start(slow)
    dead = f"http://127.0.0.1:{free_port()}"
    urls = await echo_versions(upstreams, "v1")
    routes = [route(urls, limits=None),
              route({"v1": slow_url + "/m"}, name="slow", match={"path_prefix": "/slow"},
                    timeout_s=0.2),
              route({"v1": dead + "/m"}, name="dead", match={"path_prefix": "/dead"})]
    app = await start_router(write_config(tmp_path, routes, limits={"max_body_mb": 0.001}))
    cases = [("/v2/models/fraud/infer", b"{}", 200), ("/slow/infer", b"{}", 504),
             ("/dead/infer", b"{}", 502), ("/v2/models/fraud/infer", b"x" * 5000, 413),
             ("/v2/models/fraud/versions/v9/infer", b"{}", 404)]
    for path, body, status in cases:
        async with client.post(url(app, path), data=body) as resp:
            assert resp.status == status
    async with client.get(url(app, "/v2/models/fraud")) as resp:  # metadata: not logged
        assert resp.status == 200
    async with client.post(url(app, "/nowhere"), data=b"{}") as resp:  # no route: not logged
        assert resp.status == 404
    records = await records_of(app, tmp_path)
    assert [r["status"] for r in records] == [200, 504, 502, 413, 404]
    assert [r["error"] is None for r in records] == [True, False, False, False, False]
    assert records[3]["version"] is None and records[4]["version"] is None


@pytest.mark.parametrize("policy,expected", [
    ("full", {"inputs": [{"name": "ssn", "data": "***"}, {"name": "amount", "data": [1]}]}),
    ("hash", "sha256"),
    ("none", None),
], ids=["full", "hash", "none"])
def test_payload_policy_and_v2_redaction(tmp_path: Path, policy: str, expected: Any) -> None:
    settings = PredictionLogSettings(dir=tmp_path, payloads=policy,  # type: ignore[arg-type]
                                     redact=frozenset({"ssn"}))
    body = orjson.dumps({"inputs": [{"name": "ssn", "data": ["123-45"]},
                                    {"name": "amount", "data": [1]}]})
    got = payload(body, settings, "v2")
    if expected == "sha256":
        assert set(got) == {"sha256", "bytes"} and got["bytes"] == len(body)
    else:
        assert got == expected


def test_json_redaction_any_depth_and_truncation(tmp_path: Path) -> None:
    settings = PredictionLogSettings(dir=tmp_path, redact=frozenset({"ssn"}), max_payload_kb=1)
    body = orjson.dumps({"user": {"ssn": "1", "name": "x"}, "rows": [{"ssn": "2"}]})
    assert payload(body, settings, "json") == {"user": {"ssn": "***", "name": "x"},
                                              "rows": [{"ssn": "***"}]}
    big = b'{"a": "' + b"z" * 2000 + b'"}'
    marker = payload(big, settings, "json")
    assert marker["_truncated"] is True and marker["bytes"] == len(big)
    assert len(marker["sha256"]) == 64


async def test_streamed_response_copy_is_bounded(tmp_path: Path, upstreams, start_router,
                                                 client) -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(10):
            await resp.write(b"a" * 1000)
            await asyncio.sleep(0.01)  # arrive in pieces: the router must stream, not buffer
        await resp.write_eof()
        return resp

    up = web.Application()
    up.router.add_post("/m/s", stream)
    base = await upstreams.start(up)
    app = await start_router(write_config(tmp_path, [route({"v1": base + "/m"})],
                                          prediction_log={"dir": "logs", "max_payload_kb": 2}))
    async with client.post(url(app, "/v2/models/fraud/s"), data=b"{}") as resp:
        assert len(await resp.read()) == 10_000
    [record] = await records_of(app, tmp_path)
    assert record["output"] == {"_truncated": True, "bytes": 10_000, "sha256": None}


def streaming(size: int, pieces: int = 10) -> web.Application:
    """An upstream streaming ``size`` bytes of ``a`` in ``pieces``, no content-length."""
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(pieces):
            await resp.write(b"a" * (size // pieces))
            await asyncio.sleep(0.01)  # arrive in pieces: the router must stream, not buffer
        await resp.write_eof()
        return resp

    up = web.Application()
    up.router.add_post("/m/s", stream)
    return up


async def test_prediction_log_settings_wait_for_a_restart(tmp_path: Path, upstreams,
                                                          start_router, client) -> None:
    """A reload that changes prediction_log applies nowhere, not to the streamed copy alone."""
    base = await upstreams.start(streaming(10_000))
    path = write_config(tmp_path, [route({"v1": base + "/m"})],
                        prediction_log={"dir": "logs", "max_payload_kb": 64})
    app = await start_router(path)
    rewrite(path, lambda doc: doc["prediction_log"].update(max_payload_kb=2))
    await app.reloader.reload("api")
    assert app.live.snapshot.prediction_log.max_payload_kb == 2  # the file's value is applied
    async with client.post(url(app, "/v2/models/fraud/s"), data=b"{}") as resp:
        assert len(await resp.read()) == 10_000
    [record] = await records_of(app, tmp_path)
    assert record["output"] == "a" * 10_000  # the running log's 64 KB cap, whole
    async with client.get(admin_url(app, "/-/config")) as resp:
        pending = (await resp.json())["pending_restart"]
    assert pending == {"prediction_log": {"max_payload_kb": {"running": 64, "configured": 2}}}

    rewrite(path, lambda doc: doc["prediction_log"].update(max_payload_kb=64))
    await app.reloader.reload("api")
    async with client.get(admin_url(app, "/-/config")) as resp:
        assert (await resp.json())["pending_restart"] == {}


def test_rotation_and_retention(tmp_path: Path) -> None:
    clock = [1_800_000_000.0]
    settings = PredictionLogSettings(dir=tmp_path, rotate_mb=0.001, retain_days=1,
                                     retain_max_total_gb=3000 / 1024 ** 3)
    files = LogFiles(settings, wall=lambda: clock[0])
    line = b"x" * 599 + b"\n"
    for _ in range(12):  # two lines per file (1,200 bytes >= 1,048 rotate threshold)
        files.write(line)
        clock[0] += 1
    files.close()
    names = sorted(p.name for p in tmp_path.glob("predictions-*.jsonl"))
    # 6 files of 1,200 bytes were closed; the total cap of 3,000 bytes keeps the newest ones
    total = sum(p.stat().st_size for p in tmp_path.glob("predictions-*.jsonl"))
    assert total <= 3000 + 1200
    assert all(n.endswith(f"-{os.getpid()}.jsonl") for n in names)
    old = tmp_path / "predictions-20200101T000000-1.jsonl"
    old.write_bytes(line)
    os.utime(old, (clock[0] - 3 * 86400, clock[0] - 3 * 86400))
    files.prune()
    assert not old.exists()


async def test_on_full_block_answers_503_and_recovers(tmp_path: Path, upstreams, start_router,
                                                      client) -> None:
    urls = await echo_versions(upstreams, "v1")
    app = await start_router(write_config(
        tmp_path, [route(urls)], prediction_log={"dir": "logs", "on_full": "block",
                                                 "block_ms": 100, "flush_ms": 20}))
    broken = True
    good_sink = app.predlog.sink

    def sink(data: bytes) -> None:
        if broken:
            raise OSError(errno.ENOSPC, "No space left on device")
        good_sink(data)

    app.predlog.sink = sink
    app.predlog.capacity = 3
    statuses = []
    for i in range(6):
        async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}",
                               headers={"x-request-id": f"b-{i}"}) as resp:
            statuses.append(resp.status)
            if resp.status == 503:
                assert (await resp.json())["code"] == "prediction_log_unavailable"
    assert statuses == [200, 200, 200, 503, 503, 503]
    async with client.get(admin_url(app, "/-/ready")) as resp:
        assert resp.status == 503
        assert "prediction log" in str(await resp.json())
    broken = False
    await app.predlog.flush()
    async with client.get(admin_url(app, "/-/ready")) as resp:
        assert resp.status == 200
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status == 200
    records = await records_of(app, tmp_path)
    assert [r["request_id"] for r in records][:3] == ["b-0", "b-1", "b-2"]
    assert len(records) == 4  # every answered prediction, none of the refused ones
    text = app.metrics.render().decode()
    assert 'model_router_requests_rejected_total{code="503",route="fraud"} 3.0' in text


async def test_on_full_drop_serves_and_counts(tmp_path: Path, upstreams, start_router,
                                              client) -> None:
    urls = await echo_versions(upstreams, "v1")
    app = await start_router(write_config(
        tmp_path, [route(urls)], prediction_log={"dir": "logs", "on_full": "drop"}))

    def sink(data: bytes) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    app.predlog.sink = sink
    app.predlog.capacity = 2
    for _ in range(5):
        async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
            assert resp.status == 200
    await app.predlog.flush()
    assert app.predlog.dropped == 3
    assert "model_router_predlog_dropped_total 3.0" in app.metrics.render().decode()


async def test_version_mismatch_is_recorded_and_counted(tmp_path: Path, upstreams,
                                                        start_router, client) -> None:
    liar = await upstreams.start(scorer(0.5, model_version="9.9.9"))
    app = await start_router(write_config(tmp_path, [route({"v1": liar + "/m"})]))
    async with client.post(url(app, "/v2/models/fraud/infer"), data=b"{}") as resp:
        assert resp.status == 200
    [record] = await records_of(app, tmp_path)
    assert record["served_model_version"] == "9.9.9"
    assert 'model_router_version_mismatch_total{route="fraud",version="v1"} 1.0' in \
        app.metrics.render().decode()


async def test_feedback(tmp_path: Path, upstreams, start_router, client) -> None:
    urls = await echo_versions(upstreams, "v1")
    app = await start_router(write_config(tmp_path, [route(urls)]))
    for bad in (b"not json", b"[]", b'{"request_id": "x"}', b'{"outcome": {}}'):
        async with client.post(url(app, "/-/feedback"), data=bad) as resp:
            assert resp.status == 400
            assert (await resp.json())["code"] == "bad_request"
    async with client.post(url(app, "/-/feedback"),
                           json={"request_id": "unknown-1", "outcome": {"converted": True}}
                           ) as resp:
        assert resp.status == 202
    [record] = await records_of(app, tmp_path)
    assert record["role"] == "feedback" and record["request_id"] == "unknown-1"
    assert record["outcome"] == {"converted": True}


async def test_torn_last_line_is_skipped(tmp_path: Path, caplog) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    good = orjson.dumps({"request_id": "a", "role": "primary", "ts": "2026-01-01T00:00:00.000Z"})
    (logs / "predictions-20260101T000000-1.jsonl").write_bytes(good + b"\n" + b'{"request_')
    assert [r["request_id"] for r in iter_records(logs)] == ["a"]
    assert "torn last line" in caplog.text


@pytest.mark.slow
async def test_sigterm_loses_no_record(tmp_path: Path, upstreams, client) -> None:
    from test_lifecycle import Served, start_serve, wait_ready
    primary = await upstreams.start(scorer(0.4))
    port, admin = free_port(), free_port()
    path = write_config(tmp_path, [route({"v1": primary + "/m", "v2": primary + "/m"},
                                         split={"v1": 50, "v2": 50})],
                        listen={"host": "127.0.0.1", "port": port},
                        admin={"host": "127.0.0.1", "port": admin},
                        prediction_log={"dir": "logs", "flush_ms": 5000})
    served = Served(await start_serve(path), port, admin)
    try:
        await wait_ready(served, client)
        answered = {}
        for _ in range(200):
            async with client.post(served.url("/v2/models/fraud/infer"), data=b"{}") as resp:
                assert resp.status == 200
                answered[resp.headers["x-request-id"]] = resp.headers["x-model-version"]
        served.proc.terminate()
        assert await asyncio.wait_for(served.proc.wait(), 15) == 0
    finally:
        if served.proc.returncode is None:
            served.proc.kill()
            await served.proc.wait()
    records = [r for r in iter_records(tmp_path / "logs") if r["role"] == "primary"]
    assert {r["request_id"]: r["version"] for r in records} == answered
    assert len(records) == 200
