"""Hostile bodies and header bytes: every answered request keeps its record, no 500s.

DESIGN.md "Hardening rules": a payload the encoder cannot write (nesting beyond its depth,
invalid text) is stored as ``{"_unencodable": true, "bytes": N, "sha256": ...}``; header
values with invalid bytes never cause a 500; reports never crash on extreme numbers; log
files are created 0640 in directories 0750. Requests go over raw sockets so that bytes
aiohttp's client would refuse (``\\xff`` in a header) reach the router as sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from helpers import route, scorer, url, v2_answer, wait_for, write_config

from router.analysis.audit import iter_records
from router.analysis.report import build_report, render_table
from router.bodies import input_columns, output_columns
from router.config import PredictionLogSettings, load_snapshot
from router.config.registry import Field, Schema
from router.dataplane.routing import decide, sticky_bucket
from router.errors import BadOverride
from router.observers.encode import valid_text
from router.observers.predlog import PredictionLog
from router.observers.shadow import compare, prediction_rows
from router.records import Entry
from router.validation import Validator

VALID_INPUTS = [{"name": "amount", "datatype": "FP64", "shape": [1], "data": [9.5]},
                {"name": "avg_purchase_last_7_days", "datatype": "FP64", "shape": [1],
                 "data": [3.0]},
                {"name": "country", "datatype": "BYTES", "shape": [1], "data": ["US"]}]


def nested(depth: int, leaf: bytes = b"1", open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * depth + leaf + close * depth


def deep_dict(depth: int) -> bytes:
    return nested(depth, b"1", b'{"a":', b"}")


def v2_body(tail: bytes = b"", inputs: bytes | None = None) -> bytes:
    """A V2 body; ``tail`` is spliced in after the inputs (``, "parameters": ...``)."""
    return b'{"inputs": ' + (inputs or orjson.dumps(VALID_INPUTS)) + tail + b"}"


DEEP_PARAMETERS = b',\n"parameters": ' + deep_dict(300)       # depth past orjson's 254
DEEP_DATA = b'[{"name": "amount", "datatype": "FP64", "shape": [1], "data": ' \
    + nested(990, b"9.5") + b"}, " + orjson.dumps(VALID_INPUTS[1:])[1:]  # the others valid


def post(path: str, body: bytes, headers: bytes = b"") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: router\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n" + headers + b"\r\n" + body)


async def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection: status, headers (surrogate-escaped), body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "surrogateescape").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        headers[name.lower()] = value
    return int(lines[0].split()[1]), headers, body


def unencodable(body: bytes) -> dict[str, Any]:
    """DESIGN.md's shape, written out independently of the router's code."""
    return {"_unencodable": True, "bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest()}


def input_unencodable(body: bytes) -> Callable[[dict[str, Any]], None]:
    def check(record: dict[str, Any]) -> None:
        assert record["input"] == unencodable(body)
    return check


def deep_data_rejected(record: dict[str, Any]) -> None:
    assert [(v["field"], v["kind"]) for v in record["violations"]] == [("amount", "shape")]
    assert "nest" in record["violations"][0]["expected"]


def sticky_hashed(record: dict[str, Any]) -> None:
    assert record["reason"] == "sticky" and len(record["sticky_key"]) == 32


def trace_kept_escaped(record: dict[str, Any]) -> None:
    # Dropped (malformed traceparent) or kept with the invalid byte escaped: one line either way.
    assert record["trace_id"] in (None, "ab" * 15 + "a\\xff")


def anything(record: dict[str, Any]) -> None:
    pass


def override_refused(record: dict[str, Any]) -> None:
    assert record["version"] is None and "not allowed" in record["error"]


# id, prediction_log settings, path, body, extra header bytes, expected status, record check
HOSTILE = [
    ("v2_deep_parameters_with_newline", {}, "/v2/models/fraud/infer",
     v2_body(DEEP_PARAMETERS), b"", 200, input_unencodable(v2_body(DEEP_PARAMETERS))),
    ("v2_deep_parameters_redacted", {"redact": ["ssn"]}, "/v2/models/fraud/infer",
     v2_body(DEEP_PARAMETERS.replace(b"\n", b" ")), b"", 200,
     input_unencodable(v2_body(DEEP_PARAMETERS.replace(b"\n", b" ")))),
    ("json_1000_deep_redacted", {"redact": ["ssn"]}, "/json/infer",
     deep_dict(1000), b"", 200, input_unencodable(deep_dict(1000))),
    ("v2_990_deep_data", {}, "/v2/models/fraud/infer", v2_body(inputs=DEEP_DATA), b"", 422,
     deep_data_rejected),
    ("request_id_invalid_byte", {}, "/v2/models/fraud/infer", v2_body(),
     b"x-request-id: r-\xff-1\r\n", 200, anything),
    ("traceparent_invalid_byte", {}, "/v2/models/fraud/infer", v2_body(),
     b"traceparent: 00-" + b"ab" * 15 + b"a\xff-" + b"cd" * 8 + b"-01\r\n", 200,
     trace_kept_escaped),
    ("sticky_header_invalid_byte", {}, "/v2/models/fraud/infer", v2_body(),
     b"x-user-id: al\xffce\r\n", 200, sticky_hashed),
    ("override_invalid_byte", {}, "/v2/models/fraud/infer", v2_body(),
     b"x-model-override: v\xff\r\n", 400, override_refused),
]


@pytest.fixture
async def start_hostile(tmp_path: Path, upstreams, start_router):
    """A validated V2 route (sticky header, override) and a json route; log settings vary."""
    base = await upstreams.start(scorer(0.25))

    async def start(log: dict[str, Any]):
        routes = [route({"v1": base + "/m", "v2": base + "/m"},
                        input_schema="fraud-features@1", validation="enforce",
                        sticky={"header": "x-user-id"},
                        override={"header": "x-model-override", "allow": ["v2"]}),
                  route({"v1": base + "/m"}, name="json", match={"path_prefix": "/json"},
                        protocol="json", model=None)]
        return await start_router(write_config(tmp_path, routes,
                                               prediction_log={"dir": "logs", **log}))
    return start


@pytest.mark.parametrize("log,path,body,headers,status,check",
                         [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
async def test_hostile_request_is_answered_and_recorded(
        tmp_path: Path, start_hostile, log: dict[str, Any], path: str, body: bytes,
        headers: bytes, status: int, check: Callable[[dict[str, Any]], None]) -> None:
    app = await start_hostile(log)
    got, answer_headers, answer = await exchange(app.port, post(path, body, headers))
    assert got == status, answer[:300]
    assert b"Traceback" not in answer
    await app.predlog.flush()
    [record] = [r for r in iter_records(tmp_path / "logs") if r["role"] == "primary"]
    # The id the answer gave is the id an auditor types to find the record.
    assert record["request_id"] == valid_text(answer_headers["x-request-id"])
    assert record["status"] == status
    check(record)


async def test_feedback_with_a_deep_outcome_is_recorded(tmp_path: Path, start_hostile) -> None:
    app = await start_hostile({})
    body = b'{"request_id": "r-1", "outcome": {"ok": true, "detail": ' + deep_dict(300) + b"}}"
    got, _, answer = await exchange(app.port, post("/-/feedback", body))
    assert got == 202, answer[:300]
    await app.predlog.flush()
    [record] = iter_records(tmp_path / "logs")
    assert record["role"] == "feedback" and record["request_id"] == "r-1"
    assert record["outcome"]["ok"] is True  # what can be written is kept
    assert record["outcome"]["detail"]["_unencodable"] is True


async def test_shadow_of_a_deep_answer_is_recorded(tmp_path: Path, upstreams,
                                                   start_router, client) -> None:
    deep = b'{"outputs": [{"name": "score", "shape": [1], "data": ' + nested(990, b"0.5") \
        + b"}]}"

    seen: list[str] = []

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        seen.append(request.headers.get("x-shadow", "primary"))
        return web.Response(body=deep, content_type="application/json")

    up = web.Application()
    up.router.add_post("/m/infer", infer)
    base = await upstreams.start(up)
    cfg = route({"v1": base + "/m", "v2": base + "/m"},
                shadow=[{"version": "v2", "percent": 100}])
    app = await start_router(write_config(tmp_path, [cfg]))
    async with client.post(url(app, "/v2/models/fraud/infer"), data=v2_body()) as resp:
        assert resp.status == 200
    await wait_for(lambda: len(seen) == 2 and not app.shadows.tasks)  # the copy is done
    await app.predlog.flush()
    records = {r["role"]: r for r in iter_records(tmp_path / "logs")}
    assert records.keys() == {"primary", "shadow"}
    assert records["shadow"]["error"] is None
    assert records["shadow"]["compare"]["agreement"] is None  # not comparable, not a crash


# -- the record encoder on its own: whatever the proxy lets through, the line is written ----------

SECRET = b"k" * 32
DEEP_ANSWER = b'{"outputs": [{"name": "s",\n"data": ' + nested(300, b"0.5") + b"}]}"


def entry(**changes: Any) -> Entry:
    fields: dict[str, Any] = dict(
        ts=1.0, request_id="r-1", route=None, revision="abc", role="primary", version="v1",
        reason="split", upstream="http://127.0.0.1:1/m", status=200, latency_ms=1.0,
        sticky_key=None, request_body=b"{}", response_body=b"{}", valid_json=True)
    return Entry(**{**fields, **changes})


# id, Entry fields, what the record holds
RECORD_FIELDS = [
    ("request_id_invalid_byte", {"request_id": "r-\udcff-1"},
     lambda r: r["request_id"] == "r-\\xff-1"),
    ("trace_id_invalid_byte", {"trace_id": "ab" * 15 + "a\udcff"},
     lambda r: r["trace_id"] == "ab" * 15 + "a\\xff"),
    ("sticky_key_hashed_as_sent", {"sticky_key": "al\udcffce"},
     lambda r: r["sticky_key"] == hashlib.blake2b(b"al\xffce", key=SECRET,
                                                   digest_size=16).hexdigest()),
    ("error_lone_surrogate", {"error": "override '\ud800'"},
     lambda r: r["error"] == "override '\\ud800'"),
    ("input_deep_with_newline", {"request_body": v2_body(DEEP_PARAMETERS)},
     lambda r: r["input"] == unencodable(v2_body(DEEP_PARAMETERS))),
    ("output_deep_with_newline", {"response_body": DEEP_ANSWER},
     lambda r: r["output"] == unencodable(DEEP_ANSWER)),
    ("outcome_deep", {"outcome": {"ok": True, "detail": orjson.loads(deep_dict(300))}},
     lambda r: r["outcome"] == {"ok": True, "detail": {"_unencodable": True}}),
    ("outcome_int_past_64_bits", {"outcome": {"n": 2 ** 70}},
     lambda r: r["outcome"] == {"n": str(2 ** 70)}),
]


@pytest.mark.parametrize("changes,holds", [f[1:] for f in RECORD_FIELDS],
                         ids=[f[0] for f in RECORD_FIELDS])
async def test_unencodable_fields_keep_the_line(tmp_path: Path, changes: dict[str, Any],
                                                holds: Callable[[dict[str, Any]], bool]) -> None:
    lines: list[bytes] = []
    plog = PredictionLog(PredictionLogSettings(dir=tmp_path), SECRET, sink=lines.append)
    assert plog.add(entry(**changes), reserved=False)
    await plog.flush()
    [line] = b"".join(lines).splitlines()
    record = orjson.loads(line)
    assert record["status"] == 200 and record["version"] == "v1"  # the rest as it was
    assert holds(record), record


def test_sticky_bucket_of_invalid_bytes_hashes_them_as_sent() -> None:
    digest = hashlib.blake2b(b"salt:al\xffce", digest_size=8).digest()
    assert sticky_bucket("salt", "al\udcffce") == int.from_bytes(digest, "big") % 10_000
    assert sticky_bucket("salt", "alice") == int.from_bytes(
        hashlib.blake2b(b"salt:alice", digest_size=8).digest(), "big") % 10_000


def test_invalid_override_is_a_400_that_can_be_written(tmp_path: Path) -> None:
    compiled = load_snapshot(write_config(tmp_path, [route(
        {"v1": "http://127.0.0.1:1/m", "v2": "http://127.0.0.1:1/m"},
        override={"header": "x-model-override", "allow": ["v2"]})])).routes[0]
    with pytest.raises(BadOverride) as err:
        decide(compiled, "/infer", override="v\udcff\x1b[2J", sticky_key=None, rand=0.0)
    assert "override 'v\\udcff\\x1b[2J' is not" in err.value.message  # quoted, not echoed
    orjson.dumps(err.value.message)


# -- the flatteners off the response path: deep input is skipped, never raised -------------------

SCHEMA = Schema("f@1", (Field("amount", "float", min=0),))
DEEP_LIST = orjson.loads(nested(990, b"1"))
DEEP_DOC = {"inputs": [{"name": "amount", "datatype": "FP64", "shape": [1], "data": DEEP_LIST}]}

FLATTENERS = [
    ("validation_v2", lambda: Validator(SCHEMA, "v2").validate(DEEP_DOC),
     lambda out: [(v["field"], v["kind"]) for v in out] == [("amount", "shape")]),
    ("validation_v2_matrix", lambda: Validator(SCHEMA, "v2").validate(
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 1], "data": DEEP_LIST}]}),
     lambda out: [v["kind"] for v in out] == ["shape"]),
    ("drift_inputs", lambda: input_columns(DEEP_DOC, "v2"), lambda out: out == {}),
    ("drift_json_columns", lambda: input_columns({"inputs": {"amount": DEEP_LIST}}, "json"),
     lambda out: out == {}),
    ("drift_outputs", lambda: output_columns({"outputs": [{"name": "s", "data": DEEP_LIST}]}),
     lambda out: out == {}),
    ("shadow_rows", lambda: prediction_rows({"predictions": DEEP_LIST}),
     lambda out: out is None),
    ("shadow_compare", lambda: compare({"predictions": DEEP_LIST}, v2_answer([0.5]), "v1",
                                       1e-6, 1e-4),
     lambda out: out["match"] is False and out["agreement"] is None),
]


@pytest.mark.parametrize("call,expected", [f[1:] for f in FLATTENERS],
                         ids=[f[0] for f in FLATTENERS])
def test_deep_nesting_is_skipped_not_raised(call: Callable[[], Any],
                                            expected: Callable[[Any], bool]) -> None:
    assert expected(call())


# -- reports ---------------------------------------------------------------------------------------

VERSUS = {"diff_vs_control", "diff_ci95", "p_value"}
# id, treatment (v2) values, control (v1) values, the statistics of v2 that overflow
EXTREME = [
    ("welch_df_overflow", [1e150, -1e150], [1e150, -1e150], {"diff_ci95", "p_value"}),
    ("variance_overflow", [1e200, -1e200], [1.0, 2.0], {"ci95", "diff_ci95", "p_value"}),
    ("mean_overflow", [1e308, 1e308], [1.0, 2.0], {"mean", "ci95"} | VERSUS),
]


def numbers(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return [value] if isinstance(value, float) else []


@pytest.mark.parametrize("treatment,control,undefined", [e[1:] for e in EXTREME],
                         ids=[e[0] for e in EXTREME])
async def test_report_survives_extreme_outcomes(tmp_path: Path, upstreams, start_router,
                                                client, treatment: list[float],
                                                control: list[float],
                                                undefined: set[str]) -> None:
    base = await upstreams.start(scorer(0.25))
    app = await start_router(write_config(tmp_path, [route({"v1": base + "/m",
                                                            "v2": base + "/m"})]))
    for version, values in (("v2", treatment), ("v1", control)):
        for i, value in enumerate(values):
            rid = f"{version}-{i}"
            async with client.post(url(app, f"/v2/models/fraud/versions/{version}/infer"),
                                   data=v2_body(), headers={"x-request-id": rid}) as resp:
                assert resp.status == 200
            async with client.post(url(app, "/-/feedback"), data=orjson.dumps(
                    {"request_id": rid, "outcome": {"basket": value}})) as resp:
                assert resp.status == 202
    await app.predlog.flush()
    report = build_report(tmp_path / "logs", tmp_path / "state")
    basket = report["routes"]["fraud"]["versions"]["v2"]["outcomes"]["basket"]
    assert basket["n"] == 2
    assert basket["undefined"].keys() == undefined, basket  # each with its reason
    assert all("overflow" in reason for reason in basket["undefined"].values())
    assert all(basket[name] is None for name in undefined)
    assert all(basket[name] is not None for name in ({"mean", "ci95"} | VERSUS) - undefined)
    assert all(abs(n) != float("inf") and n == n for n in numbers(report))
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN, no Infinity
    assert "basket" in render_table(report)


# -- file modes ------------------------------------------------------------------------------------

async def test_log_files_are_0640_in_a_0750_directory(tmp_path: Path, upstreams, start_router,
                                                      client) -> None:
    base = await upstreams.start(scorer(0.25))
    old = os.umask(0)  # the most permissive umask: modes come from the router alone
    try:
        app = await start_router(write_config(tmp_path, [route({"v1": base + "/m"})]))
        async with client.post(url(app, "/v2/models/fraud/infer"), data=v2_body()) as resp:
            assert resp.status == 200
        await app.predlog.flush()
    finally:
        os.umask(old)
    logs = tmp_path / "logs"
    [log_file] = logs.iterdir()
    assert stat.S_IMODE(logs.stat().st_mode) == 0o750
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "state" / "log.key").stat().st_mode) == 0o600


async def test_a_1024_deep_answer_leaves_a_record_readers_can_parse(tmp_path: Path, upstreams,
                                                                      start_router,
                                                                      client) -> None:
    """orjson reads 1024 levels; a 1024-deep body embedded as it is made the record line
    1025 deep, which no orjson reader could parse back."""
    from aiohttp import web

    deep = b"[" * 1024 + b"]" * 1024

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/json")

    up = web.Application()
    up.router.add_post("/m", echo)
    base = await upstreams.start(up)
    app = await start_router(write_config(tmp_path, [
        {"name": "j", "match": {"path_prefix": "/j"}, "protocol": "json",
         "versions": {"v1": {"url": base + "/m"}}, "split": {"v1": 100}}]))
    async with client.post(f"http://127.0.0.1:{app.port}/j", data=deep,
                           headers={"x-request-id": "deep-1024"}) as resp:
        assert resp.status == 200
    await app.predlog.flush()
    lines = [line for path in (tmp_path / "logs").glob("*.jsonl")
             for line in path.read_bytes().splitlines()]
    records = [orjson.loads(line) for line in lines]  # every line parses
    assert [r["request_id"] for r in records] == ["deep-1024"]
