"""Fleet-wide reading: ``audit``, ``report`` and ``history`` over the shipped store (the
``router.logstore`` layout, written here with pyarrow as the shipper writes it) and the local
segments not shipped yet; a ``file://`` store and a real S3 endpoint (moto's server on
127.0.0.1)."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import base_route, free_port, write_config

from router import logstore
from router.analysis.audit import LogQuery
from router.analysis.report import build_report
from router.analysis.shipped import Shipped, hour_bounds, in_window
from router.cli import main

ARROW = {"VARCHAR": pa.string(), "INTEGER": pa.int32(), "DOUBLE": pa.float64()}
SCHEMA = pa.schema([(name, ARROW[kind]) for name, kind in logstore.COLUMNS.items()])
REVISION = "0123456789ab"
ROUTER_YAML = (b"registry: registry.yaml\nroutes:\n  - name: fraud\n"
               b"    split: {v2: 50, v1: 50}\n")
REGISTRY_YAML = (b"models:\n  fraud:\n    versions:\n      v2:\n"
                 b"        training_data: s3://d/v2-from-the-store.parquet\n")


def record(request_id: str, ts: str, version: str = "v1", role: str = "primary",
           **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": ts, "request_id": request_id, "route": "fraud", "model": "fraud",
        "version": version, "role": role, "reason": "split", "upstream": "http://m",
        "status": 200, "latency_ms": 3.0, "config_revision": REVISION, "input": {"x": 1},
        "output": {"score": 0.5}, "violations": []}
    out.update(fields)
    return out


def segment(log_dir: Path, name: str, records: list[dict[str, Any]],
            shipped: bool = False) -> Path:
    """A local segment; ``shipped``: with its ``.shipped`` marker."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / name
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    if shipped:
        logstore.marker(path).write_bytes(orjson.dumps({"objects": []}))
    return path


class Store:
    """Writes a shipped store as the contract says: one zstd Parquet object per segment and
    hour at ``object_path``, columns ``COLUMNS`` in order, JSON fields as text."""

    def __init__(self, to: str, storage_options: dict[str, Any] | None = None) -> None:
        self.to = to.rstrip("/")
        self.options = storage_options or {}
        self.fs, self.root = fsspec.core.url_to_fs(self.to, skip_instance_cache=True,
                                                   **self.options)

    def _put(self, url: str, data: bytes) -> None:
        path = self.fs._strip_protocol(url)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(path, data)

    def ship(self, replica: str, segment_name: str, records: list[dict[str, Any]],
             ) -> list[str]:
        found = logstore.segment_sequence(Path(segment_name))
        assert found is not None
        start, sequence = found
        hours: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in records:
            hours[logstore.partition(r["ts"])].append(r)
        urls = []
        for (date, hour), rows in hours.items():
            columns = {name: [_cell(r.get(name), name) for r in rows]
                       for name in logstore.COLUMNS}
            buffer = io.BytesIO()
            pq.write_table(pa.table(columns, schema=SCHEMA), buffer, compression="zstd")
            url = logstore.object_path(self.to, date, hour,
                                       logstore.object_name(replica, start, sequence))
            self._put(url, buffer.getvalue())
            urls.append(url)
        return urls

    def corrupt(self, date: str, hour: str) -> None:
        """A file that is not Parquet where a reader of that partition would open it."""
        self._put(logstore.object_path(self.to, date, hour, "garbage-1-1.parquet"),
                  b"not parquet at all")

    def revision(self, revision: str, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            self._put(f"{self.to}/revisions/{revision}/{name}", data)

    def history(self, replica: str, events: list[dict[str, Any]]) -> None:
        self._put(f"{self.to}/history/{replica}.jsonl",
                  b"".join(orjson.dumps(e) + b"\n" for e in events))


def _cell(value: Any, name: str) -> Any:
    if name in logstore.JSON_COLUMNS:
        return None if value is None else orjson.dumps(value).decode()
    return value


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"file://{tmp_path / 'store'}")


# -- pruning, pure ------------------------------------------------------------------------------

@pytest.mark.parametrize(("since", "until", "key", "inside"), [
    ("2026-11-26T11:30:00", "2026-11-26T12:30:00", "2026-11-26T11", True),
    ("2026-11-26T11:30:00", "2026-11-26T12:30:00", "2026-11-26T12", True),
    ("2026-11-26T11:30:00", "2026-11-26T12:30:00", "2026-11-26T10", False),
    ("2026-11-26T11:30:00", "2026-11-26T12:30:00", "2026-11-26T13", False),
    ("2026-11-26T11:30:00", "2026-11-26T13:00:00", "2026-11-26T13", False),
    ("2026-11-25T23:59:00", "2026-11-26T00:01:00", "2026-11-25", True),
    ("2026-11-25T23:59:00", "2026-11-26T00:01:00", "2026-11-24", False),
    ("2026-11-25T23:59:00", None, "2027-01-01T00", True),
    (None, "2026-11-25T23:59:00", "2026-11-26", False),
], ids=["first-hour", "last-hour", "before", "after", "until-on-the-hour", "day-over-midnight",
        "day-before", "open-end", "day-after-until"])
def test_which_partitions_can_hold_a_window(since: str | None, until: str | None, key: str,
                                            inside: bool) -> None:
    low, high = hour_bounds(utc(since) if since else None, utc(until) if until else None)
    assert in_window(key, low, high) is inside


# -- file:// store -------------------------------------------------------------------------------

def test_audit_finds_a_request_whichever_replica_served_it(tmp_path: Path,
                                                           store: Store) -> None:
    # replica a is gone: only its objects remain; b is gone too; this host's log has the
    # feedback of b's request in its open segment.
    store.ship("replica-a", "predictions-20261126T110000-7.jsonl",
               [record("a-1", "2026-11-26T11:00:01.000Z"),
                record("a-2", "2026-11-26T11:59:59.000Z", version="v2")])
    store.ship("replica-b", "predictions-20261126T115900-8-1.jsonl",
               [record("b-1", "2026-11-26T11:59:00.000Z", version="v2"),
                record("b-1", "2026-11-26T12:00:00.500Z", version="v1", role="shadow",
                       reason="shadow", compare={"against": "v2", "agreement": 1.0})])
    logs = tmp_path / "logs"
    segment(logs, "predictions-20261126T120000-9.jsonl",
            [record("b-1", "2026-11-26T12:05:00.000Z", version=None, role="feedback",
                    outcome={"converted": True})])
    query = LogQuery(logs, store=store.to)
    assert len(query.objects) == 3  # a: hour 11; b: hours 11 and 12
    found = query.by_request("b-1")
    assert [(r["role"], r["version"]) for r in found] == \
        [("primary", "v2"), ("shadow", "v1"), ("feedback", None)]
    assert found[1]["compare"] == {"against": "v2", "agreement": 1.0}
    assert found[2]["outcome"] == {"converted": True}
    assert found[0]["input"] == {"x": 1} and found[0]["violations"] == []
    assert set(found[0]) == set(logstore.COLUMNS)  # no date/hour columns
    assert [r["request_id"] for r in query.filter(role="primary")] == ["a-1", "b-1", "a-2"]
    assert query.by_request("a-2")[0]["version"] == "v2"


def test_a_shipped_segment_is_not_counted_twice(tmp_path: Path, store: Store) -> None:
    records = [record(f"r-{i}", f"2026-11-26T10:00:0{i}.000Z") for i in range(5)]
    logs = tmp_path / "logs"
    name = "predictions-20261126T100000-3.jsonl"
    store.ship("replica-a", name, records)
    path = segment(logs, name, records, shipped=True)
    segment(logs, "predictions-20261126T100500-3-1.jsonl",
            [record("open-1", "2026-11-26T10:05:00.000Z")])  # the open one: not shipped
    count = "SELECT count(*) AS n FROM records"
    assert LogQuery(logs, store=store.to).rows(count) == [{"n": 6}]
    logstore.marker(path).unlink()  # uploaded, not marked (a crash in between)
    assert LogQuery(logs).rows(count) == [{"n": 6}]
    # its objects carry its name: read once, from the local file
    assert LogQuery(logs, store=store.to).rows(count) == [{"n": 6}]


def test_a_segment_shipped_while_the_store_is_listed_is_read_once(
        tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    records = [record(f"r-{i}", f"2026-11-26T10:00:0{i}.000Z") for i in range(3)]
    logs = tmp_path / "logs"
    path = segment(logs, "predictions-20261126T100000-3.jsonl", records)
    listing = Shipped.objects

    def shipper_races(self: Shipped, *window: Any) -> list[str]:
        if not logstore.marker(path).exists():  # uploaded before the listing, marked after
            store.ship("replica-a", path.name, records)
            found = listing(self, *window)
            logstore.marker(path).write_bytes(b"{}")
            return found
        return listing(self, *window)

    monkeypatch.setattr(Shipped, "objects", shipper_races)
    query = LogQuery(logs, store=store.to)
    assert query.rows("SELECT count(*) AS n FROM records") == [{"n": 3}]
    assert query.local_files == 0


def test_an_empty_or_missing_store_reads_the_local_log(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    segment(logs, "predictions-20261126T100000-3.jsonl",
            [record("local-1", "2026-11-26T10:00:00.000Z")])
    (tmp_path / "empty").mkdir()
    for to in (f"file://{tmp_path / 'empty'}", f"file://{tmp_path / 'not-yet'}"):
        query = LogQuery(logs, store=to, since=utc("2026-11-26T00:00:00"))
        assert query.objects == []
        assert [r["request_id"] for r in query.filter()] == ["local-1"]
    nothing = LogQuery(tmp_path / "no-logs", store=f"file://{tmp_path / 'empty'}")
    assert nothing.filter() == []


def test_a_window_reads_only_its_partitions(tmp_path: Path, store: Store) -> None:
    for day, hour in (("25", "23"), ("26", "10"), ("26", "11"), ("26", "12"), ("26", "13")):
        store.ship("replica-a", f"predictions-202611{day}T{hour}0000-1.jsonl",
                   [record(f"{day}-{hour}-{m}", f"2026-11-{day}T{hour}:{m:02d}:00.000Z")
                    for m in (0, 30, 59)])
    store.corrupt("2026-11-26", "13")  # opened by any read of hour 13
    store.corrupt("2026-11-25", "23")
    logs = tmp_path / "logs"
    assert len(Shipped(store.to).objects()) == 7
    with pytest.raises(duckdb.Error, match="garbage"):  # read when not pruned
        LogQuery(logs, store=store.to).filter()

    since, until = utc("2026-11-26T11:30:00"), utc("2026-11-26T13:00:00")
    query = LogQuery(logs, store=store.to, since=since, until=until)
    assert [Path(p).parent.name for p in query.objects] == ["hour=11", "hour=12"]
    assert "2 objects" in repr(query)
    rows = query.filter(since=since, until=until)
    assert [r["request_id"] for r in rows] == ["26-11-30", "26-11-59", "26-12-0", "26-12-30",
                                                "26-12-59"]
    assert query.rows("SELECT count(*) AS n FROM records") == [{"n": 6}]  # hour 11 and 12


def test_report_per_version_over_store_and_local(tmp_path: Path, store: Store) -> None:
    store.ship("replica-a", "predictions-20261126T100000-1.jsonl",
               [record(f"a{i}", f"2026-11-26T10:{i:02d}:00.000Z", "v1", latency_ms=1.0)
                for i in range(30)])
    store.ship("replica-b", "predictions-20261126T100000-2.jsonl",
               [record(f"b{i}", f"2026-11-26T10:{i:02d}:00.000Z", "v2", status=500 if i < 2
                       else 200) for i in range(20)])
    store.ship("replica-b", "predictions-20261125T100000-2.jsonl",  # before --since
               [record("old", "2026-11-25T10:00:00.000Z", "v2")])
    store.revision(REVISION, {"router.yaml": ROUTER_YAML})  # gone from every state_dir
    logs = tmp_path / "logs"
    segment(logs, "predictions-20261126T103000-5.jsonl",
            [record(f"l{i}", f"2026-11-26T10:30:0{i}.000Z", "v2") for i in range(5)])
    since = utc("2026-11-26T00:00:00")
    query = LogQuery(logs, store=store.to, since=since)
    assert len(query.objects) == 2
    report = build_report(logs, tmp_path / "state", since=since, query=query)
    route = report["routes"]["fraud"]
    assert route["control"] == "v2"  # the store's revision lists v2 first
    assert route["versions"]["v1"]["requests"] == 30
    assert route["versions"]["v2"]["requests"] == 25
    assert route["versions"]["v2"]["errors"] == 2
    assert build_report(logs, tmp_path / "state")["routes"]["fraud"]["control"] is None


# -- the command line ----------------------------------------------------------------------------

def _fleet_log(tmp_path: Path, store: Store) -> Path:
    """A config whose own log dir and state_dir are empty: everything is in the store."""
    store.ship("replica-a", "predictions-20261126T100000-1.jsonl",
               [record("gone-1", "2026-11-26T10:00:00.000Z", "v2"),
                record("gone-2", "2026-11-26T11:00:00.000Z", "v1")])
    store.revision(REVISION, {"router.yaml": ROUTER_YAML, "registry.yaml": REGISTRY_YAML})
    return write_config(tmp_path / "cfg", [base_route()])


def test_cli_audit_with_log_store(tmp_path: Path, store: Store,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = _fleet_log(tmp_path, store)
    assert main(["audit", "-c", str(path), "gone-1", "--json"]) == 1  # no store known
    assert "no prediction log directory" in capsys.readouterr().err
    assert main(["audit", "-c", str(path), "--log-store", store.to, "gone-1", "--json"]) == 0
    answer = orjson.loads(capsys.readouterr().out)
    assert [r["request_id"] for r in answer["records"]] == ["gone-1"]
    context = answer["context"]
    assert context["problem"] is None
    assert context["config_dir"] == f"{store.to}/revisions/{REVISION}"
    assert context["registry_entry"] == {"training_data": "s3://d/v2-from-the-store.parquet"}
    assert context["route"]["split"] == {"v2": 50, "v1": 50}
    assert main(["audit", "-c", str(path), "--log-store", store.to, "nobody"]) == 1
    assert store.to in capsys.readouterr().err


def test_cli_reads_the_store_the_config_ships_to(tmp_path: Path, store: Store,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _fleet_log(tmp_path, store)
    monkeypatch.setenv("AUDIT_STORE", store.to)
    path = write_config(tmp_path / "cfg", [base_route()],
                        prediction_log={"dir": "logs", "ship": {"to": "${AUDIT_STORE}"}})
    assert main(["audit", "-c", str(path), "gone-2", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["records"][0]["version"] == "v1"

    assert main(["report", "-c", str(path), "--json"]) == 0
    versions = orjson.loads(capsys.readouterr().out)["routes"]["fraud"]["versions"]
    assert {v: d["requests"] for v, d in versions.items()} == {"v1": 1, "v2": 1}
    store.corrupt("2026-11-25", "23")  # before --since: a report that read it would fail
    html = tmp_path / "report.html"
    assert main(["report", "-c", str(path), "--since", "2026-11-26T10:30:00", "--json",
                 "--html", str(html)]) == 0
    versions = orjson.loads(capsys.readouterr().out)["routes"]["fraud"]["versions"]
    assert {v: d["requests"] for v, d in versions.items()} == {"v1": 1}
    assert "<title>v1</title>" in html.read_text()
    assert "<title>v2</title>" not in html.read_text()


def test_cli_history_merges_the_shipped_histories(tmp_path: Path, store: Store,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "cfg", [base_route()],
                        prediction_log={"dir": "logs", "ship": {"to": store.to}})
    applied = {"ts": "2026-11-26T10:00:00.000Z", "event": "applied", "revision": "aaa",
               "source": "file", "routes": {"fraud": {"weights": {"v1": 95, "v2": 5}}},
               "errors": []}
    local = {**applied, "ts": "2026-11-26T12:00:00.000Z", "revision": "ccc"}
    state = tmp_path / "cfg" / "state"
    state.mkdir()
    (state / "history.jsonl").write_bytes(orjson.dumps(applied) + b"\n" +
                                          orjson.dumps(local) + b"\n")
    gone = {**applied, "ts": "2026-11-26T11:00:00.000Z", "revision": "bbb",
            "routes": {"fraud": {"weights": {"v1": 50, "v2": 50}}}}
    store.history("replica-b", [applied, gone])  # its copy of the first apply is the same
    assert main(["history", "-c", str(path), "--json"]) == 0
    events = orjson.loads(capsys.readouterr().out)
    assert [e["revision"] for e in events] == ["aaa", "bbb", "ccc"]
    assert main(["history", "-c", str(path), "--at", "2026-11-26T11:30:00", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["revision"] == "bbb"


# -- S3: moto's server on 127.0.0.1 --------------------------------------------------------------

@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "test", "secret": "test"}
    fsspec.filesystem("s3", skip_instance_cache=True, **options).mkdir("audit")
    try:
        yield options
    finally:
        server.stop()


@pytest.mark.loopback
@pytest.mark.slow
def test_s3_store(tmp_path: Path, s3: dict[str, Any]) -> None:
    logs = tmp_path / "logs"
    segment(logs, "predictions-20261126T120000-9.jsonl",
            [record("s3-1", "2026-11-26T12:01:00.000Z", role="feedback", version=None,
                    outcome={"converted": False})])
    empty = LogQuery(logs, store="s3://audit/nothing-yet", storage_options=s3)
    assert [r["request_id"] for r in empty.filter()] == ["s3-1"]

    store = Store("s3://audit/model-router", s3)
    store.ship("replica-a", "predictions-20261126T110000-7.jsonl",
               [record("s3-1", "2026-11-26T11:59:00.000Z", version="v2")])
    store.ship("replica-a", "predictions-20261126T100000-7.jsonl",
               [record("s3-0", "2026-11-26T10:00:00.000Z")])
    store.corrupt("2026-11-26", "10")
    query = LogQuery(logs, store=store.to, storage_options=s3,
                     since=utc("2026-11-26T11:00:00"))
    assert query.objects == [
        "s3://audit/model-router/date=2026-11-26/hour=11/replica-a-20261126T110000-7-0.parquet"]
    assert [(r["role"], r["version"]) for r in query.by_request("s3-1")] == \
        [("primary", "v2"), ("feedback", None)]
    assert "httpfs" not in {name for (name,) in query.db.execute(
        "SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()}


@pytest.mark.loopback
@pytest.mark.slow
def test_cli_over_s3_from_the_config(tmp_path: Path, s3: dict[str, Any],
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    store = Store("s3://audit/cli", s3)
    _fleet_log(tmp_path, store)
    monkeypatch.setenv("S3_ENDPOINT", s3["endpoint_url"])
    path = write_config(tmp_path / "cfg", [base_route()], prediction_log={
        "dir": "logs", "ship": {"to": "s3://audit/cli/", "storage_options": {
            "endpoint_url": "${S3_ENDPOINT}", "key": "test", "secret": "test"}}})
    assert main(["audit", "-c", str(path), "gone-1", "--since", "2026-11-26T10:00:00",
                 "--until", "2026-11-26T10:59:00", "--json"]) == 0
    answer = orjson.loads(capsys.readouterr().out)
    assert answer["records"][0]["version"] == "v2"
    assert answer["context"]["registry_entry"]["training_data"] == \
        "s3://d/v2-from-the-store.parquet"
    # gone-2 is at 11:00, outside the window's partitions: not read, not found
    assert main(["audit", "-c", str(path), "gone-2", "--since", "2026-11-26T10:00:00",
                 "--until", "2026-11-26T10:59:00"]) == 1
    capsys.readouterr()
    assert main(["audit", "-c", str(path), "--log-store", "s3://audit/other", "gone-1"]) == 1


@pytest.mark.loopback
def test_an_unreachable_store_is_said_not_taken_for_empty(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "cfg", [base_route()], prediction_log={
        "dir": "logs", "ship": {"to": "s3://audit/x", "storage_options": {
            "endpoint_url": f"http://127.0.0.1:{free_port()}", "key": "k", "secret": "s",
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}}})
    assert main(["audit", "-c", str(path), "some-id"]) == 1
    assert "cannot list s3://audit/x" in capsys.readouterr().err


def test_the_ship_block_read_raw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from router.config.raw import ship_of

    monkeypatch.setenv("S3_ENDPOINT", "http://minio:9000")
    path = write_config(tmp_path, [base_route()], prediction_log={"ship": {
        "to": "file://shipped/", "storage_options": {"endpoint_url": "${S3_ENDPOINT}",
                                                      "nested": ["${S3_ENDPOINT}", 1]}}})
    assert ship_of(path) == (f"file://{(tmp_path / 'shipped').resolve()}", {
        "endpoint_url": "http://minio:9000", "nested": ["http://minio:9000", 1]})
    assert ship_of(write_config(tmp_path / "none", [base_route()])) is None
