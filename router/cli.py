"""``model-router`` command line: a thin layer over the package.

Exit codes: 0 ok, 1 invalid input or check failed (message on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .config import load_snapshot
from .errors import ConfigError

DEFAULT_CONFIG = "config/router.yaml"


def _check(args: argparse.Namespace) -> int:
    try:
        snapshot = load_snapshot(args.config, source="check")
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"{len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    for warning in snapshot.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"ok: {args.config} revision {snapshot.revision}")
    for route in snapshot.routes:
        for name in route.versions:
            entry = snapshot.registry.version(route.model, name) if route.model else None
            weight = route.weights()[name]
            print(f"  {route.name:<16} {name:<8} {weight:>6g}%  "
                  f"schema={entry.schema if entry else '-'}  "
                  f"training_data={entry.training_data if entry else '-'}")
    return 0


def _workers(text: str) -> int:
    if text == "auto":
        return os.cpu_count() or 1
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a number or 'auto'") from None
    if count < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return count


def _serve(args: argparse.Namespace) -> int:
    from .process.main import serve
    return serve(args.config, args.workers)


def _raw_config(config: str) -> dict[str, Any]:
    """A router.yaml as plain YAML (no validation, no env): what the offline commands need."""
    from .config import yaml12

    path = Path(config)
    doc = yaml12.loads(path.read_bytes()) if path.exists() else {}
    return doc if isinstance(doc, dict) else {}


def _config_paths(config: str) -> tuple[Path, Path]:
    """state_dir and prediction_log.dir named by a router.yaml, read without compiling it."""
    path = Path(config)
    doc = _raw_config(config)
    state = path.parent / str(doc.get("state_dir", "state"))
    predlog = doc.get("prediction_log") if isinstance(doc.get("prediction_log"), dict) else {}
    logs = path.parent / str(predlog.get("dir", "logs"))
    return state, logs


def _print_json(data: object) -> None:
    import orjson
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")


def _table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str("" if r.get(c) is None else r.get(c)).ljust(widths[c])
                        for c in columns))


def _log_inputs(args: argparse.Namespace) -> tuple[Path, Path, Any, Any] | None:
    """state_dir, log dir and the --since/--until times of a log-reading command."""
    from .analysis.audit import parse_time

    state_dir, default_logs = _config_paths(args.config)
    log_dir = Path(args.log_dir) if args.log_dir else default_logs
    if not log_dir.is_dir():
        print(f"no prediction log directory {log_dir}", file=sys.stderr)
        return None
    try:
        since = parse_time(args.since) if getattr(args, "since", None) else None
        until = parse_time(args.until) if getattr(args, "until", None) else None
    except ValueError as exc:
        print(f"bad time: {exc}", file=sys.stderr)
        return None
    return state_dir, log_dir, since, until


def _audit(args: argparse.Namespace) -> int:
    from .analysis.audit import LogQuery, revision_context

    inputs = _log_inputs(args)
    if inputs is None:
        return 1
    state_dir, log_dir, since, until = inputs
    query = LogQuery(log_dir)
    if args.request_id:
        records = query.by_request(args.request_id)
        if not records:
            print(f"no record of request {args.request_id} in {log_dir}", file=sys.stderr)
            return 1
        primary = next((r for r in records if r["role"] == "primary"), records[0])
        context = revision_context(state_dir, primary.get("config_revision"),
                                   primary.get("route"), primary.get("model"),
                                   primary.get("version"))
        if args.json:
            _print_json({"request_id": args.request_id, "records": records,
                         "context": context})
            return 0
        print(f"request {args.request_id}")
        for r in records:
            print(f"- {r['role']:<8} {r['ts']}  route={r['route']} version={r['version']} "
                  f"reason={r['reason']} status={r['status']} latency_ms={r['latency_ms']} "
                  f"served_model_version={r['served_model_version']}")
            for key in ("fallback_from", "error", "compare", "outcome", "violations"):
                if r.get(key):
                    print(f"    {key}: {r[key]}")
        print(f"config revision {context['revision']} ({context.get('config_dir', '-')})")
        if context["problem"]:
            print(f"  {context['problem']}")
        entry = context["registry_entry"] or {}
        print(f"registry entry of {primary.get('model')}/{primary.get('version')}:")
        for key in ("training_data", "schema", "metrics", "created", "model_version"):
            print(f"  {key}: {entry.get(key)}")
        if context["route"]:
            print(f"route as configured then: {context['route']}")
        return 0
    rows = query.filter(route=args.route, version=args.version, role=args.role,
                        status=args.status, since=since, until=until, limit=args.limit)
    if args.json:
        _print_json(rows)
    else:
        _table(rows, ["ts", "request_id", "route", "version", "role", "reason", "status",
                      "latency_ms"])
    return 0


def _history(args: argparse.Namespace) -> int:
    from .analysis.audit import parse_time
    from .control.history import History

    state_dir, _ = _config_paths(args.config)
    events = History(state_dir).read()
    if args.at:
        try:
            at = parse_time(args.at)
        except ValueError as exc:
            print(f"bad time: {exc}", file=sys.stderr)
            return 1
        from .control.history import describe_state, in_force
        from .timefmt import iso
        stamp = iso(at.timestamp())
        live = in_force(events, stamp)
        if live is None:
            print(f"no config was applied before {stamp}", file=sys.stderr)
            return 1
        if args.json:
            _print_json(live)
        else:
            print(f"at {stamp}: revision {live['revision']} (applied {live['ts']}, "
                  f"source {live['source']})")
            for name, state in live["routes"].items():
                print(f"  {name}: {describe_state(state)}")
        return 0
    if args.json:
        _print_json(events)
        return 0
    for e in events:
        detail = e.get("errors") if e.get("event") == "rejected" else e.get("routes")
        print(f"{e.get('ts')}  {e.get('event'):<9} {str(e.get('revision')):<12} "
              f"{e.get('source'):<8} {detail}")
    return 0


def _registry_of(config: str) -> tuple[object, list[str]]:
    """The registry named by a router.yaml, parsed on its own (no routes, no env needed)."""
    from .config import yaml12
    from .config.problems import Problems
    from .config.registry import parse_registry

    path = Path(config)
    name = _raw_config(config).get("registry", "registry.yaml")
    reg_path = path.parent / str(name)
    problems = Problems(reg_path.name)
    if not reg_path.exists():
        return None, [f"{reg_path}: not found"]
    registry = parse_registry(problems, yaml12.loads(reg_path.read_bytes()), reg_path.parent)
    return registry, problems.errors


def _baseline(args: argparse.Namespace) -> int:
    import orjson
    import yaml

    from .analysis.baseline import build_baseline, infer_schema, read_rows
    from .config.problems import Problems
    from .config.registry import parse_schema

    if args.from_log:
        return _output_baseline(args)
    if not args.from_file or not args.schema:
        print("baseline needs --from FILE --schema ID (or --from-log DIR --route R "
              "--version V)", file=sys.stderr)
        return 2
    try:
        rows = read_rows(Path(args.from_file))
    except (OSError, ValueError) as exc:
        print(f"cannot read {args.from_file}: {exc}", file=sys.stderr)
        return 1
    if not rows:
        print(f"{args.from_file}: no rows", file=sys.stderr)
        return 1
    if args.infer:
        fields = infer_schema(rows)
        print(f"# paste under schemas: in registry.yaml ({len(rows)} rows of {args.from_file})")
        print(yaml.safe_dump({"schemas": {args.schema: fields}}, sort_keys=False), end="")
        schema = parse_schema(Problems("inferred"), "", args.schema, fields)
    else:
        registry, errors = _registry_of(args.config)
        if errors or registry is None:
            print("\n".join(errors), file=sys.stderr)
            return 1
        schema = registry.schemas.get(args.schema)  # type: ignore[attr-defined]
        if schema is None:
            print(f"schema {args.schema} is not in the registry of {args.config} "
                  "(use --infer to derive one from the data)", file=sys.stderr)
            return 1
    baseline = orjson.dumps(build_baseline(rows, schema), option=orjson.OPT_INDENT_2)
    out = args.out or (f"{args.schema.replace('@', '-')}.baseline.json" if args.infer else None)
    if out:
        Path(out).write_bytes(baseline + b"\n")
        sys.stdout.flush()
        print(f"baseline of {len(rows)} rows written to {out}", file=sys.stderr)
    else:
        sys.stdout.write(baseline.decode() + "\n")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .analysis.report import build_report, render_html, render_table

    inputs = _log_inputs(args)
    if inputs is None:
        return 1
    state_dir, log_dir, since, _ = inputs
    report = build_report(log_dir, state_dir, route=args.route, since=since)
    if args.html:
        Path(args.html).write_text(render_html(report, log_dir))
        print(f"wrote {args.html}", file=sys.stderr)
    if args.json:
        _print_json(report)
    else:
        print(render_table(report))
    return 0


def _output_baseline(args: argparse.Namespace) -> int:
    """An output_baseline from the answers a version gave in a prediction-log window."""
    import orjson

    from .analysis.audit import LogQuery, parse_time
    from .analysis.baseline import output_baseline

    if not (args.route and args.version):
        print("--from-log needs --route and --version", file=sys.stderr)
        return 2
    rows = LogQuery(Path(args.from_log)).filter(
        route=args.route, version=args.version, role="primary", status=200,
        since=parse_time(args.since) if args.since else None, limit=args.limit)
    outputs = [r["output"] for r in rows if isinstance(r.get("output"), (dict, list))]
    if not outputs:
        print("no logged outputs in that window (payloads must be full)", file=sys.stderr)
        return 1
    baseline = orjson.dumps(output_baseline(outputs, f"{args.route}/{args.version} outputs"),
                            option=orjson.OPT_INDENT_2)
    if args.out:
        Path(args.out).write_bytes(baseline + b"\n")
        print(f"output baseline of {len(outputs)} answers written to {args.out}",
              file=sys.stderr)
    else:
        sys.stdout.write(baseline.decode() + "\n")
    return 0


def _rollout(args: argparse.Namespace) -> int:
    """Drive a progressive rollout through the admin API of a running router."""
    import urllib.error
    import urllib.request

    import orjson

    admin = _raw_config(args.config).get("admin") or {}
    base = args.admin or f"http://{admin.get('host', '127.0.0.1')}:{admin.get('port', 9090)}"
    headers = {}
    token_env = admin.get("token_env")
    if token_env and os.environ.get(token_env):
        headers["Authorization"] = f"Bearer {os.environ[token_env]}"
    if args.action == "status":
        request = urllib.request.Request(f"{base}/-/rollouts", headers=headers)
    else:
        if not args.route:
            print(f"rollout {args.action} needs a ROUTE", file=sys.stderr)
            return 2
        # JSON, as the admin API requires of every POST (a browser's form cannot send it).
        request = urllib.request.Request(f"{base}/-/rollouts/{args.route}/{args.action}",
                                         data=b"{}", method="POST",
                                         headers={**headers,
                                                  "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            body = orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        print(f"{exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot reach the admin API at {base}: {exc}", file=sys.stderr)
        return 1
    if args.action == "status":
        rows = [r for r in body if not args.route or r["route"] == args.route]
        if args.json:
            _print_json(rows)
            return 0
        if not rows:
            print("no rollouts")
        for r in rows:
            ev = r["evidence"]
            print(f"{r['route']}: {r['baseline']} -> {r['canary']} {r['status']} at "
                  f"{r['weight']:g}% (step {r['step'] + 1}/{len(r['steps'])}); canary "
                  f"{ev['canary']['requests']} requests, {ev['canary']['errors']} errors; "
                  f"baseline {ev['baseline']['requests']} requests, "
                  f"{ev['baseline']['errors']} errors")
        return 0
    _print_json(body)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo.run import demo
    return demo(args.dir, args.duration, story=not args.no_story)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model-router",
                                     description="Traffic router for ML model servers.")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the router")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    p.add_argument("--workers", type=_workers, default=1,
                   help="worker processes sharing the port (a number or 'auto')")
    p.set_defaults(func=_serve)

    p = sub.add_parser("check", help="validate config, registry and schema compatibility")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    p.set_defaults(func=_check)

    p = sub.add_parser("audit", help="records of a request, or filtered records")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    p.add_argument("--log-dir")
    p.add_argument("request_id", nargs="?")
    p.add_argument("--route")
    p.add_argument("--version")
    p.add_argument("--role", choices=["primary", "shadow", "feedback"])
    p.add_argument("--status", type=int)
    p.add_argument("--since")
    p.add_argument("--until")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_audit)

    p = sub.add_parser("history", help="deployment history; --at T: what was live at T")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    p.add_argument("--at")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_history)

    p = sub.add_parser("report", help="per version: traffic, errors, latency, outcomes")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    p.add_argument("--log-dir")
    p.add_argument("--route")
    p.add_argument("--since")
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", metavar="FILE")
    p.set_defaults(func=_report)

    p = sub.add_parser("baseline", help="write a drift baseline from training data")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    p.add_argument("--from", dest="from_file", help="CSV or JSONL rows")
    p.add_argument("--schema", help="registry schema id")
    p.add_argument("--from-log", help="prediction log dir: baseline the logged outputs")
    p.add_argument("--route")
    p.add_argument("--version")
    p.add_argument("--since")
    p.add_argument("--limit", type=int, default=100_000)
    p.add_argument("--infer", action="store_true", help="also print an inferred schema")
    p.add_argument("--out", help="baseline file (default: stdout)")
    p.set_defaults(func=_baseline)

    p = sub.add_parser("rollout", help="status, pause, resume, promote or abort a rollout")
    p.add_argument("action", choices=["status", "pause", "resume", "promote", "abort"])
    p.add_argument("route", nargs="?")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    p.add_argument("--admin", help="admin base URL (default: from the config)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_rollout)

    p = sub.add_parser("demo", help="demo model servers, the router and simulated users")
    p.add_argument("--dir", default="demo")
    p.add_argument("--duration", type=float, default=40.0, help="seconds (default 40)")
    p.add_argument("--no-story", action="store_true", help="just run traffic")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
