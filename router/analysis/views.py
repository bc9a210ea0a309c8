"""The offline commands as a person reads them: ``audit``, ``report`` and ``baseline``.

Each function runs one command over the files a router.yaml names (its state_dir and
prediction log, read raw by ``config.raw``) and prints: text or ``--json`` on stdout,
problems on stderr. It returns the command's exit code: 0 ok, 1 invalid input, 2 usage. The
work itself is the analysis modules' (``audit``, ``report``, ``baseline``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from ..config.raw import config_paths, registry_of, ship_of
from ..console import print_json, print_table
from .audit import LogQuery, parse_time, revision_context
from .shipped import Shipped, StoreError

log = logging.getLogger("model_router.history")

AUDIT_COLUMNS = ["ts", "request_id", "route", "version", "role", "reason", "status",
                 "latency_ms"]


@dataclass(frozen=True, slots=True)
class LogInputs:
    """Where a log-reading command reads, and its time window."""

    state_dir: Path
    log_dir: Path
    since: datetime | None
    until: datetime | None
    store: str | None = None                   # the shipped store's URL
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def query(self) -> LogQuery:
        """The records of the store and the local files, the store pruned to the window."""
        return LogQuery(self.log_dir, store=self.store, storage_options=self.storage_options,
                        since=self.since, until=self.until)

    def where(self) -> str:
        return f"{self.log_dir}" + (f" or {self.store}" if self.store else "")


def log_store(config: str, given: str | None) -> tuple[str, dict[str, Any]] | None:
    """The shipped store a command reads: ``--log-store URL``, else the config's
    ``prediction_log.ship``. A given URL keeps the config's storage_options when it is on
    the same kind of filesystem (same scheme), so one endpoint and its keys serve both."""
    ship = ship_of(config)
    if not given:
        return ship
    url = given.rstrip("/")
    same = ship is not None and ship[0].split("://")[0] == url.split("://")[0]
    return url, dict(ship[1]) if same and ship is not None else {}


def log_inputs(config: str, log_dir: str | None, since: str | None = None,
               until: str | None = None, given_store: str | None = None,
               ) -> LogInputs | None:
    """The state_dir and log dir of ``config`` (``log_dir`` overrides the latter), its
    shipped store (``log_store``) and the parsed window; None, said on stderr, when there is
    neither a log dir nor a store, or a time is bad."""
    state_dir, default_logs = config_paths(config)
    logs = Path(log_dir) if log_dir else default_logs
    store = log_store(config, given_store)
    if not logs.is_dir() and store is None:
        print(f"no prediction log directory {logs}", file=sys.stderr)
        return None
    try:
        start = parse_time(since) if since else None
        end = parse_time(until) if until else None
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return None
    if store is None:
        return LogInputs(state_dir, logs, start, end)
    return LogInputs(state_dir, logs, start, end, store[0], store[1])


def audit(config: str, log_dir: str | None, request_id: str | None, *,
          route: str | None = None, version: str | None = None, role: str | None = None,
          status: int | str | None = None, since: str | None = None,
          until: str | None = None,
          limit: int, as_json: bool = False, log_store: str | None = None) -> int:
    """``model-router audit``: every record of one request with its context, or a filtered
    table of records; from the shipped store and the local files (a window prunes the
    store's partitions, for a request id too)."""
    inputs = log_inputs(config, log_dir, since, until, log_store)
    if inputs is None:
        return 1
    try:
        query = inputs.query()
        if request_id:
            return _audit_request(query, inputs, request_id, as_json)
    except StoreError as exc:
        print(exc, file=sys.stderr)
        return 1
    rows = query.filter(route=route, version=version, role=role, status=status,
                        since=inputs.since, until=inputs.until, limit=limit)
    if as_json:
        print_json(rows)
    else:
        print_table(rows, AUDIT_COLUMNS)
    return 0


def _audit_request(query: LogQuery, inputs: LogInputs, request_id: str, as_json: bool,
                   ) -> int:
    records = query.by_request(request_id)
    if not records:
        print(f"no record of request {request_id} in {inputs.where()}", file=sys.stderr)
        return 1
    primary = next((r for r in records if r["role"] == "primary"), records[0])
    context = revision_context(inputs.state_dir, primary.get("config_revision"),
                               primary.get("route"), primary.get("model"),
                               primary.get("version"), store=query.store)
    if as_json:
        print_json({"request_id": request_id, "records": records, "context": context})
        return 0
    print(f"request {request_id}")
    for r in records:
        print(f"- {r['role']:<8} {r['ts']}  route={r['route']} version={r['version']} "
              f"reason={r['reason']} status={r['status']} latency_ms={r['latency_ms']} "
              f"served_model_version={r['served_model_version']}")
        for key in ("fallback_from", "error", "compare", "outcome", "violations"):
            if r.get(key):
                print(f"    {key}: {_text(r[key])}")
    print(f"config revision {context['revision']} ({context.get('config_dir', '-')})")
    if context["problem"]:
        print(f"  {context['problem']}")
    entry = context["registry_entry"] or {}
    print(f"registry entry of {primary.get('model')}/{primary.get('version')}:")
    for key in ("training_data", "schema", "metrics", "created", "model_version", "tags"):
        print(f"  {key}: {_text(entry.get(key))}")
    if context["route"]:
        print(f"route as configured then: {_text(context['route'])}")
    return 0


def _text(value: Any) -> str:
    """A value as a person reads it: strings as they are, the rest as JSON (not repr)."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return orjson.dumps(value, default=str).decode()


def report(config: str, log_dir: str | None, *, route: str | None = None,
           since: str | None = None, html: str | None = None, as_json: bool = False,
           log_store: str | None = None, until: str | None = None) -> int:
    """``model-router report``: per version traffic, errors, latency and outcomes, over the
    shipped store (only the partitions from ``since`` on) and the local files."""
    from .report import build_report, render_html, render_table

    inputs = log_inputs(config, log_dir, since, until, given_store=log_store)
    if inputs is None:
        return 1
    try:
        query = inputs.query()
        built = build_report(inputs.log_dir, inputs.state_dir, route=route,
                             since=inputs.since, until=inputs.until, query=query)
    except StoreError as exc:
        print(exc, file=sys.stderr)
        return 1
    if html:
        Path(html).write_text(render_html(built, inputs.log_dir, since=inputs.since,
                                          until=inputs.until, query=query))
        print(f"wrote {html}", file=sys.stderr)
    if as_json:
        print_json(built)
    else:
        print(render_table(built))
    return 0


def history_events(state_dir: Path, store: str, storage_options: Mapping[str, Any],
                   ) -> list[dict[str, Any]]:
    """``model-router history`` with a shipped store: the local ``history.jsonl`` and every
    replica's shipped ``history/<replica>.jsonl`` as one list, identical lines once, sorted
    by ts (stable). A line that is not JSON is skipped with a warning. Raises
    ``StoreError`` when the store cannot be read."""
    local = state_dir / "history.jsonl"
    lines = local.read_bytes().splitlines() if local.is_file() else []
    lines += Shipped(store, storage_options).history_lines()
    events, seen = [], set()
    for line in lines:
        line = line.strip()
        if not line or line in seen:
            continue
        seen.add(line)
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.warning("history line is not JSON; skipped: %.80r", line)
            continue
        if isinstance(event, dict):
            events.append(event)
    return sorted(events, key=lambda e: str(e.get("ts", "")))


def baseline(config: str, from_file: str | None, schema_id: str | None, *,
             infer: bool = False, ranges: bool = True, out: str | None = None) -> int:
    """``model-router baseline --from FILE --schema ID``: a drift baseline of training rows,
    against the registry's schema or (``infer``) one inferred from the rows and printed,
    with the training min/max of each number unless ``ranges`` is False (the printed
    comment says what those extremes mean for validation)."""
    import yaml

    from ..config.problems import Problems
    from ..config.registry import parse_schema
    from .baseline import RANGES_NOTE, build_baseline, infer_schema, read_rows

    if not ranges and not infer:
        print("--no-ranges goes with --infer (a registry schema keeps its own min/max)",
              file=sys.stderr)
        return 2
    if not from_file or not schema_id:
        print("baseline needs --from FILE --schema ID (or --from-log DIR --route R "
              "--version V)", file=sys.stderr)
        return 2
    try:
        rows = read_rows(Path(from_file))
    except (OSError, ValueError) as exc:
        print(f"cannot read {from_file}: {exc}", file=sys.stderr)
        return 1
    if not rows:
        print(f"{from_file}: no rows", file=sys.stderr)
        return 1
    if infer:
        fields = infer_schema(rows, ranges=ranges)
        print(f"# paste under schemas: in registry.yaml ({len(rows)} rows of {from_file})")
        print("# " + ("no min/max (--no-ranges): numbers are checked for their type only"
                      if not ranges else RANGES_NOTE))
        print(yaml.safe_dump({"schemas": {schema_id: fields}}, sort_keys=False), end="")
        schema = parse_schema(Problems("inferred"), "", schema_id, fields)
        assert schema is not None  # infer_schema writes what parse_schema reads
    else:
        registry, errors = registry_of(config)
        if errors or registry is None:
            print("\n".join(errors), file=sys.stderr)
            return 1
        schema = registry.schemas.get(schema_id)
        if schema is None:
            print(f"schema {schema_id} is not in the registry of {config} "
                  "(use --infer to derive one from the data)", file=sys.stderr)
            return 1
    data = orjson.dumps(build_baseline(rows, schema), option=orjson.OPT_INDENT_2)
    out = out or (f"{schema_id.replace('@', '-')}.baseline.json" if infer else None)
    _write(data, out, f"baseline of {len(rows)} rows written to {out}")
    return 0


def output_baseline(from_log: str, route: str | None, version: str | None, *,
                    since: str | None = None, limit: int, out: str | None = None) -> int:
    """``model-router baseline --from-log DIR``: an output_baseline from the answers a
    version gave in a prediction-log window."""
    from .baseline import output_baseline as build_output_baseline

    if not (route and version):
        print("--from-log needs --route and --version", file=sys.stderr)
        return 2
    rows = LogQuery(Path(from_log)).filter(
        route=route, version=version, role="primary", status=200,
        since=parse_time(since) if since else None, limit=limit)
    outputs: list[Any] = [r["output"] for r in rows if isinstance(r.get("output"), (dict, list))]
    if not outputs:
        print("no logged outputs in that window (payloads must be full)", file=sys.stderr)
        return 1
    data = orjson.dumps(build_output_baseline(outputs, f"{route}/{version} outputs"),
                        option=orjson.OPT_INDENT_2)
    _write(data, out, f"output baseline of {len(outputs)} answers written to {out}")
    return 0


def _write(data: bytes, out: str | None, done: str) -> None:
    """``data`` to the file ``out`` (then ``done`` on stderr), or to stdout."""
    if out:
        Path(out).write_bytes(data + b"\n")
        sys.stdout.flush()  # an inferred schema printed first stays first
        print(done, file=sys.stderr)
    else:
        sys.stdout.write(data.decode() + "\n")
